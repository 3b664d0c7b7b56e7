"""Documents: a corpus of separate items (names, titles, poems), each one `<start>` text `<end>`.

`charnn train FILE --documents FORMAT` reads FILE as documents instead of one stream:

    lines   one document per line (a Windows "\\r" at the end of a line is dropped)
    blank   documents separated by one or more blank lines
    sep     documents separated by the string --doc-sep ("\\n" "\\t" "\\\\" escapes allowed)
    jsonl   one JSON object per line; the document is its --doc-field (default "text")

Each file is cut on its own (a file never runs into the next one). A document that is empty
or only whitespace is dropped and counted; blank and sep documents lose the line breaks at
their two ends. A document is read as `<start>` + its characters + `<end>`: the model learns
to begin one and to end it, and sampling draws whole documents (infer/).

This module owns, for training, evaluation, sampling and the novelty checks alike:
- how a corpus is cut into documents (DocSpec, read_documents);
- the documents vocabulary: the characters, then SPECIALS (documents_vocab);
- which documents are held out (held_out): a seeded choice of whole documents that depends
  only on (number of documents, seed, how many), through SplitMix64 in numpy's uint64
  arithmetic: no library's random stream, so the same split on every machine and version;
- DocumentSet: the ids of many documents in one flat array (no Python object per character).

The batches (docbatches.py) and the scoring (evaluate.py) read DocumentSets. Imports vocab,
corpus and errors.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from charnn.data.corpus import read_texts, text_digest, transliterate_text
from charnn.data.vocab import END, START, UNK, UnknownPolicy, Vocab, distinct_chars
from charnn.errors import CharnnError

FORMATS = ("none", "lines", "blank", "sep", "jsonl")
# The special tokens of a documents run, in id order after its characters. <unk> first, so it
# keeps the id a text run gives it (len(chars)); a run fine-tuned from a text run into a
# documents run adds <start> and <end> after it.
SPECIALS = (UNK, START, END)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


@dataclass(frozen=True)
class DocSpec:
    """How a run's corpus is cut into documents and which are held out: its training settings."""

    format: str  # one of FORMATS but "none"
    sep: str = ""  # --doc-sep as given (with its escapes)
    field: str = "text"  # --doc-field
    val_fraction: float = 0.1
    val_docs: int = 0  # held-out documents; 0 = val_fraction of them
    seed: int = 0

    @classmethod
    def of(cls, train: dict) -> DocSpec | None:
        """The spec of a run's training settings (TrainConfig or config.json's "train"); None
        for a text run (or a run trained before documents existed)."""
        how = train.get("documents", "none")
        if how == "none":
            return None
        return cls(how, train.get("doc_sep", ""), train.get("doc_field", "text"),
                   float(train.get("val_fraction", 0.1)), int(train.get("val_docs", 0)), int(train.get("seed", 0)))


def problems(documents: str, doc_sep: str, doc_field: str, val_docs: int) -> list[str]:
    """The training settings that do not fit together (field_problems checks each alone)."""
    out = []
    if documents == "sep" and not doc_sep:
        out.append("--documents sep needs --doc-sep STRING (e.g. --doc-sep '\\n---\\n')")
    if doc_sep and documents != "sep":
        out.append(f"--doc-sep applies to --documents sep, not --documents {documents}")
    if doc_field != "text" and documents != "jsonl":
        out.append(f"--doc-field applies to --documents jsonl, not --documents {documents}")
    if val_docs and documents == "none":
        out.append("--val-docs counts documents; add --documents lines|blank|sep|jsonl, or use --val-fraction")
    if doc_sep:
        try:
            if not unescape(doc_sep):
                out.append("--doc-sep must not be empty")
        except CharnnError as e:
            out.append(str(e))
    return out


def unescape(sep: str) -> str:
    r"""--doc-sep as a string: "\n", "\t", "\r" and "\\" are escapes (a shell passes them as typed)."""
    def one(m: re.Match) -> str:
        if m[1] not in _ESCAPES:
            raise CharnnError(f"--doc-sep {sep!r} has the unknown escape \\{m[1]}; use \\n, \\t, \\r or \\\\")
        return _ESCAPES[m[1]]

    return re.sub(r"\\(.?)", one, sep, flags=re.S)


# --- reading -------------------------------------------------------------------------------------
@dataclass
class DocumentCorpus:
    sources: tuple[str, ...]  # the files read, in order
    texts: list[str]  # every document, in file order
    empty: int  # documents dropped as empty (or only whitespace)
    chars: int  # characters of the files read
    sha256: str  # of the files' text: a run records it to notice a corpus that changed


def read_documents(paths: Sequence[str], encoding: str, errors: str, transliterate: str,
                   spec: DocSpec) -> DocumentCorpus:
    """The documents of the files `paths` name, cut as `spec` says (one line per problem)."""
    names, raw = read_texts(paths, encoding, errors, transliterate)
    texts: list[str] = []
    empty = 0
    for name, text in zip(names, raw):
        docs, dropped = split_text(text, spec, name, transliterate)
        texts += docs
        empty += dropped
    if not texts:
        raise CharnnError(
            f"--documents {spec.format} found no document in {', '.join(names)}"
            f"{f' ({empty:,} empty dropped)' if empty else ''}; pass a file with some text in it, or another "
            f"--documents format (lines: one per line; blank: separated by blank lines; sep: --doc-sep; jsonl)"
        )
    joined = "".join(raw)
    return DocumentCorpus(names, texts, empty, len(joined), text_digest(joined))


def split_text(text: str, spec: DocSpec, source: str, transliterate: str = "none") -> tuple[list[str], int]:
    """The documents of one file's text (`source` names it in messages), and how many were dropped
    as empty (or only whitespace)."""
    pieces = _jsonl(text, source, spec.field) if spec.format == "jsonl" else _pieces(text, spec)
    docs = [transliterate_text(p, transliterate) for p in pieces if p.strip()]
    return docs, len(pieces) - len(docs)


def _pieces(text: str, spec: DocSpec) -> list[str]:
    """A file's text cut into documents; the line breaks that only end the file are no document."""
    if spec.format == "lines":
        pieces = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        return pieces[:-1] if text.endswith("\n") else pieces
    if spec.format == "blank":
        pieces = re.split(r"\r?\n(?:[ \t]*\r?\n)+", text.strip("\r\n"))
    else:
        pieces = text.split(unescape(spec.sep))
        if pieces and not pieces[-1].strip("\r\n"):  # the file ends with the separator
            pieces.pop()
    return [p.strip("\r\n") for p in pieces]


def _jsonl(text: str, source: str, field: str) -> list[str]:
    """The `field` of every object of a JSON Lines file (blank lines skipped)."""
    out = []
    for k, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise CharnnError(f"{source} line {k} is not valid JSON ({e}); --documents jsonl reads one JSON "
                              f"object per line") from None
        if not isinstance(obj, dict):
            raise CharnnError(f"{source} line {k} is a JSON {type(obj).__name__}, not an object; --documents "
                              f"jsonl reads one object per line, its text in a field (--doc-field)")
        if field not in obj:
            shown = ", ".join(map(repr, list(obj)[:5])) or "none"
            raise CharnnError(f"{source} line {k} has no {field!r} field (its fields: {shown}); name the field "
                              f"that holds the text with --doc-field")
        if not isinstance(obj[field], str):
            raise CharnnError(f"{source} line {k}: {field!r} is a JSON {type(obj[field]).__name__}, not a string")
        out.append(obj[field])
    return out


# --- the vocabulary and the split ----------------------------------------------------------------
def documents_vocab(texts: Sequence[str], extra: str = "") -> Vocab:
    """The vocabulary of a documents run: the characters of `texts` (and `extra`), then SPECIALS."""
    return Vocab(tuple(distinct_chars("".join(texts) + extra)), SPECIALS)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea, Flood 2014) on uint64 arrays (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def held_out(n: int, val_fraction: float, val_docs: int, seed: int) -> np.ndarray:
    """The indices (sorted) of the documents held out for validation: `val_docs` of the `n`, or
    int(n * val_fraction) when it is 0 (makemore: int(len(words) * 0.1)). Document i is ranked
    by SplitMix64(SplitMix64(seed) + i) and the lowest-ranked are held out, so the split is a
    pure function of (n, seed, count): a resumed or evaluated run derives it again exactly."""
    count = val_docs if val_docs else int(n * val_fraction)
    if count >= n:
        how = f"--val-docs {val_docs}" if val_docs else f"--val-fraction {val_fraction}"
        raise CharnnError(f"{how} holds out {count:,} of the corpus's {n:,} documents, leaving none to train "
                          f"on; hold out fewer, or add documents")
    base = _splitmix64(np.array([seed], dtype=np.uint64))
    keys = _splitmix64(base + np.arange(n, dtype=np.uint64))
    return np.sort(np.argsort(keys, kind="stable")[:count])


def split_digest(val_indices: np.ndarray) -> str:
    """SHA-256 of the held-out indices: a run records it, so a changed split is noticed."""
    return hashlib.sha256(np.asarray(val_indices, dtype="<i8").tobytes()).hexdigest()


# --- ids -----------------------------------------------------------------------------------------
@dataclass
class DocumentSet:
    """Documents as ids: every one `<start>` chars `<end>`, one after another in `ids`.

    Document i is ids[starts[i] : starts[i] + lengths[i] + 2]; read as a sequence, its inputs
    are the first lengths[i] + 1 of those ids and its targets the last lengths[i] + 1 (every
    character and the `<end>`): `targets` in all.
    """

    texts: list[str]
    ids: np.ndarray  # (sum(lengths + 2),) int32
    starts: np.ndarray  # (n,) int64
    lengths: np.ndarray  # (n,) int64, characters of each document (its two tokens not counted)

    @classmethod
    def encode(cls, texts: Sequence[str], vocab: Vocab, unknown: UnknownPolicy = "error",
               what: str = "the documents") -> DocumentSet:
        for token in (START, END):
            if not vocab.has(token):
                raise CharnnError(f"the vocabulary has no {token} token, so it cannot read documents; "
                                  f"train the run with --documents")
        texts = list(texts)
        if unknown == "skip":  # lengths change: document by document
            parts = [vocab.encode(t, unknown, what=what) for t in texts]
            chars = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            lengths = np.array([len(p) for p in parts], dtype=np.int64)
        else:  # one id per character: all in one call
            chars = vocab.encode("".join(texts), unknown, what=what)
            lengths = np.array([len(t) for t in texts], dtype=np.int64)
        wrapped = lengths + 2
        starts = np.concatenate([[0], np.cumsum(wrapped)[:-1]]).astype(np.int64) if len(texts) else wrapped
        ids = np.empty(int(wrapped.sum()), dtype=np.int32)
        inside = np.ones(len(ids), dtype=bool)
        inside[starts] = inside[starts + lengths + 1] = False
        ids[starts] = vocab.id_of(START)
        ids[starts + lengths + 1] = vocab.id_of(END)
        ids[inside] = chars
        return cls(texts, ids, starts, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def targets(self) -> int:
        """Predictions one pass over every document scores: each character and each `<end>`."""
        return int(self.lengths.sum()) + len(self.lengths)
