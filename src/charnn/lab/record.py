"""A model run over a text, every unit of every layer kept at every position: `charnn cells`' data.

`record_units(model, ids, streams)` reads the text as `streams` contiguous segments in
parallel (a batch), each but the first warmed up on the WARMUP characters before it (read,
not kept), as evaluate.py's stateful protocol does; so every position is read with at
least WARMUP characters of context, or all of it near the start. It keeps, after each
character t, every unit of models/trace.py's Tracer as one float32 row of `units`, and
the model's loss on character t given the characters before it.

Imports models, devices and errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from charnn.devices import format_bytes, memory_limit
from charnn.errors import CharnnError
from charnn.models.trace import Tracer

WARMUP = 1024  # characters read before a segment's first kept position (as evaluate.py)
CHUNK = 256  # positions per forward call


@dataclass
class Recording:
    units: np.ndarray  # (N, U) float32: every unit after reading character t
    groups: list[tuple[str, int]]  # (name, units) of the column groups, in column order
    losses: np.ndarray  # (N,) float64 nats: -ln p(character t | the characters before it); [0] = nan

    def unit_name(self, column: int) -> str:
        """ "layer 2 c 117": the group and the unit's index in it."""
        for name, size in self.groups:
            if column < size:
                return f"{name} {column}"
            column -= size
        raise IndexError(column)


def check_memory(n: int, units: int) -> None:
    """Refuse a recording that cannot fit in memory (it is held there, whatever the device):
    with the analysis's blocks and copies it needs about twice its own size."""
    need = 2 * 4 * n * units
    limit = memory_limit("cpu")
    if limit is not None and need > limit[0]:
        raise CharnnError(
            f"recording {n:,} characters x {units:,} units needs about {format_bytes(need)}, more than "
            f"{limit[1]} ({format_bytes(limit[0])}); lower --max-chars"
        )


@torch.inference_mode()
def record_units(model: torch.nn.Module, ids: np.ndarray, streams: int = 16, *, warmup: int = WARMUP,
                 chunk: int = CHUNK, progress: Callable[[float], None] | None = None) -> Recording:
    """Run `model` (a CharLM) over `ids` and keep every unit at every position (see the docstring)."""
    tracer = Tracer(model)
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    U = sum(size for _, size in tracer.groups)
    check_memory(n, U)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # Segments must be long enough that the warm-up is a small overhead.
    streams = max(1, min(streams, n // (4 * warmup))) if warmup > 0 else max(1, min(streams, n))
    bounds = np.linspace(0, n, streams + 1).astype(np.int64)
    a, b = bounds[:-1], bounds[1:]
    w = np.where(np.arange(streams) == 0, 0, np.minimum(warmup, a))  # (S,) warm-up per row
    first, length = a - w, b - a + w  # row s reads ids[first_s : first_s + length_s]
    width = int(length.max())
    units = np.empty((n, U), dtype=np.float32)
    losses = np.full(n, np.nan)
    all_ids = torch.from_numpy(ids)
    state = None
    try:
        for t in range(0, width, chunk):
            cols = np.arange(t, min(t + chunk, width))  # (C,) positions within the rows
            valid = cols[None, :] < length[:, None]  # (S, C)
            pos = np.where(valid, first[:, None] + cols[None, :], 0)  # (S, C) index into ids
            x = all_ids[torch.from_numpy(pos)].to(device)  # padding past a row's end reads ids[0]
            logits, state, traces = tracer(x, state)  # (S, C, V), [(S, C, units)]
            kept = valid & (cols[None, :] >= w[:, None])  # (S, C)
            where = torch.from_numpy(kept).to(device)
            units[pos[kept]] = torch.cat(traces, dim=-1)[where].cpu().numpy()
            # The logits after character p score character p + 1.
            scored = kept & (pos + 1 < n)
            target = all_ids[torch.from_numpy(np.where(scored, pos + 1, 0))].to(device)  # (S, C)
            nll = -torch.log_softmax(logits.float(), dim=-1).gather(-1, target[..., None])[..., 0]
            losses[pos[scored] + 1] = nll[torch.from_numpy(scored).to(device)].double().cpu().numpy()
            if progress is not None:
                progress(min(1.0, (t + len(cols)) / width))
    finally:
        model.train(was_training)
    return Recording(units, tracer.groups, losses)
