"""Reading text of any size in chunks: memory stays flat whatever the length of the files.

`charnn prepare` (prepare.py) reads a corpus this way in two passes, and `charnn score`
(infer/score.py) reads the text it scores this way. An incremental decoder carries a
character cut by a chunk boundary over to the next chunk and reports invalid bytes at their
offset in the file, with the same message as corpus.py gives for a file read whole; which
files a path names (a file, a directory, a bundled corpus) is corpus.py's resolve_sources.
Imports corpus.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from charnn.data.corpus import (
    BUNDLED,
    check_decoding,
    empty_corpus,
    resolve_sources,
    source_names,
    transliterate_text,
    undecodable,
)
from charnn.errors import CharnnError


def open_source(source: str | Path) -> BinaryIO:
    """A source of resolve_sources (a file, or a bundled corpus by name) opened for reading bytes."""
    if isinstance(source, str):  # a bundled corpus, by name
        return resources.files("charnn.data").joinpath("corpora", BUNDLED[source]).open("rb")
    try:
        return open(source, "rb")
    except OSError as e:
        raise CharnnError(f"cannot read corpus file {source}: {e.strerror}; check its permissions") from None


def source_size(source: str | Path) -> int:
    with open_source(source) as f:
        return f.seek(0, os.SEEK_END)


def _bytes_at(source: str | Path, offset: int, n: int) -> bytes:
    with open_source(source) as f:
        f.seek(offset)
        return f.read(n)


def text_chunks(
    source: str | Path, name: str, encoding: str, errors: str, chunk_bytes: int
) -> Iterator[tuple[str, int]]:
    """The text of one file in pieces, with the bytes read so far after each piece."""
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    fed = 0  # bytes given to the decoder so far
    with open_source(source) as f:
        while True:
            try:
                data = f.read(chunk_bytes)
            except OSError as e:
                raise CharnnError(f"cannot read corpus file {name}: {e.strerror}") from None
            pending = len(decoder.getstate()[0])  # an unfinished character from the last chunk
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                # e.start counts from the first pending byte, not from the start of `data`.
                offset = fed - pending + e.start
                raise undecodable(name, encoding, offset, _bytes_at(source, offset, 4)) from None
            fed += len(data)
            if text or not data:
                yield text, fed
            if not data:
                return


def corpus_chunks(
    sources: list[str | Path], encoding: str, errors: str, chunk_bytes: int
) -> Iterator[tuple[str, int]]:
    """The text of all sources in order, in pieces, with the bytes read so far in all."""
    done = 0
    for source, name in zip(sources, source_names(sources)):
        fed = 0
        for text, fed in text_chunks(source, name, encoding, errors, chunk_bytes):
            yield text, done + fed
        done += fed


def read_chunks(
    paths: list[str] | tuple[str, ...],
    encoding: str = "utf-8",
    errors: str = "strict",
    transliterate: str = "none",
    chunk_bytes: int = 1 << 18,
) -> Iterator[str]:
    """The text read_corpus would return for `paths`, in pieces of about `chunk_bytes` bytes.

    The same files, decoding, errors and transliteration as read_corpus (an empty text is
    the same error), without holding the text whole. Every path is checked before the first
    piece is returned; bytes invalid in the encoding are an error when they are reached.
    """
    check_decoding(encoding, errors)
    sources = resolve_sources(paths)

    def pieces() -> Iterator[str]:
        empty = True
        for text, _ in corpus_chunks(sources, encoding, errors, chunk_bytes):
            if text:
                empty = False
                # Transliteration maps each character on its own, so pieces may be cut anywhere.
                yield transliterate_text(text, transliterate)
        if empty:
            raise empty_corpus(source_names(sources))

    return pieces()
