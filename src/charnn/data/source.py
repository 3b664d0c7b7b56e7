"""open_corpus(): which corpus, which split, which transliteration, answered once.

It is what training, evaluation and export ask: it reads the text (data/corpus.py) or opens
the token file `charnn prepare` wrote (data/prepare.py), picks the vocabulary, and returns
the ids of both parts of the split with the record a run keeps of its corpus.
validation_ids / validation_text re-open a trained run's corpus that way and check it is
still the one the run recorded. Imports vocab, corpus and prepare.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from charnn.data.corpus import base_chars, read_corpus, split_point, text_digest
from charnn.data.prepare import TokenFile, find_prepared
from charnn.data.vocab import UnknownPolicy, Vocab
from charnn.errors import CharnnError


@dataclass
class OpenedCorpus:
    """A corpus opened for a run: the ids of its two parts, their vocabulary, its record."""

    vocab: Vocab  # the vocabulary of the ids (a prepared corpus's own, whatever was asked)
    record: dict  # what a run records of its corpus: sources, chars, sha256 (+ prepared: its directory)
    n_train: int  # ids [0, n_train) train, the rest validates
    text: str | None = None  # the text, read whole; None for a prepared corpus
    tokens: TokenFile | None = None  # a prepared corpus's ids, read as they are indexed
    unknown: UnknownPolicy = "error"  # characters of the text outside `vocab` (a fine-tuned run's)

    @cached_property
    def train_ids(self):
        if self.tokens is not None:
            return self.tokens[: self.n_train]
        return self.vocab.encode(self.text[: self.n_train], self.unknown, what="the corpus")

    @cached_property
    def val_ids(self):
        if self.tokens is not None:
            return self.tokens[self.n_train :]
        return self.vocab.encode(self.text[self.n_train :], self.unknown, what="the validation split")

    def in_vocab(self, vocab: Vocab, unknown: UnknownPolicy = "error") -> OpenedCorpus:
        """The same text (split where it was) read in another vocabulary, a fine-tuned run's;
        `unknown` says what becomes of characters outside it. Not for a prepared corpus, whose
        ids are its own vocabulary's."""
        if self.tokens is not None:
            raise CharnnError(
                f"--init-from reads the corpus as text, and {self.record['prepared']} is a prepared "
                f"token file; fine-tune on the text files it was prepared from"
            )
        return replace(self, vocab=vocab, unknown=unknown)

    @property
    def val_text(self) -> str:
        if self.text is not None:
            return self.text[self.n_train :]
        ids = np.asarray(self.val_ids, dtype=np.int64)
        points = np.array([ord(c) for c in self.vocab.chars], dtype="<u4")
        return points[ids[ids < len(points)]].tobytes().decode("utf-32-le", "surrogatepass")


def open_corpus(
    paths: list[str] | tuple[str, ...] = (),
    encoding: str = "utf-8",
    errors: str = "strict",
    transliterate: str = "none",
    val_fraction: float = 0.1,
    vocab: Vocab | None = None,
    unknown: UnknownPolicy = "error",
) -> OpenedCorpus:
    """The corpus `paths` name: text read in memory, or one directory made by charnn prepare.

    `vocab` is the vocabulary of the run the corpus belongs to (a resumed or evaluated run);
    None builds it from the text (a new run). A prepared corpus keeps its own vocabulary,
    which the caller compares with the run's. `unknown`: the fate of the text's characters
    outside `vocab` (a fine-tuned run's vocabulary need not hold them all: --unknown).
    """
    prepared = find_prepared(paths)
    if prepared is None:
        corpus = read_corpus(paths, encoding, errors, transliterate)
        text = corpus.text
        if vocab is None:
            vocab = Vocab.from_text(text + base_chars(transliterate))
        record = {"sources": list(corpus.sources), "chars": len(text), "sha256": text_digest(text)}
        return OpenedCorpus(vocab, record, split_point(len(text), val_fraction), text=text, unknown=unknown)
    if transliterate != "none":
        raise CharnnError(
            f"--transliterate {transliterate} does not apply to the prepared corpus "
            f"{prepared.path}; transliterate the text before charnn prepare, or train on the text"
        )
    n_train = split_point(len(prepared.tokens), val_fraction)
    return OpenedCorpus(prepared.vocab, prepared.record, n_train, tokens=prepared.tokens)


def _run_corpus(files) -> OpenedCorpus:
    """A trained run's corpus (`files`: checkpoint.RunFiles), re-opened and checked against its record."""
    train = files.train
    val_fraction = float(train.get("val_fraction", 0.1))
    corpus = open_corpus(train.get("corpus", []), train.get("encoding", "utf-8"), train.get("errors", "strict"),
                         train.get("transliterate", "none"), val_fraction, vocab=files.vocab,
                         unknown=train.get("unknown", "error"))  # a fine-tuned run's --unknown
    then = files.data.get("sha256")
    if corpus.tokens is not None:
        if then != corpus.record["sha256"] or corpus.vocab != files.vocab:
            raise CharnnError(
                f"the run's prepared corpus {corpus.record['prepared']} changed since it was trained, so its "
                f"validation split is gone; evaluate on a file with --text FILE"
            )
    elif then and then != corpus.record["sha256"]:
        raise CharnnError(
            f"the run's corpus ({', '.join(corpus.record['sources'])}) changed since it was trained, so its "
            f"validation split is gone; evaluate on a file with --text FILE"
        )
    if corpus.record["chars"] - corpus.n_train < 2:
        shown = val_fraction if corpus.tokens is not None else train.get("val_fraction")
        raise CharnnError(
            f"the run has no validation split (--val-fraction {shown}); evaluate on a file with --text FILE"
        )
    return corpus


def validation_ids(files):
    """The ids of a run's validation split: its text re-read, or its prepared token file."""
    return _run_corpus(files).val_ids


def validation_text(files) -> str:
    """The validation split of a run's corpus, re-read and checked against the run's record."""
    return _run_corpus(files).val_text
