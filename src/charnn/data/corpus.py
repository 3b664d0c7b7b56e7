"""Reading text (files, directories, the bundled corpora) and the train/validation split.

Text is read as Unicode code points (UTF-8 by default). Every problem a user can make with
a corpus (a missing path, an unreadable file, bytes that are not valid in the encoding, an
empty corpus) is a CharnnError that names the file and the fix.

Which corpus a run uses (text or a prepared token file) is data/source.py's open_corpus().
Imports vocab.
"""

from __future__ import annotations

import codecs
import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from charnn.errors import CharnnError
from charnn.files import path_kind

if TYPE_CHECKING:
    pass

# Public-domain corpora shipped inside the package (see corpora/).
BUNDLED = {"tinyshakespeare": "tinyshakespeare.txt"}
DEFAULT_CORPUS = "tinyshakespeare"
ERROR_POLICIES = ("strict", "replace", "ignore")
TRANSLITERATIONS = ("none", "ascii")


@dataclass(frozen=True)
class Corpus:
    text: str
    sources: tuple[str, ...]  # the files read, in order


def bundled_text(name: str = DEFAULT_CORPUS) -> str:
    """The text of a corpus shipped with charnn."""
    data = resources.files("charnn.data").joinpath("corpora", BUNDLED[name]).read_bytes()
    return data.decode("utf-8")


def _files_of(path: Path) -> list[Path]:
    """A file, or every non-hidden regular file below a directory in sorted order."""
    if path.is_file():
        return [path]
    files = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append(p)
    if not files:
        raise CharnnError(f"corpus directory {path} holds no files; point CORPUS at text files")
    return files


def undecodable(path: str | Path, encoding: str, offset: int, bad: bytes) -> CharnnError:
    """The error for bytes that are not valid in `encoding` (also used by prepare.py)."""
    return CharnnError(
        f"corpus file {path} is not valid {encoding} at byte offset {offset} "
        f"(bytes {bad[:4].hex(' ')}); pass --encoding with the file's encoding (e.g. --encoding latin-1) "
        f"or --errors replace to substitute U+FFFD, or --errors ignore to drop bad bytes"
    )


def _decode(data: bytes, path: Path, encoding: str, errors: str) -> str:
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError as e:
        raise undecodable(path, encoding, e.start, data[e.start : e.start + 4]) from None


def read_corpus(
    paths: list[str] | tuple[str, ...] = (),
    encoding: str = "utf-8",
    errors: str = "strict",
    transliterate: str = "none",
) -> Corpus:
    """Concatenate the text of `paths` (files or directories); none = the bundled corpus.

    `transliterate="ascii"` then maps the text to ASCII (see `transliterate_text`).
    """
    names, texts = read_texts(paths, encoding, errors, transliterate)
    text = "".join(texts)
    if not text:
        raise empty_corpus(names)
    return Corpus(transliterate_text(text, transliterate), names)


def read_texts(
    paths: list[str] | tuple[str, ...] = (),
    encoding: str = "utf-8",
    errors: str = "strict",
    transliterate: str = "none",
) -> tuple[tuple[str, ...], list[str]]:
    """The names of the files `paths` name and the text of each, not yet transliterated (a
    documents corpus is cut into documents file by file: data/documents.py)."""
    if transliterate not in TRANSLITERATIONS:
        raise CharnnError(f"--transliterate must be one of {', '.join(TRANSLITERATIONS)}, got {transliterate!r}")
    check_decoding(encoding, errors)
    sources = resolve_sources(paths)
    texts = [
        bundled_text(s) if isinstance(s, str) else _read_file(s, encoding, errors)
        for s in sources
    ]
    return source_names(sources), texts


def check_decoding(encoding: str, errors: str) -> None:
    """Reject an unknown --encoding or --errors before any file is read."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CharnnError(f"--encoding {encoding!r} is not a known text encoding") from None
    if errors not in ERROR_POLICIES:
        raise CharnnError(f"--errors must be one of {', '.join(ERROR_POLICIES)}, got {errors!r}")


def resolve_sources(paths: list[str] | tuple[str, ...] = ()) -> list[str | Path]:
    """The files to read, in order (a bundled corpus by its name); none = the bundled corpus.

    Every path is resolved first so that all missing ones are reported at once.
    """
    sources: list[str | Path] = []
    problems = []
    for raw in paths or (DEFAULT_CORPUS,):
        p = Path(raw)
        if path_kind(p) is not None:  # a name too long, a directory without permission: one line
            sources.extend(_files_of(p))
        elif raw in BUNDLED:
            sources.append(raw)
        else:
            problems.append(f"corpus path {raw} does not exist")
    if problems:
        raise CharnnError("; ".join(problems) + "; pass existing text files or directories")
    return sources


def source_names(sources: list[str | Path]) -> tuple[str, ...]:
    return tuple(f"<bundled:{s}>" if isinstance(s, str) else str(s) for s in sources)


def empty_corpus(names: tuple[str, ...]) -> CharnnError:
    return CharnnError(f"the corpus is empty ({', '.join(names)}); pass a file with some text in it")


def transliterate_text(text: str, how: str = "ascii") -> str:
    """"ascii": the closest ASCII spelling of every character, by unidecode (as the seed
    notebook did: "café — naïve" -> "cafe -- naive"); "none": the text unchanged.

    unidecode is an optional dependency (pip install 'charnn[ascii]'), imported here only.
    """
    if how == "none" or text.isascii():
        return text
    try:
        from unidecode import unidecode
    except ImportError:
        raise CharnnError(
            "--transliterate ascii needs the unidecode package; install it with "
            "pip install 'charnn[ascii]' (or pip install unidecode)"
        ) from None
    return unidecode(text)


def base_chars(transliterate: str) -> str:
    """Characters a run's vocabulary holds whether or not its text uses them.

    A transliterated run gets all of printable ASCII (the notebook's `string.printable`), so
    any ASCII prime can be sampled from; otherwise the vocabulary is the text's own characters.
    """
    return string.printable if transliterate == "ascii" else ""


def _read_file(path: Path, encoding: str, errors: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CharnnError(f"cannot read corpus file {path}: {e.strerror}; check its permissions") from None
    return _decode(data, path, encoding, errors)


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The first (1 - val_fraction) of the text trains, the last val_fraction validates.

    This is nanoGPT's split of tiny Shakespeare, so our numbers compare with its own.
    """
    n_train = split_point(len(text), val_fraction)
    return text[:n_train], text[n_train:]


def split_point(n: int, val_fraction: float) -> int:
    """How many of `n` characters train: the same split for text and for token files."""
    if not 0.0 <= val_fraction < 1.0:
        raise CharnnError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    return int(n * (1.0 - val_fraction))  # nanoGPT: data[:int(n * 0.9)]


def text_digest(text: str) -> str:
    """SHA-256 of a text: a run records it to notice a corpus that changed under it."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
