"""Loss in nats per character, bits per character and perplexity, under a named protocol.

- stateful: the text is read in one pass carrying the state, every character after the
  first scored (the natural measure for an RNN). With `streams` S > 1 the text is read as
  S contiguous segments in parallel, each warmed up (unscored) on the `warmup` characters
  before it, which gives the same figure to within noise, several times faster; `streams=1`
  is the exact single pass.
- windows: contiguous, non-overlapping windows of 256 characters, a fresh state for each,
  every position scored (comparable with nanoGPT's reported validation loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from charnn.errors import CharnnError
from charnn.models.lm import char_loss

PROTOCOLS = ("stateful", "windows")
WINDOW = 256


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


def _as_tensor(ids) -> torch.Tensor:
    return torch.as_tensor(np.asarray(ids, dtype=np.int64))


@torch.inference_mode()
def _stateful(model, ids: torch.Tensor, chunk: int, streams: int, warmup: int, device) -> float:
    n = len(ids) - 1  # characters scored: every one after the first
    # Segments must be long enough that the warm-up is a small overhead.
    streams = max(1, min(streams, n // (4 * warmup))) if warmup > 0 else max(1, streams)
    bounds = np.linspace(0, n, streams + 1).astype(np.int64)
    # Row 0 reads ids[0 : b0] from the zero state; row s >= 1 reads its segment preceded by
    # `warmup` unscored characters. Rows are right-padded to one length (padding comes
    # after all scored positions, so it never touches a scored prediction).
    rows = []
    for s in range(streams):
        a, b = int(bounds[s]), int(bounds[s + 1])
        w = 0 if s == 0 else warmup
        rows.append((ids[a - w : b], ids[a - w + 1 : b + 1], w, b - a))
    width = max(len(x) for x, _, _, _ in rows)
    X = torch.zeros(streams, width, dtype=torch.long)
    Y = torch.zeros(streams, width, dtype=torch.long)
    M = torch.zeros(streams, width, dtype=torch.bool)
    for s, (x, y, w, k) in enumerate(rows):
        X[s, : len(x)], Y[s, : len(y)], M[s, w : w + k] = x, y, True
    X, Y, M = X.to(device), Y.to(device), M.to(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    state = None
    for t in range(0, width, chunk):
        logits, state = model(X[:, t : t + chunk], state)  # (S, chunk, V)
        losses = char_loss(logits, Y[:, t : t + chunk], reduction="none")  # (S, chunk)
        total += losses.masked_select(M[:, t : t + chunk]).sum(dtype=torch.float64)
    return float(total)


@torch.inference_mode()
def _windows(model, ids: torch.Tensor, batch_size: int, device) -> tuple[float, int]:
    n_windows = (len(ids) - 1) // WINDOW
    if n_windows == 0:
        raise CharnnError(
            f"the text has {len(ids)} characters, too few for one {WINDOW}-character window "
            f"of the windows protocol; use --protocol stateful"
        )
    starts = torch.arange(n_windows) * WINDOW
    total = 0.0
    for i in range(0, n_windows, batch_size):
        s = starts[i : i + batch_size]
        idx = s[:, None] + torch.arange(WINDOW + 1)[None, :]  # (B, WINDOW + 1)
        chunk = ids[idx].to(device)
        logits, _ = model(chunk[:, :-1])
        total += float(char_loss(logits, chunk[:, 1:], reduction="sum"))
    return total, n_windows * WINDOW


def evaluate_ids(
    model: torch.nn.Module,
    ids,
    protocol: str = "stateful",
    *,
    streams: int = 1,
    warmup: int = 1024,
    chunk: int = 1024,
    batch_size: int = 64,
) -> EvalResult:
    """Score the ids (a 1-D array or tensor) with the model under `protocol`."""
    if protocol not in PROTOCOLS:
        raise CharnnError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    ids = _as_tensor(ids)
    if len(ids) < 2:
        raise CharnnError("the evaluation text needs at least 2 characters (one to score)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if protocol == "windows":
            total, chars = _windows(model, ids, batch_size, device)
        else:
            total, chars = _stateful(model, ids, chunk, streams, warmup, device), len(ids) - 1
    finally:
        model.train(was_training)
    return EvalResult.from_sum(total, chars, protocol)




def validation_text(files) -> str:
    """The validation split of a run's corpus, re-read and checked against the run's record."""
    from charnn.corpus import read_corpus, split_text, text_digest

    train = files.train
    corpus = read_corpus(train.get("corpus", []), train.get("encoding", "utf-8"), train.get("errors", "strict"),
                         train.get("transliterate", "none"))
    if files.data.get("sha256") and files.data["sha256"] != text_digest(corpus.text):
        raise CharnnError(
            f"the run's corpus ({', '.join(corpus.sources)}) changed since it was trained, so its "
            f"validation split is gone; evaluate on a file with --text FILE"
        )
    _, val = split_text(corpus.text, float(train.get("val_fraction", 0.1)))
    if len(val) < 2:
        raise CharnnError(
            f"the run has no validation split (--val-fraction {train.get('val_fraction')}); "
            f"evaluate on a file with --text FILE"
        )
    return val
