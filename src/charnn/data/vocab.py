"""Vocab: characters (Unicode code points) <-> integer ids, with named special tokens.

Ids 0..len(chars)-1 are the characters in code-point order; the special tokens
(`<unk>`, and `<start>` / `<end>` for the memorisation lab) follow. The vocabulary is
built from the training text and saved, versioned, as JSON beside every run.

Text outside the vocabulary is a user problem at sampling or evaluation time: by default
it is an error that lists the characters; `unknown="skip"` drops them and
`unknown="replace"` maps them to `<unk>`.

Fine-tuning (`charnn train --init-from RUN`) asks `fine_tune_vocab` for the new run's
vocabulary, a parent's kept ("keep") or grown by the new text's characters ("extend"), and
`positions_in` for where each of the parent's tokens moved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from charnn.errors import CharnnError
from charnn.files import JSON_LIMIT, check_version, read_bytes, reason, shown

UNK = "<unk>"
START = "<start>"
END = "<end>"
FORMAT_NAME = "charnn-vocab"
FORMAT_VERSION = 1

UnknownPolicy = Literal["error", "skip", "replace"]
UNKNOWN_POLICIES = ("error", "skip", "replace")
VOCAB_POLICIES = ("extend", "keep")  # fine-tuning: grow the parent's vocabulary, or keep it as it is


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as a uint32 array, without a Python-level loop."""
    # surrogatepass keeps lone surrogates (from errors="surrogateescape") round-trippable.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def distinct_chars(text: str) -> list[str]:
    """The sorted distinct characters of `text`."""
    return [chr(c) for c in np.unique(code_points(text))]


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]
    specials: tuple[str, ...] = (UNK,)
    _points: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        chars = tuple(self.chars)
        if any(len(c) != 1 for c in chars):
            raise CharnnError("vocabulary characters must be single code points")
        if list(chars) != sorted(set(chars)):
            raise CharnnError("vocabulary characters must be distinct and sorted")
        if len(set(self.specials)) != len(self.specials) or any(len(s) < 2 for s in self.specials):
            raise CharnnError("special tokens must be distinct names of 2+ characters")
        object.__setattr__(self, "chars", chars)
        object.__setattr__(self, "specials", tuple(self.specials))
        object.__setattr__(self, "_points", np.array([ord(c) for c in chars], dtype=np.uint32))

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, specials: Sequence[str] = (UNK,)) -> Vocab:
        return cls(tuple(distinct_chars(text)), tuple(specials))

    # --- sizes and lookups --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chars) + len(self.specials)

    @property
    def size(self) -> int:
        return len(self)

    def id_of(self, token: str) -> int:
        """The id of one character or special-token name."""
        if token in self.specials:
            return len(self.chars) + self.specials.index(token)
        i = int(np.searchsorted(self._points, ord(token))) if len(token) == 1 else len(self.chars)
        if i < len(self.chars) and self.chars[i] == token:
            return i
        raise CharnnError(f"{token!r} is not in the vocabulary")

    def has(self, token: str) -> bool:
        try:
            self.id_of(token)
        except CharnnError:
            return False
        return True

    # --- encoding -------------------------------------------------------------------------
    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of `text` that are not in the vocabulary, sorted."""
        points = code_points(text)
        _, known = self._lookup(points)
        return [chr(c) for c in np.unique(points[~known])]

    def _lookup(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._points)
        if n == 0:
            return np.zeros(len(points), dtype=np.int64), np.zeros(len(points), dtype=bool)
        idx = np.searchsorted(self._points, points)
        known = self._points[np.minimum(idx, n - 1)] == points
        return idx.astype(np.int64), known

    def encode(
        self, text: str, unknown: UnknownPolicy = "error", what: str = "the text"
    ) -> np.ndarray:
        """Ids of `text` (int64). `what` names the text in the error message."""
        ids, known = self._lookup(code_points(text))
        if known.all():
            return ids
        if unknown == "skip":
            return ids[known]
        if unknown == "replace":
            if UNK not in self.specials:
                raise CharnnError(
                    f"{what} has characters outside the vocabulary and this vocabulary has no "
                    f"{UNK} token to replace them with; use --unknown skip"
                )
            ids = ids.copy()
            ids[~known] = self.id_of(UNK)
            return ids
        missing = self.unknown_chars(text)
        shown = ", ".join(repr(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise CharnnError(
            f"{what} has {len(missing)} character(s) outside the model's vocabulary: {shown}; "
            f"remove them, or pass --unknown skip (drop them) or --unknown replace (map to {UNK})"
        )

    def decode(self, ids: Iterable[int], specials: bool = False) -> str:
        """Text of `ids`. Special tokens are left out unless `specials=True` (then by name)."""
        n = len(self.chars)
        out = []
        for i in ids:
            i = int(i)
            if i < n:
                out.append(self.chars[i])
            elif specials:
                out.append(self.specials[i - n])
        return "".join(out)

    # --- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "chars": list(self.chars),
            "specials": list(self.specials),
        }

    def to_json(self) -> str:
        # ensure_ascii keeps lone surrogates and control characters representable.
        return json.dumps(self.to_dict(), ensure_ascii=True, indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: dict, source: str = "vocab.json") -> Vocab:
        """The vocabulary of a parsed vocab.json; every way it can be wrong is one line naming `source`."""
        check_version(d, source, FORMAT_NAME, FORMAT_VERSION, not_ours="is not a charnn vocabulary file",
                      kind="vocabulary")
        problems = []
        for key in ("chars", "specials"):
            v = d.get(key)
            if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
                problems.append(f'"{key}" must be a list of strings, got {shown(v)}')
        if not problems:
            try:
                return cls(tuple(d["chars"]), tuple(d["specials"]))
            except CharnnError as e:
                problems.append(str(e))
        raise CharnnError(f"{source} is malformed ({'; '.join(problems)}); retrain or restore the file")

    @classmethod
    def from_json(cls, text: str, source: str = "vocab.json") -> Vocab:
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise CharnnError(f"{source} is not valid JSON ({reason(e)}); retrain or restore the file") from None
        return cls.from_dict(d, source)

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read vocab.json (a regular file of bounded size), with one-line errors naming it."""
        data = read_bytes(path, JSON_LIMIT, "retrain or restore the file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CharnnError(f"{path} is not valid JSON ({reason(e)}); retrain or restore the file") from None
        return cls.from_json(text, str(path))


def fine_tune_vocab(parent: Vocab, chars: Iterable[str], policy: str = "extend",
                    needed_specials: Sequence[str] = ()) -> Vocab:
    """The vocabulary of a run fine-tuned from a run whose vocabulary is `parent`, on a text
    whose distinct characters are `chars`; the run needs the special tokens `needed_specials`
    (a document corpus: <start> and <end>).

    "keep": the parent's vocabulary as it is (the text's other characters are the caller's
    --unknown policy); a missing special token is an error. "extend": the parent's characters
    and the text's, in code-point order, then the parent's special tokens and the missing
    needed ones. Every parent token keeps its name but, being sorted among the new ones, not
    always its id: `positions_in` says where each one went.
    """
    missing = tuple(s for s in needed_specials if s not in parent.specials)
    if policy == "keep":
        if missing:
            what = "document tokens " if set(missing) <= {START, END} else "token(s) "
            raise CharnnError(f"the parent run's vocabulary has no {what}{', '.join(missing)}, which this run "
                              f"needs; use --vocab extend to add them")
        return parent
    if policy != "extend":
        raise CharnnError(f"--vocab must be one of {', '.join(VOCAB_POLICIES)}, got {policy!r}")
    return Vocab(tuple(sorted(set(parent.chars) | set(chars))), parent.specials + missing)


def positions_in(old: Vocab, new: Vocab) -> list[int]:
    """The id in `new` of each token of `old`, in `old`'s id order (characters, then specials)."""
    return [new.id_of(token) for token in (*old.chars, *old.specials)]


def vocab_digest(vocab: Vocab) -> str:
    """SHA-256 of the vocabulary's JSON: what a weights file or token file was made with."""
    return hashlib.sha256(vocab.to_json().encode()).hexdigest()
