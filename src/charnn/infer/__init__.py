"""Inference: a trained run turned into text, and the commands `charnn sample` and `charnn export`.

- model.py: `CharModel` and `load()` (what `charnn.load` returns: generate, stream, evaluate, score),
  and `sample_run`, the `charnn sample` command; text meets ids here.
- sampling.py: `SampleConfig` (every sampling setting, declared once), the pure next-token
  sampler and `generate()`, which streams ids.
- steps.py: the fast one-character steps that sampling and serving drive (torch or ONNX).
- onnx.py: ONNX export of a step and ONNX Runtime sessions (the optional [onnx] extra).
- export.py: `export_run`, the `charnn export` command.
- evalrun.py: `evaluate_run`, the `charnn eval` command.
- score.py: `score_file`, the `charnn score` command (per-character surprisal and the model's
  alternatives, the stateful protocol told position by position); scorepage.py its JSONL,
  JSON and HTML outputs.

May import errors, files, settings, data, models, checkpoint and evaluate; never train,
serve, lab or the CLI.
"""
