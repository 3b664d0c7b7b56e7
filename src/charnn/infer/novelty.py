"""A run's novelty: how much of a text (a sample) is copied from the text the run trained on.

    novelty = charnn.novelty("runs/shakespeare", text)      # or model.novelty(text)
    novelty.longest, novelty.longest_text, novelty.ngrams[16]

`open_novelty` re-opens the run's corpus (checked against the SHA-256 the run recorded: the
training split of another text would answer another question), and indexes its training
split once: the suffix array is cached in the run directory (checkpoint.novelty_paths), keyed
by the corpus digest, the split and the vocabulary, and rebuilt when they do not match. With
it, it keeps what new text from the same source scores: the n-gram fractions of the run's
held-out split (its first HELD_OUT characters), the yardstick the summary line shows.

Documents runs (one item each, e.g. names) also count whole documents found in the training or
held-out set (`run_document_novelty`); which documents a run has is asked of a function given
to it, so this module does not depend on how documents are stored. May import data,
checkpoint and errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charnn import checkpoint
from charnn.data.novelty import (
    HEADLINE,
    NGRAMS,
    DocumentNovelty,
    Novelty,
    document_novelty,
    measure,
    ngram_fractions,
)
from charnn.data.source import training_corpus
from charnn.data.suffixarray import SuffixIndex, open_index
from charnn.data.vocab import Vocab, vocab_digest

HELD_OUT = 100_000  # characters of the held-out split scored for the yardstick (0.5 s, once)


@dataclass
class RunNovelty:
    """A run's training text, indexed: `measure(text)` for any text, `summary` for one line."""

    run_dir: Path
    index: SuffixIndex
    vocab: Vocab
    held_out: dict[int, float | None]  # n -> fraction of the held-out split's n-grams in training; {} if none

    def measure(self, text: str) -> Novelty:
        return measure(self.index, self.vocab, text)

    def summary(self, novelty: Novelty, n: int = HEADLINE) -> str:
        return novelty.summary(n, self.held_out)


def open_novelty(run: str | Path | checkpoint.RunFiles) -> RunNovelty:
    """The novelty index of a run directory, from its cache or built (and cached) now."""
    files = run if isinstance(run, checkpoint.RunFiles) else checkpoint.read_run(run)
    corpus = training_corpus(files)
    # The record also holds "tokens": how many training ids there are, so the split is in the key.
    key = {"corpus_sha256": corpus.record["sha256"], "vocab_sha256": vocab_digest(files.vocab)}

    def held_out(index: SuffixIndex) -> dict:
        ids = np.asarray(corpus.val_ids[:HELD_OUT], dtype=np.int64)
        if len(ids) < min(NGRAMS):
            return {"held_out": None}
        ms, _ = index.matching_statistics(ids, limit=max(NGRAMS))  # capped: the fractions need no more
        return {"held_out": {"chars": len(ids), "ngrams": {str(n): f for n, f in ngram_fractions(ms).items()}}}

    index, record = open_index(*checkpoint.novelty_paths(files.path), key, corpus.train_array, held_out)
    return RunNovelty(files.path, index, files.vocab, _fractions(record.get("held_out")))


def _fractions(held_out) -> dict[int, float | None]:
    """The held-out n-gram fractions of a record, as written by open_novelty (else none)."""
    if not isinstance(held_out, dict) or not isinstance(held_out.get("ngrams"), dict):
        return {}
    out = {}
    for n, f in held_out["ngrams"].items():
        if str(n).isdigit() and (f is None or (isinstance(f, float) and 0.0 <= f <= 1.0)):
            out[int(n)] = f
    return out


def novelty(run: str | Path, text: str) -> Novelty:
    """How much of `text` is copied from the text the run at `run` trained on: the longest
    substring they share (and where) and the fraction of its n-grams found there (charnn.novelty)."""
    return open_novelty(run).measure(text)


def run_document_novelty(
    run: str | Path | checkpoint.RunFiles,
    generated: Iterable[str],
    documents: Callable[[checkpoint.RunFiles], tuple[Iterable[str], Iterable[str]]],
) -> DocumentNovelty:
    """Generated documents of a documents run, counted in its training set, held-out set or
    neither; `documents(files)` gives the run's (training documents, held-out documents)."""
    files = run if isinstance(run, checkpoint.RunFiles) else checkpoint.read_run(run)
    train_docs, held_out_docs = documents(files)
    return document_novelty(generated, train_docs, held_out_docs)
