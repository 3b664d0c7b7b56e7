"""Named bundles of training settings: `charnn train --preset NAME`, listed by --list-presets.

A preset sets defaults; flags given on the command line (or keywords to charnn.train) still
win. Each entry is a description and settings named like ModelConfig / TrainConfig fields.
"""

from __future__ import annotations

from dataclasses import fields

from charnn.errors import CharnnError
from charnn.models import ModelConfig

PRESETS: dict[str, tuple[str, dict]] = {
    # Not a fixed bundle: the run times a ladder of LSTMs on this machine and takes the one a
    # law fitted to measured runs predicts best for the budget (auto.py). What a new run with a
    # time budget (or none given) uses when no preset and no model or batch flag is given
    # (`uses_auto`): `charnn train` and `charnn train --max-time N`.
    "auto": (
        "the model for this machine and this budget: a few seconds timing LSTMs 1x256 to 3x1024 here, "
        "then the one predicted best for --max-time",
        {},
    ),
    # Tuned for validation loss per CPU-minute on tiny Shakespeare (2 cores; BENCHMARKS.md has
    # the runs). Its model and batch are the flags' defaults, which a run given any model flag
    # builds on, and --preset auto's fixed model (the one it keeps unless another is clearly better).
    "cpu-2min": (
        "best in 2 minutes on a 2-core CPU: 2-layer LSTM 384, stateful 32 x 96, lr 6e-3",
        {"model": "lstm", "layers": 2, "hidden": 384, "embed": 64, "dropout": 0.0,
         "batch_size": 32, "seq_len": 96, "lr": 6e-3, "reset_prob": 0.05, "max_time": 120.0,
         "eval_every": 500},
    ),
    # Measured at 10 minutes (2 threads) on 2026-12-02 (BENCHMARKS.md "The 10-minute preset
    # retuned"): 1.435 windows / 1.418 stateful at 15,180 chars/s (1.451 in a slower hour), where
    # the 2 x 512 with dropout 0.35 this preset was before made 1.477 that night (1.458 on a
    # faster day): a 2 x 384 makes ~1.6x its steps in the same minutes, worth more than the width.
    "cpu-10min": (
        "best in 10 minutes on a 2-core CPU: 2-layer LSTM 384, stateful 32 x 96, dropout 0.25, wd 0.1",
        {"model": "lstm", "layers": 2, "hidden": 384, "embed": 64, "dropout": 0.25, "weight_decay": 0.1,
         "batch_size": 32, "seq_len": 96, "lr": 6e-3, "reset_prob": 0.05, "max_time": 600.0, "eval_every": 500},
    ),
    "cpu-30min": (
        "best in 30 minutes on a 2-core CPU: 2-layer LSTM 768, stateful 32 x 128, dropout 0.5, wd 0.1",
        {"model": "lstm", "layers": 2, "hidden": 768, "embed": 64, "dropout": 0.5, "weight_decay": 0.1,
         "batch_size": 32, "seq_len": 128, "lr": 3e-3, "reset_prob": 0.05, "max_time": 1800.0,
         "eval_every": 1000},
    ),
    # Short documents, one per line (makemore's names.txt): whole names per row (--seq-len 16 is
    # longer than any of them), ~485 steps an epoch. Picked from two 3,000-step runs on names.txt
    # (1,000 names held out): this one 1.910 held-out loss in 83 CPU-seconds on one thread, a
    # 2 x 320 GRU 1.915 in 126 s. Dropout and weight decay: a 3-minute run makes ~20 epochs.
    "names": (
        "short documents, one per line (makemore's names): --documents lines, 2-layer LSTM 256, dropout 0.2, "
        "wd 0.1, 64 documents a step, lr 5e-3, 3 minutes",
        {"documents": "lines", "model": "lstm", "layers": 2, "hidden": 256, "embed": 32, "dropout": 0.2,
         "weight_decay": 0.1, "batch_size": 64, "seq_len": 16, "lr": 5e-3, "max_time": 180.0, "eval_every": 500},
    ),
    "quick": (
        "a 30-second smoke run: 1-layer LSTM, 256 units",
        {"model": "lstm", "layers": 1, "hidden": 256, "max_time": 30.0, "eval_every": 200},
    ),
    # The seed notebook's Shakespeare model. Differences, all documented in the README:
    # windows of 199 characters drawn without replacement (it drew random 201-character chunks
    # and trained on their first 199 pairs), AdamW with weight decay 0 = Adam but with
    # betas (0.9, 0.99) (torch's Adam default is 0.999), the last 10 % held out to validate.
    "tutorial-shakespeare": (
        "the seed notebook's model: embedding 70, 2-layer RNN 100, random 199-char windows, batch 1, "
        "Adam lr 0.002 (no warmup, decay or clipping), 2,000 steps, ASCII text",
        {"model": "rnn", "layers": 2, "hidden": 100, "embed": 70, "input": "embedding",
         "transliterate": "ascii", "batching": "windows", "batch_size": 1, "seq_len": 199,
         "lr": 0.002, "warmup": 0, "min_lr_ratio": 1.0, "grad_clip": 0.0, "weight_decay": 0.0,
         "dtype": "float32", "max_steps": 2000, "eval_every": 500},
    ),
}


def preset_settings(name: str) -> dict:
    if name not in PRESETS:
        raise CharnnError(f"--preset must be one of {', '.join(sorted(PRESETS))}, got {name!r} (see --list-presets)")
    return dict(PRESETS[name][1])


def format_presets() -> str:
    width = max(len(n) for n in PRESETS)
    lines = []
    for name, (description, settings) in PRESETS.items():
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
        lines.append(f"{name:<{width}}  {description}\n{'':<{width}}  {flags}")
    return "\n".join(lines)


# Given any of these (every model setting but dropout, and the batches' shape and layout, which
# auto's curves were measured with), a run without a preset builds the model the flags
# describe, not auto's choice.
MODEL_FLAGS = frozenset({f.name for f in fields(ModelConfig)} - {"vocab_size", "dropout"}
                        | {"batch_size", "seq_len", "batching", "reset_prob"})


def uses_auto(given: dict) -> bool:
    """A new run takes --preset auto when it names no preset, no model or batch flag, no parent
    run (--init-from), no --documents and no step or epoch limit: it is a time budget to spend."""
    return not (given.get("preset") or MODEL_FLAGS & set(given) or given.get("init_from")
                or given.get("documents", "none") != "none" or given.get("max_steps") or given.get("epochs"))


def check_auto(cfg) -> None:
    """--preset auto chooses for a time budget on running text."""
    if cfg.max_steps or cfg.epochs or not cfg.max_time:
        raise CharnnError("--preset auto chooses a model for a time budget: give --max-time (or no stopping "
                          "flag), or drop --preset auto and give the model flags with --max-steps/--epochs")
    if cfg.documents != "none":
        raise CharnnError("--preset auto is tuned on running text, not --documents; give the model flags "
                          "(or --preset names for short documents)")
