"""Is a text new or copied? Its overlap with a training text, and which documents are repeats.

For a text (a sample), from its matching statistics against the training ids (suffixarray.py):
- the longest substring it shares with the training text: its length, the substring, where it
  starts in the text and one offset where it occurs in the training text;
- for each n in NGRAMS, the fraction of its n-grams (the m - n + 1 substrings of n characters)
  found in the training text: position i starts one that is found iff ms[i] >= n.

Which n says "copied"? Short n-grams are shared by any text in the same language: of the
validation split of tiny Shakespeare (text the model never trains on, by the same author),
50 % of the 8-grams occur in the first 90 %, 11 % of the 12-grams, 1.5 % of the 16-grams and
0.2 % of the 20-grams. So 8-grams measure "reads like the corpus", and a 16-gram found in the
training text is rarely chance: HEADLINE = 16 is the figure the summary line gives, next to
what new text from the same source scores (the run's held-out split), when there is one.

For documents (names, titles: one item each), a generated document is either found verbatim
among the training documents, else among the held-out ones, else new: makemore's three counts.
Imports vocab and suffixarray.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from charnn.data.suffixarray import SuffixIndex
from charnn.data.vocab import Vocab, code_points

NGRAMS = (4, 8, 12, 16, 24, 32)
HEADLINE = 16
_SHOWN = 40  # characters of the longest copied substring in the summary line


def query_ids(vocab: Vocab, text: str) -> np.ndarray:
    """The ids of `text` (int64), -1 for a character outside the vocabulary (it matches nothing)."""
    points = code_points(text)
    chars = np.frombuffer("".join(vocab.chars).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    if len(chars) == 0:
        return np.full(len(points), -1, dtype=np.int64)
    idx = np.searchsorted(chars, points)  # vocab.chars is sorted by code point
    known = chars[np.minimum(idx, len(chars) - 1)] == points
    return np.where(known, idx, -1).astype(np.int64)


def ngram_fractions(ms: np.ndarray, ns: Iterable[int] = NGRAMS) -> dict[int, float | None]:
    """n -> the fraction of the n-grams starting at 0 .. m - n found in the training text
    (ms: the text's matching statistics); None when the text is shorter than n."""
    m = len(ms)
    return {n: (float(np.count_nonzero(ms[: m - n + 1] >= n)) / (m - n + 1) if m >= n else None) for n in ns}


@dataclass
class Novelty:
    """How much of one text is found in the training text."""

    chars: int  # characters in the text
    longest: int  # the longest substring shared with the training text (0: not a character)
    longest_text: str
    text_offset: int  # where it starts in the text; -1 when longest is 0
    train_offset: int  # one offset (in characters) where it occurs in the training text; -1 when 0
    ngrams: dict[int, float | None]  # n -> fraction of the text's n-grams found in the training text

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ngrams"] = {str(n): f for n, f in self.ngrams.items()}  # JSON keys are strings
        return d

    def summary(self, n: int = HEADLINE, reference: dict | None = None) -> str:
        """One line: "longest copied 23 chars ("..."), 3.1 % of 16-grams in the training text"."""
        if self.longest:
            shown = self.longest_text if self.longest <= _SHOWN else self.longest_text[:_SHOWN] + "..."
            head = f"longest copied {self.longest} chars ({json.dumps(shown, ensure_ascii=False)})"
        else:
            head = "no character in the training text"
        share = self.ngrams.get(n)
        if share is None:
            return f"{head}; too short for {n}-grams"
        line = f"{head}, {100 * share:.1f} % of {n}-grams in the training text"
        base = (reference or {}).get(n)
        if base is not None:
            line += f" (held-out text: {100 * base:.1f} %)"
        return line


def measure(index: SuffixIndex, vocab: Vocab, text: str, ns: Iterable[int] = NGRAMS) -> Novelty:
    """The novelty of `text` against the training ids of `index` (ids of `vocab`)."""
    ms, at = index.matching_statistics(query_ids(vocab, text))
    if len(ms) == 0 or ms.max() == 0:
        return Novelty(len(ms), 0, "", -1, -1, ngram_fractions(ms, ns))
    i = int(ms.argmax())  # the first of the longest
    length = int(ms[i])
    # ids are code points one for one, so offsets in ids are offsets in the text.
    return Novelty(len(ms), length, text[i : i + length], i, int(at[i]), ngram_fractions(ms, ns))


# --- documents ---------------------------------------------------------------------------------
@dataclass
class DocumentNovelty:
    """Where generated documents are found: in the training set, else the held-out set, else new."""

    total: int
    in_train: int
    in_held_out: int
    new: int

    def fractions(self) -> dict[str, float | None]:
        return {k: (v / self.total if self.total else None)
                for k, v in (("in_train", self.in_train), ("in_held_out", self.in_held_out), ("new", self.new))}

    def to_dict(self) -> dict:
        return {**asdict(self), "fractions": self.fractions()}

    def summary(self) -> str:
        if not self.total:
            return "no documents generated"
        f = self.fractions()
        return (f"{self.total} documents: {self.in_train} ({100 * f['in_train']:.1f} %) in the training set, "
                f"{self.in_held_out} ({100 * f['in_held_out']:.1f} %) in the held-out set, "
                f"{self.new} ({100 * f['new']:.1f} %) new")


def where_found(doc: str, train: set[str], held_out: set[str]) -> str:
    """Where one generated document is found verbatim: "train", else "held_out", else "new"."""
    return "train" if doc in train else "held_out" if doc in held_out else "new"


def document_novelty(
    generated: Iterable[str], train_docs: Iterable[str], held_out_docs: Iterable[str]
) -> DocumentNovelty:
    """Count the generated documents found verbatim among the training documents, else among the
    held-out documents, else in neither (makemore's "in train / in test / new"). A document
    generated twice counts twice, as makemore counts its samples."""
    train, held_out = set(train_docs), set(held_out_docs)
    counts = {"train": 0, "held_out": 0, "new": 0}
    for doc in generated:
        counts[where_found(doc, train, held_out)] += 1
    return DocumentNovelty(sum(counts.values()), counts["train"], counts["held_out"], counts["new"])
