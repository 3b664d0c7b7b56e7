"""`charnn export`: the one-step function of a run as an ONNX model, checked against PyTorch.

The exported graph maps (ids (B,), *state) to (logits (B, V), *state) with a dynamic batch,
so any ONNX runtime can sample from the model: prime by stepping through the prompt, then
feed each sampled id back. `charnn sample` picks the export up automatically (it lives in
the run directory and records the SHA-256 of the weights it was made from). May import
errors, files, settings, checkpoint, evaluate and the rest of infer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charnn import checkpoint
from charnn.data.source import validation_ids
from charnn.errors import CharnnError, check_all
from charnn.evaluate import evaluate_steps
from charnn.files import atomic_write
from charnn.infer.onnx import onnx_session, require_onnx
from charnn.infer.steps import QUANTIZE, Stepper, export_step_onnx
from charnn.settings import field_problems, setting

FORMATS = ("onnx",)


@dataclass
class ExportConfig:
    """The settings of `charnn export`."""

    format: str = setting("onnx", "export format", choices=FORMATS)
    quantize: str = setting("none", "int8 = dynamically quantised weights", choices=QUANTIZE)
    out: str | None = setting(None, "output file", metavar="FILE",
                              shown="RUN_DIR/step.onnx or step-int8.onnx, where charnn sample finds it")
    check_chars: int = setting(20_000, "validation characters scored through both paths to report the bpc "
                               "cost, 0 = skip", ge=0)

    def problems(self) -> list[str]:
        # --check-chars first: the order charnn has always reported them in.
        return field_problems(self, ["check_chars"]) + field_problems(self, ["format", "quantize"])


@dataclass
class ExportReport:
    path: Path
    bytes: int
    max_logit_diff: float  # vs the PyTorch float32 step, over `steps` random steps
    steps: int
    bpc_torch: float | None  # stateful bpc on (part of) the validation split, float32 torch step
    bpc_export: float | None  # the same through the export
    chars: int


def export_run(run_dir: str | Path, config: ExportConfig | None = None) -> ExportReport:
    """Write the run's one-step ONNX model, then measure it against the PyTorch step."""
    config = config if config is not None else ExportConfig()
    check_all(config.problems())
    require_onnx()
    loaded = checkpoint.load_run(run_dir, "cpu")
    lm = loaded.model
    data = export_step_onnx(lm, config.quantize, loaded.info.get("sha256", ""))
    path = Path(config.out) if config.out is not None else checkpoint.onnx_path(run_dir, config.quantize)
    try:
        atomic_write(path, data)
    except OSError as e:
        raise CharnnError(f"cannot write {path}: {e.strerror}; choose another --out") from None

    reference = Stepper(lm, "torch")
    exported = Stepper(lm, "onnx", config.quantize, session=onnx_session(data))
    # Parity: the same random walk through both steps, from the same states.
    g = torch.Generator().manual_seed(0)
    V = lm.config.vocab_size
    ids = torch.randint(0, V, (8,), generator=g)
    state = lm.initial_state(8)
    worst, steps = 0.0, 64
    for _ in range(steps):
        a, state_next = reference.step(ids, state)
        b, _ = exported.step(ids, state)
        worst = max(worst, float((a - b).abs().max()))
        state, ids = state_next, torch.randint(0, V, (8,), generator=g)

    bpc_torch = bpc_export = None
    chars = 0
    if config.check_chars:
        try:  # the run's own validation split: text re-read, or a prepared token file
            vids = np.asarray(validation_ids(loaded.files)[: config.check_chars + 1], dtype=np.int64)
        except CharnnError:
            vids = np.zeros(0, dtype=np.int64)
        if len(vids) > 64:
            r_t, r_e = evaluate_steps(reference, vids), evaluate_steps(exported, vids)
            bpc_torch, bpc_export, chars = r_t.bpc, r_e.bpc, r_t.chars
    return ExportReport(path, len(data), worst, steps, bpc_torch, bpc_export, chars)
