"""Loss in nats per character, bits per character and perplexity, under a named protocol.

- stateful: the text is read in one pass carrying the state, every character after the
  first scored (the natural measure for an RNN). With `streams` S > 1 the text is read as
  S contiguous segments in parallel, each warmed up (unscored) on the `warmup` characters
  before it, which gives the same figure to within noise, several times faster; `streams=1`
  is the exact single pass.
- windows: contiguous, non-overlapping windows of 256 characters, a fresh state for each,
  every position scored (comparable with nanoGPT's reported validation loss).
- documents (a `--documents` run; evaluate_documents): every document read on its own from
  `<start>` and the zero state, each of its characters and its `<end>` scored: the mean over
  those is makemore's test loss (mean cross-entropy over a name's characters and its end token,
  inputs starting with the start token). No state crosses from one document to the next.

`charnn eval` itself (its settings and the run directory) is infer/evalrun.py. May import
errors, data and models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from charnn.data.docbatches import document_windows
from charnn.data.documents import DocumentSet
from charnn.errors import CharnnError
from charnn.models.lm import char_loss

PROTOCOLS = ("stateful", "windows")
WINDOW = 256
CHUNK = 1024  # characters per row of one forward pass (stateful)
WARMUP = 1024  # unscored characters before each segment but the first (stateful, streams > 1)


@dataclass
class EvalResult:
    loss: float  # nats per character
    bpc: float  # bits per character
    perplexity: float
    chars: int  # characters scored
    protocol: str

    @classmethod
    def from_sum(cls, total_nats: float, chars: int, protocol: str) -> EvalResult:
        loss = total_nats / chars
        perplexity = math.exp(loss) if loss < 700 else math.inf
        return cls(loss, loss / math.log(2), perplexity, chars, protocol)

    def to_dict(self) -> dict:
        return asdict(self)


def _as_array(ids):
    """A 1-D array of ids; an array or a token file stays as it is and is read as indexed."""
    if isinstance(ids, torch.Tensor):
        return ids.detach().cpu().numpy()
    return np.asarray(ids, dtype=np.int64) if isinstance(ids, (list, tuple)) else ids


def _as_tensor(ids) -> torch.Tensor:
    return torch.as_tensor(np.asarray(ids, dtype=np.int64))


def _take(ids, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(ids[idx], dtype=np.int64))


def stateful_passes(n_ids: int, streams: int, warmup: int = WARMUP, chunk: int = CHUNK) -> tuple[int, int]:
    """(rows, passes): a stateful evaluation of `n_ids` ids makes `passes` forward passes of
    (rows, chunk) characters, to within one (a time budget plans for them: train/budget.py)."""
    n = n_ids - 1  # characters scored: every one after the first
    # Segments must be long enough that the warm-up is a small overhead.
    rows = max(1, min(streams, n // (4 * warmup))) if warmup > 0 else max(1, streams)
    width = -(-n // rows) + (warmup if rows > 1 else 0)  # the longest row, its warm-up included
    return rows, -(-width // chunk)


@torch.inference_mode()
def _stateful(model, ids, chunk: int, streams: int, warmup: int, device) -> float:
    n = len(ids) - 1  # characters scored: every one after the first
    streams, _ = stateful_passes(len(ids), streams, warmup, chunk)
    bounds = np.linspace(0, n, streams + 1).astype(np.int64)
    # Row 0 reads ids[0 : b0] from the zero state; row s >= 1 reads its segment preceded by
    # `warmup` unscored characters. Rows are right-padded with id 0 to one length (padding
    # comes after all scored positions, so it never touches a scored prediction). Each
    # chunk is gathered when it is read, so a split in a token file is never loaded whole.
    a, b = bounds[:-1], bounds[1:]
    w = np.where(np.arange(streams) == 0, 0, warmup)  # (S,) unscored warm-up per row
    first, length = a - w, b - a + w  # row s reads ids[first_s : first_s + length_s]
    width = int(length.max())
    total = torch.zeros((), dtype=torch.float64, device=device)
    state = None
    for t in range(0, width, chunk):
        cols = np.arange(t, min(t + chunk, width))  # (C,) positions within the rows
        valid = cols[None, :] < length[:, None]  # (S, C)
        pos = np.where(valid, first[:, None] + cols[None, :], 0)  # (S, C) index into ids
        keep = torch.from_numpy(valid)
        X = (_take(ids, pos) * keep).to(device)
        Y = (_take(ids, np.where(valid, pos + 1, 0)) * keep).to(device)
        M = torch.from_numpy((cols[None, :] >= w[:, None]) & valid).to(device)
        logits, state = model(X, state)  # (S, C, V)
        losses = char_loss(logits, Y, reduction="none")  # (S, C)
        total += losses.masked_select(M).sum(dtype=torch.float64)
    return float(total)


@torch.inference_mode()
def _windows(model, ids, batch_size: int, device, window: int) -> tuple[float, int]:
    n_windows = (len(ids) - 1) // window
    if n_windows == 0:
        raise CharnnError(
            f"the text has {len(ids)} characters, too few for one {window}-character window "
            f"of the windows protocol; use --protocol stateful"
        )
    starts = np.arange(n_windows) * window
    total = 0.0
    for i in range(0, n_windows, batch_size):
        s = starts[i : i + batch_size]
        idx = s[:, None] + np.arange(window + 1)[None, :]  # (B, window + 1)
        chunk = _take(ids, idx).to(device)
        logits, _ = model(chunk[:, :-1])
        total += float(char_loss(logits, chunk[:, 1:], reduction="sum"))
    return total, n_windows * window


def evaluate_ids(
    model: torch.nn.Module,
    ids,
    protocol: str = "stateful",
    *,
    streams: int = 1,
    warmup: int = WARMUP,
    chunk: int = CHUNK,
    batch_size: int = 64,
    window: int = WINDOW,
) -> EvalResult:
    """Score the ids (a 1-D array or tensor) with the model under `protocol` (one of PROTOCOLS:
    the caller's settings checked it)."""
    ids = _as_array(ids)
    if len(ids) < 2:
        raise CharnnError("the evaluation text needs at least 2 characters (one to score)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if protocol == "windows":
            total, chars = _windows(model, ids, batch_size, device, window)
        elif protocol == "stateful":
            total, chars = _stateful(model, ids, chunk, streams, warmup, device), len(ids) - 1
        else:
            raise ValueError(f"unknown protocol {protocol!r}")
    finally:
        model.train(was_training)
    return EvalResult.from_sum(total, chars, protocol)


@torch.inference_mode()
def evaluate_documents(model: torch.nn.Module, docs: DocumentSet, batch_size: int = 64,
                       seq_len: int = 1024) -> EvalResult:
    """Loss per character of `docs`, `<end>` included, each document from a fresh state; read in
    groups of `batch_size` documents of about one length, `seq_len` inputs at a time."""
    if not len(docs):
        raise CharnnError("there is no document to score")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    state = None
    try:
        for batch in document_windows(docs, batch_size, seq_len):
            if batch.reset:
                state = None
            logits, state = model(batch.x.to(device), state)  # (B, W, V)
            total += char_loss(logits, batch.y.to(device), reduction="sum").double()  # -1 targets: 0
    finally:
        model.train(was_training)
    return EvalResult.from_sum(float(total), docs.targets, "documents")


@torch.inference_mode()
def evaluate_steps(stepper, ids, streams: int = 16) -> EvalResult:
    """Stateful loss computed one character at a time through a sampling stepper.

    This scores exactly the path that sampling uses (e.g. the int8 ONNX step), so comparing
    it with the float32 step on the same text measures what quantisation costs. The text is
    read as `streams` contiguous segments in parallel, each from a fresh state.
    """
    ids = _as_tensor(ids)
    n = (len(ids) - 1) // streams  # characters scored per stream
    if n < 1:
        raise CharnnError("the evaluation text is too short for the number of streams")
    rows = ids[: streams * n + 1]
    x = torch.stack([rows[s * n : s * n + n] for s in range(streams)])  # (S, n)
    y = torch.stack([rows[s * n + 1 : s * n + n + 1] for s in range(streams)])
    state = stepper.initial_state(streams)
    total = 0.0
    for t in range(n):
        logits, state = stepper.step(x[:, t], state)
        total += float(torch.nn.functional.cross_entropy(logits.float(), y[:, t], reduction="sum"))
    return EvalResult.from_sum(total, streams * n, "stateful")
