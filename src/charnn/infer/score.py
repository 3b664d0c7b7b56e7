"""`charnn score`: the surprisal of every character of a text, and the model's alternatives.

This is charnn eval's stateful protocol (evaluate.py) told position by position. The text is
read in one pass carrying the state from the zero state; its first character conditions the
rest and is not scored (its log-probability is None); every later character is scored by the
log-softmax of the logits before it. The model reads WINDOW characters per forward pass,
aligned as evaluate_ids reads its chunks, so the per-character losses are the ones eval
sums, and the total agrees with `charnn eval --text FILE` to rounding (tests/test_score.py).

Memory does not grow with the text: the file is read in chunks (data.chunks), scored a
window at a time, and each window's positions are handed on as arrays and dropped. A
Window's positions carry the character, its offset in the text (code points, UTF-8 bytes
and UTF-16 code units, the last being a JavaScript string's index), its log-probability and
the `top` most likely characters with theirs. Log-probabilities are of the model's own
distribution over its whole vocabulary, as eval's loss is; the alternatives are characters
only (special tokens such as <unk> are never offered as text).

The output formats (JSONL, one JSON document, an HTML page) are scorepage.py's. May import
errors, settings, data, models, checkpoint, evaluate and the rest of infer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from charnn import checkpoint
from charnn.data.chunks import read_chunks
from charnn.data.corpus import ERROR_POLICIES
from charnn.data.vocab import UNKNOWN_POLICIES, Vocab, code_points
from charnn.errors import CharnnError, check_all
from charnn.evaluate import EvalResult
from charnn.files import path_kind
from charnn.settings import field_problems, setting

WINDOW = 1024  # characters per forward pass: evaluate_ids' chunk, so the sums agree
READ_BYTES = 1 << 18  # text read per chunk (about 40 bytes a character while it waits)


@dataclass
class ScoreConfig:
    """The settings of `charnn score`: how the text is read and what is shown of each character."""

    top: int = setting(5, "the K most likely characters shown at each position, with their probabilities", ge=0,
                       metavar="K")
    unknown: str = setting("error", "characters outside the vocabulary: error, skip (not scored) or replace with "
                           "<unk> (scored as <unk>)", choices=UNKNOWN_POLICIES)
    # The same defaults as charnn eval's --encoding and --errors.
    encoding: str = setting("utf-8", "encoding of FILE")
    errors: str = setting("strict", "bytes invalid in --encoding", choices=ERROR_POLICIES)
    html: str | None = setting(None, "also write a self-contained HTML page that colours the text by surprisal, "
                               "with each character's probability and alternatives on hover; stdout then stays "
                               "empty unless --json asks for the document", shown="", metavar="OUT")
    device: str = setting("cpu", "torch device")

    def problems(self) -> list[str]:
        p = field_problems(self)
        if self.html is not None:
            out = Path(self.html)
            if path_kind(out) == "dir":
                p.append(f"--html {out} is a directory; name the page's file, e.g. {out / 'score.html'}")
            elif path_kind(out.parent) != "dir":
                p.append(f"--html {out}: its directory {out.parent} does not exist; create it or choose another path")
        return p


# --- the positions of a window ----------------------------------------------------------------
@dataclass
class Window:
    """Consecutive scored positions of the text, one row per character, as arrays."""

    points: np.ndarray  # (P,) uint32: the characters' code points
    offset: np.ndarray  # (P,) int64: code-point offset in the text read
    utf8: np.ndarray  # (P,) int64: byte offset in the text's UTF-8 encoding
    utf16: np.ndarray  # (P,) int64: UTF-16 code-unit offset (a JavaScript string's index)
    logprob: np.ndarray  # (P,) float64 nats; NaN for the text's first character (not scored)
    top_ids: np.ndarray  # (P, K) int64: the K most likely characters, most likely first
    top_logprob: np.ndarray  # (P, K) float32

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class _Pending:
    """Encoded characters waiting to be read by the model (the same fields as a Window)."""

    ids: np.ndarray
    points: np.ndarray
    offset: np.ndarray
    utf8: np.ndarray
    utf16: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def cut(self, a: int, b: int | None = None) -> _Pending:
        return _Pending(*(x[a:b] for x in (self.ids, self.points, self.offset, self.utf8, self.utf16)))

    def join(self, other: _Pending) -> _Pending:
        return _Pending(*(np.concatenate([x, y]) for x, y in zip(
            (self.ids, self.points, self.offset, self.utf8, self.utf16),
            (other.ids, other.points, other.offset, other.utf8, other.utf16))))


@dataclass
class Totals:
    """What a scoring has read and scored so far; complete once its windows are exhausted."""

    read: int = 0  # characters read from the text
    skipped: int = 0  # characters outside the vocabulary, dropped (--unknown skip)
    replaced: int = 0  # characters outside the vocabulary, scored as <unk> (--unknown replace)
    chars: int = 0  # characters scored: every kept one after the first
    nats: float = 0.0  # their total surprisal in nats (float64 sum)
    _ends: list[int] = field(default_factory=lambda: [0, 0, 0], repr=False)  # offsets reached

    @property
    def bits(self) -> float:
        return self.nats / math.log(2)

    def result(self) -> EvalResult:
        """Loss, bits per character and perplexity, as charnn eval reports them."""
        if self.chars == 0:
            raise CharnnError("the text has fewer than 2 characters to read, so none to score; "
                              "score a longer text")
        return EvalResult.from_sum(self.nats, self.chars, "stateful")

    def to_dict(self) -> dict:
        r = self.result()
        return {"chars": self.chars, "total_bits": self.bits, "total_nats": self.nats, "loss": r.loss,
                "bpc": r.bpc, "perplexity": r.perplexity, "protocol": "stateful", "read": self.read,
                "skipped": self.skipped, "replaced": self.replaced}


def _encode(vocab: Vocab, text: str, unknown: str, totals: Totals) -> _Pending:
    """The ids of `text` and each kept character's offsets, counted on from what was read before."""
    points = code_points(text)
    # Lengths in UTF-8 bytes and UTF-16 units; lone surrogates (surrogatepass) take 3 bytes.
    u8 = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    u16 = 1 + (points >= 0x10000)
    ends = totals._ends
    offset = ends[0] + np.arange(len(points), dtype=np.int64)
    utf8 = ends[1] + np.cumsum(u8, dtype=np.int64) - u8
    utf16 = ends[2] + np.cumsum(u16, dtype=np.int64) - u16
    totals._ends = [ends[0] + len(points), ends[1] + int(u8.sum()), ends[2] + int(u16.sum())]
    totals.read += len(points)
    bad = vocab.unknown_chars(text)
    ids = vocab.encode(text, unknown if bad else "error", what="the text")
    if bad and unknown == "skip":
        keep = ~np.isin(points, np.array([ord(c) for c in bad], dtype=points.dtype))
        points, offset, utf8, utf16 = points[keep], offset[keep], utf8[keep], utf16[keep]
        totals.skipped += int((~keep).sum())
    elif bad:
        totals.replaced += int(np.isin(points, np.array([ord(c) for c in bad], dtype=points.dtype)).sum())
    return _Pending(ids, points, offset, utf8, utf16)


def top_characters(logprobs: torch.Tensor, k: int, n_chars: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely characters of each row of log-probabilities (N, V): (logprobs, ids),
    each (N, k'), most likely first; k' = min(k, n_chars). Ids >= n_chars (special tokens such
    as <unk>) are never among them. The server's logprobs use this too."""
    k = min(k, n_chars)
    if k == 0:
        empty = logprobs.new_empty((logprobs.shape[0], 0))
        return empty, empty.long()
    return torch.topk(logprobs[:, :n_chars], k, dim=-1)


@torch.inference_mode()
def _score(model, x: np.ndarray, y: np.ndarray, state, top: int, n_chars: int):
    """Log-probabilities of y (C,) after reading x (C,) from `state`: (chosen, top lp, top ids, state)."""
    device = next(model.parameters()).device
    logits, state = model(torch.from_numpy(x)[None].to(device), state)  # (1, C, V)
    # float() as char_loss does it, so the sum is eval's.
    lp = torch.log_softmax(logits[0].float(), dim=-1)  # (C, V)
    chosen = lp.gather(1, torch.from_numpy(y)[:, None].to(device))[:, 0]  # (C,)
    top_lp, top_ids = top_characters(lp, top, n_chars)
    return chosen, top_lp, top_ids, state


def score_chunks(
    model: torch.nn.Module, vocab: Vocab, chunks: Iterable[str], top: int = ScoreConfig.top,
    unknown: str = ScoreConfig.unknown, totals: Totals | None = None,
) -> Iterator[Window]:
    """Score the text given in `chunks` (pieces cut anywhere) with a CharLM, one Window at a time.

    `totals` (a new Totals if None) is filled as the windows are read. `unknown` is applied to
    each piece (with "error", the first piece that has a character outside the vocabulary raises).
    """
    totals = totals if totals is not None else Totals()
    was_training = model.training
    model.eval()
    try:
        n_chars, state, pending, first = len(vocab.chars), None, None, True
        for text in chunks:
            piece = _encode(vocab, text, unknown, totals)
            pending = piece if pending is None else pending.join(piece)
            # A full window: WINDOW inputs and the character after them.
            while len(pending) > WINDOW:
                window, state = _window(model, pending.cut(0, WINDOW + 1), state, first, top, n_chars, totals)
                pending, first = pending.cut(WINDOW), False
                yield window
        if pending is not None and (len(pending) > 1 or first):
            window, _ = _window(model, pending, state, first, top, n_chars, totals)
            yield window
    finally:
        model.train(was_training)


def _window(model, span: _Pending, state, first: bool, top: int, n_chars: int, totals: Totals):
    """Positions 1.. of `span` scored after reading its positions ..-1 (and position 0 itself,
    unscored, when it is the text's first character)."""
    if len(span) > 1:
        chosen, top_lp, top_ids, state = _score(model, span.ids[:-1], span.ids[1:], state, top, n_chars)
        totals.nats += float((-chosen).sum(dtype=torch.float64))
        totals.chars += len(span) - 1
        logprob = chosen.double().cpu().numpy()
        top_lp, top_ids = top_lp.cpu().numpy(), top_ids.cpu().numpy()
    else:
        logprob, top_lp, top_ids = np.empty(0), np.empty((0, 0), np.float32), np.empty((0, 0), np.int64)
    shown = span if first else span.cut(1)
    if first:  # the text's first character: read, not scored
        logprob = np.concatenate([[math.nan], logprob])
        k = top_lp.shape[1]
        top_lp = np.concatenate([np.full((1, k), np.nan, np.float32), top_lp])
        top_ids = np.concatenate([np.full((1, k), -1, np.int64), top_ids])
    return Window(shown.points, shown.offset, shown.utf8, shown.utf16, logprob, top_ids, top_lp), state


# --- charnn score -----------------------------------------------------------------------------
@dataclass
class Scoring:
    """What `score_file` returns: iterate over it for the windows; `totals` is complete after."""

    run: str
    text: str  # what is scored (the file's name)
    vocab: Vocab
    config: ScoreConfig
    totals: Totals
    _windows: Iterator[Window]

    def __iter__(self) -> Iterator[Window]:
        return self._windows


def score_file(run_dir: str | Path, path: str, config: ScoreConfig) -> Scoring:
    """`charnn score RUN FILE`: the run's best weights over the text of `path`, a window at a time.

    Everything a user can get wrong is reported before the first window: the settings, the run,
    and the text itself, read once through first (bytes not valid in --encoding, an empty text,
    characters outside the vocabulary under --unknown error, fewer than 2 characters to read).
    A transliterated run scores the text transliterated as it was trained (positions then count
    in the transliterated text).
    """
    check_all(config.problems())
    loaded = checkpoint.load_run(run_dir, config.device)
    vocab = loaded.files.vocab
    how = loaded.files.train.get("transliterate", "none")

    def chunks():
        return read_chunks([path], config.encoding, config.errors, how, READ_BYTES)

    kept, unknown = 0, set()  # characters that will be read; those outside the vocabulary
    for text in chunks():
        bad = vocab.unknown_chars(text)
        unknown.update(bad)
        dropped = np.isin(code_points(text), [ord(c) for c in bad]).sum() if bad and config.unknown == "skip" else 0
        kept += len(text) - int(dropped)
    if unknown and config.unknown != "skip":
        # Under "error" this lists every unknown character of the file, not one chunk's; under
        # "replace" it fails only for a vocabulary without <unk>.
        vocab.encode("".join(sorted(unknown)), config.unknown, what=f"the text ({path})")
    if kept < 2:
        raise CharnnError(f"the text ({path}) has {kept} character(s) in the model's vocabulary; it needs at "
                          f"least 2 (the first is read, the rest are scored)")
    totals = Totals()
    windows = score_chunks(loaded.model, vocab, chunks(), config.top, config.unknown, totals)
    return Scoring(str(run_dir), path, vocab, config, totals, windows)
