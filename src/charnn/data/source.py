"""open_corpus(): which corpus, which split, which transliteration, answered once.

It is what training, evaluation and export ask: it reads the text (data/corpus.py), or opens
the token file `charnn prepare` wrote (data/prepare.py), or reads documents
(data/documents.py: `--documents`, whole documents held out), picks the vocabulary, and
returns the ids of both parts of the split with the record a run keeps of its corpus.
run_corpus, validation_ids, validation_text, validation_documents, run_documents and
training_corpus re-open a trained run's corpus that way and check it is still the one the run
recorded. Imports vocab, corpus, prepare and documents.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from charnn.data.corpus import base_chars, read_corpus, split_point, text_digest
from charnn.data.documents import (
    DocSpec,
    DocumentSet,
    documents_vocab,
    held_out,
    read_documents,
    split_digest,
)
from charnn.data.prepare import TokenFile, find_prepared, token_dtype
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
    train_docs: DocumentSet | None = None  # a documents corpus: the documents that train
    val_docs: DocumentSet | None = None  # ... and those held out (ids: each <start> chars <end>)
    unknown: UnknownPolicy = "error"  # characters of the text outside `vocab` (a fine-tuned run's)

    @property
    def documents_line(self) -> str:
        """What a documents run says of its corpus (how many, how many dropped, how many held out)."""
        d = self.record["documents"]
        return (f"documents: {d['count']:,} ({d['format']}) from {', '.join(self.record['sources'])}, "
                f"{d['empty']:,} empty dropped; {d['held_out']:,} held out for validation "
                f"(seeded by --seed {d['seed']})")

    @cached_property
    def train_ids(self):
        if self.train_docs is not None:
            return self.train_docs.ids
        if self.tokens is not None:
            return self.tokens[: self.n_train]
        return self.vocab.encode(self.text[: self.n_train], self.unknown, what="the corpus")

    @cached_property
    def val_ids(self):
        if self.val_docs is not None:
            return self.val_docs.ids
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
        if self.train_docs is not None:  # documents are encoded when read: again, in `vocab`
            train = DocumentSet.encode(self.train_docs.texts, vocab, unknown, what="the training documents")
            held = DocumentSet.encode(self.val_docs.texts, vocab, unknown, what="the validation documents")
            return replace(self, vocab=vocab, unknown=unknown, n_train=len(train.ids), train_docs=train,
                           val_docs=held)
        return replace(self, vocab=vocab, unknown=unknown)

    def train_array(self) -> np.ndarray:
        """The training ids as one array for random reads: in memory for a text, a read-only
        memory map of the token file for a prepared corpus (a novelty query reads a few
        thousand ids scattered over it)."""
        if self.tokens is not None:
            return self.tokens[: self.n_train].memmap()
        return np.asarray(self.train_ids, dtype=token_dtype(len(self.vocab)))

    @property
    def val_text(self) -> str:
        if self.val_docs is not None:
            return "\n".join(self.val_docs.texts)
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
    documents: DocSpec | None = None,
    unknown: UnknownPolicy = "error",
) -> OpenedCorpus:
    """The corpus `paths` name: text read in memory, or one directory made by charnn prepare,
    or (`documents`) documents read in memory, a seeded share of them held out whole.

    `vocab` is the vocabulary of the run the corpus belongs to (a resumed or evaluated run);
    None builds it from the text (a new run). A prepared corpus keeps its own vocabulary,
    which the caller compares with the run's. `unknown`: the fate of the text's characters
    outside `vocab` (a fine-tuned run's vocabulary need not hold them all: --unknown).
    """
    prepared = find_prepared(paths)
    if documents is not None:
        if prepared is not None:
            raise CharnnError(f"--documents reads text files, not the prepared corpus {prepared.path}; "
                              f"train on the text files")
        return _documents(paths, encoding, errors, transliterate, documents, vocab, unknown)
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


def _documents(paths, encoding: str, errors: str, transliterate: str, spec: DocSpec,
               vocab: Vocab | None, unknown: UnknownPolicy = "error") -> OpenedCorpus:
    """A documents corpus: every document read, a seeded set of whole documents held out."""
    corpus = read_documents(paths, encoding, errors, transliterate, spec)
    if vocab is None:
        vocab = documents_vocab(corpus.texts, base_chars(transliterate))
    val = held_out(len(corpus.texts), spec.val_fraction, spec.val_docs, spec.seed)
    is_val = np.zeros(len(corpus.texts), dtype=bool)
    is_val[val] = True
    train_texts = [t for t, v in zip(corpus.texts, is_val) if not v]
    val_texts = [corpus.texts[i] for i in val]
    record = {
        "sources": list(corpus.sources), "chars": corpus.chars, "sha256": corpus.sha256,
        "documents": {"format": spec.format, "count": len(corpus.texts), "empty": corpus.empty,
                      "held_out": len(val), "seed": spec.seed, "held_out_sha256": split_digest(val)},
    }
    train = DocumentSet.encode(train_texts, vocab, unknown, what="the training documents")
    held = DocumentSet.encode(val_texts, vocab, unknown, what="the validation documents")
    return OpenedCorpus(vocab, record, len(train.ids), train_docs=train, val_docs=held, unknown=unknown)


def same_split(then: dict, now: dict) -> bool:
    """Whether a run's recorded corpus (config.json's "data") and the corpus read now agree:
    the same text, and for documents the same held-out documents."""
    return then.get("sha256") == now["sha256"] and (then.get("documents") or {}).get("held_out_sha256") == (
        now.get("documents") or {}).get("held_out_sha256")


def _reopen(files, lost: str) -> OpenedCorpus:
    """A trained run's corpus (`files`: checkpoint.RunFiles), re-opened and checked against its
    record; `lost` finishes the message when it changed ("so <what is gone>; <what to do>")."""
    train = files.train
    val_fraction = float(train.get("val_fraction", 0.1))
    corpus = open_corpus(train.get("corpus", []), train.get("encoding", "utf-8"), train.get("errors", "strict"),
                         train.get("transliterate", "none"), val_fraction, vocab=files.vocab,
                         documents=DocSpec.of(train), unknown=train.get("unknown", "error"))  # a fine-tuned run's --unknown
    then = files.data.get("sha256")
    if corpus.val_docs is not None:
        if not same_split(files.data, corpus.record):
            raise CharnnError(
                f"the run's corpus ({', '.join(corpus.record['sources'])}) changed since it was trained, so {lost}"
            )
        return corpus
    if corpus.tokens is not None:
        if then != corpus.record["sha256"] or corpus.vocab != files.vocab:
            raise CharnnError(
                f"the run's prepared corpus {corpus.record['prepared']} changed since it was trained, so {lost}"
            )
    elif then and then != corpus.record["sha256"]:
        raise CharnnError(
            f"the run's corpus ({', '.join(corpus.record['sources'])}) changed since it was trained, so {lost}"
        )
    return corpus


def run_corpus(files, fix: str = "evaluate on a file with --text FILE", validation: bool = True) -> OpenedCorpus:
    """A trained run's corpus, checked against its record. `fix` ends the messages when it is
    gone; `validation=False`: the caller needs only its training split (charnn cells' n-gram models)."""
    if DocSpec.of(files.train) is not None:
        corpus = _reopen(files, f"its held-out documents are gone; restore it, or {fix}")
        if validation and not len(corpus.val_docs):
            raise CharnnError(f"the run holds out no document (--val-fraction "
                              f"{files.train.get('val_fraction')}); {fix}")
        return corpus
    corpus = _reopen(files, f"its validation split is gone; {fix}")
    if validation and corpus.record["chars"] - corpus.n_train < 2:
        shown = float(files.train.get("val_fraction", 0.1)) if corpus.tokens is not None \
            else files.train.get("val_fraction")
        raise CharnnError(
            f"the run has no validation split (--val-fraction {shown}); {fix}"
        )
    return corpus


def training_corpus(files) -> OpenedCorpus:
    """A trained run's corpus, for what is measured against the text it trained on (novelty)."""
    return _reopen(files, "the text it trained on is gone; restore the corpus to measure novelty")


def validation_ids(files):
    """The ids of a run's validation split: its text re-read, or its prepared token file."""
    return run_corpus(files).val_ids


def validation_documents(files) -> DocumentSet:
    """The held-out documents of a documents run, re-read and checked against the run's record."""
    return run_corpus(files).val_docs


def validation_text(files) -> str:
    """The validation split of a run's corpus, re-read and checked against the run's record."""
    return run_corpus(files).val_text


def run_documents(files) -> tuple[list[str], list[str]]:
    """A documents run's training documents and held-out documents (`files`: checkpoint.RunFiles),
    re-read and checked against its record: what the novelty checks compare samples with."""
    if DocSpec.of(files.train) is None:
        raise CharnnError(f"{files.path} was not trained on documents (charnn train --documents)")
    corpus = run_corpus(files, validation=False)
    return corpus.train_docs.texts, corpus.val_docs.texts
