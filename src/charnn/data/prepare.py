"""`charnn prepare`: a corpus of any size as a file of token ids, read as training needs them.

    DIR/
      tokens.bin     the corpus's characters as ids of vocab.json, in order: one little-endian
                     unsigned integer each, no header (np.memmap opens it as it is); uint8 for
                     up to 256 tokens, uint16 up to 65,536, uint32 beyond
      vocab.json     the vocabulary (vocab.py's format): the corpus's characters, then <unk>
      prepared.json  format and version, the dtype and number of tokens, the files read with
                     the encoding and error policy, and the SHA-256 of the text (the digest a
                     run records of a text corpus)

Two streaming passes read the text in chunks of a few MiB (chunks.py), so memory stays flat
whatever the corpus's size: the first collects the distinct characters (the vocabulary) and
the digest, the second writes the ids. prepared.json is written last, so
a directory without it is an unfinished one.

`charnn train DIR` opens tokens.bin as a TokenFile, an array that reads what is indexed
when it is indexed: batches gather their rows by index (batching.py), so a step reads B
short rows and nothing is loaded whole. The ids and the vocabulary are exactly those
`charnn train CORPUS` builds in memory from the same text, and the train / validation
split is made the same way at training time (--val-fraction: the first 90 % of the tokens
train, the last 10 % validate), so the two train identically.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charnn.data.chunks import corpus_chunks, source_size
from charnn.data.corpus import check_decoding, empty_corpus, resolve_sources, source_names
from charnn.data.vocab import UNK, Vocab, code_points, vocab_digest
from charnn.errors import CharnnError
from charnn.files import (
    atomic_stream,
    atomic_write,
    check_version,
    path_kind,
    read_json,
    write_json,
)
from charnn.progress import Progress

FORMAT_NAME = "charnn-tokens"
FORMAT_VERSION = 1
META = "prepared.json"
TOKENS = "tokens.bin"
VOCAB = "vocab.json"
DTYPES = ("uint8", "uint16", "uint32")  # stored little-endian
CODE_POINTS = 0x110000  # every Unicode code point is below this
# Text read per chunk. Decoding it needs about 18 bytes per character at worst (the str,
# its code points, their ids), so 4 MiB of text keeps prepare's working set near 100 MB.
CHUNK_BYTES = 4 << 20
# TokenFile starts a new read where the next wanted id is more than this many ids on:
# reading a few ids too many costs less than another system call.
READ_GAP = 512


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned integer type that holds every id of the vocabulary."""
    for name in DTYPES:
        if vocab_size - 1 <= np.iinfo(name).max:
            return name
    raise CharnnError(f"a vocabulary of {vocab_size:,} tokens does not fit 32 bits")


# --- prepare ----------------------------------------------------------------------------------
@dataclass
class PrepareSummary:
    path: str
    tokens: int  # characters in the corpus = ids in tokens.bin
    vocab_size: int
    dtype: str
    bytes_read: int  # size of the text files
    files: int

    def format(self) -> str:
        size = self.tokens * np.dtype(self.dtype).itemsize
        return (
            f"prepared {self.path}: {self.tokens:,} characters from {self.files} file(s) "
            f"({self.bytes_read:,} bytes), {self.vocab_size} tokens, {TOKENS} {size:,} bytes "
            f"({self.dtype}); train with: charnn train {self.path}"
        )


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CharnnError(f"--out {out} is a file; choose a directory")
    if (out / META).exists():
        raise CharnnError(f"--out {out} already holds a prepared corpus; choose another --out, or delete it")


def prepare(
    corpus: list[str] | tuple[str, ...] = (),
    out: str | Path = "",
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = True,
) -> PrepareSummary:
    """Encode the text of `corpus` (files or directories; none = the bundled corpus) into `out`."""
    if not out:
        raise CharnnError("--out is required: the directory to write the prepared corpus to")
    check_decoding(encoding, errors)
    sources = [s if isinstance(s, str) else s.resolve() for s in resolve_sources(corpus)]
    names = source_names(sources)
    out = Path(out)
    _check_out(out)
    total = max(1, sum(source_size(s) for s in sources))
    bar = Progress(enabled=progress)
    try:
        # Pass 1: which characters occur, how many there are, and the text's digest.
        seen = np.zeros(CODE_POINTS, dtype=bool)
        digest, count = hashlib.sha256(), 0
        for text, done in corpus_chunks(sources, encoding, errors, chunk_bytes):
            seen[code_points(text)] = True
            digest.update(text.encode("utf-8", "surrogatepass"))  # = corpus.text_digest
            count += len(text)
            bar.update(done / total / 2, "prepare", f"pass 1/2 (vocabulary) {done:,} bytes")
        if count == 0:
            raise empty_corpus(names)
        vocab = Vocab(tuple(chr(c) for c in np.flatnonzero(seen)), (UNK,))  # = Vocab.from_text
        dtype = token_dtype(len(vocab))
        itemsize = np.dtype(dtype).itemsize

        # Pass 2: the ids, through a table from code point to id (-1: not in the vocabulary).
        table = np.full(CODE_POINTS, -1, dtype=np.int32)
        table[[ord(c) for c in vocab.chars]] = np.arange(len(vocab.chars), dtype=np.int32)
        again, written = hashlib.sha256(), 0
        path = out / TOKENS
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CharnnError(f"cannot create --out {out}: {e.strerror}") from None
        with atomic_stream(path) as f:
            for text, done in corpus_chunks(sources, encoding, errors, chunk_bytes):
                ids = table[code_points(text)]
                again.update(text.encode("utf-8", "surrogatepass"))
                written += len(ids)
                if written > count or (ids < 0).any():
                    break  # a file grew or changed since pass 1
                f.write(ids.astype(f"<u{itemsize}").tobytes())
                bar.update(0.5 + done / total / 2, "prepare", f"pass 2/2 (ids) {done:,} bytes")
            if written != count or again.digest() != digest.digest():
                raise CharnnError(  # nothing replaced: the temporary file is removed
                    f"the corpus ({', '.join(names)}) changed while it was being prepared; "
                    f"run charnn prepare again when nothing writes to it"
                )
        atomic_write(out / VOCAB, vocab.to_json().encode())
        write_json(
            out / META,
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "tokens": count,
                "dtype": dtype,
                "vocab_sha256": vocab_digest(vocab),
                "sha256": digest.hexdigest(),
                "sources": list(names),
                "encoding": encoding,
                "errors": errors,
            },
        )
    except OSError as e:
        raise CharnnError(
            f"cannot write the prepared corpus to --out {out}: {e.strerror}; free some space or "
            f"choose another --out"
        ) from None
    finally:
        bar.close()
    return PrepareSummary(str(out), count, len(vocab), dtype, total, len(sources))


# --- reading a prepared directory -------------------------------------------------------------
class TokenFile:
    """A token file as a read-only 1-D array of ids that reads what is indexed, when it is.

    np.memmap would be the obvious choice, but every page a memory map has touched stays in
    the process's resident memory until the kernel needs it back, and a fault maps a whole
    readahead window (megabytes on many disks): a run's RSS would grow with the corpus it
    has read (nanoGPT re-creates its memmap every batch for this reason). Positioned reads
    keep the process's memory its own; a batch of B rows is B short reads from the page cache.

    Supports len(), slices with step 1 (views, nothing read), integers, integer arrays of
    any shape (returns an array of that shape, in the file's dtype) and np.asarray (reads
    everything: for small files and tests).
    """

    def __init__(self, path: str | Path, dtype: str, count: int, start: int = 0, fd=None) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._start, self._len = start, count
        if fd is None:  # one descriptor, shared by the views, closed with the last of them
            fd = _Descriptor(os.open(self.path, os.O_RDONLY))
        self._fd = fd

    def __len__(self) -> int:
        return self._len

    @property
    def shape(self) -> tuple[int]:
        return (self._len,)

    def __getitem__(self, key):
        if isinstance(key, slice):
            a, b, step = key.indices(self._len)
            if step != 1:
                raise IndexError("a TokenFile slice must have step 1")
            return TokenFile(self.path, self.dtype.str, max(0, b - a), self._start + a, self._fd)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self._len if key < 0 else 0)
            return self._read(np.array([i], dtype=np.int64))[0]
        return self._read(np.asarray(key, dtype=np.int64))

    def memmap(self) -> np.ndarray:
        """The ids as a read-only memory map, for scattered reads of a few ids each (a novelty
        query), where the pages touched stay few; training reads through positioned reads."""
        if self._len == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self._start * self.dtype.itemsize,
                         shape=(self._len,))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self._read_run(0, self._len)
        return data if dtype is None else data.astype(dtype)

    def _read_run(self, lo: int, hi: int) -> np.ndarray:
        """Ids lo .. hi - 1 (one read; a regular file returns short only at its end)."""
        size = self.dtype.itemsize
        want, offset, parts = (hi - lo) * size, (self._start + lo) * size, []
        while want:
            data = os.pread(self._fd.fd, want, offset)
            if not data:
                raise CharnnError(f"{self.path} is shorter than its prepared.json says; run charnn prepare again")
            parts.append(data)
            want, offset = want - len(data), offset + len(data)
        return np.frombuffer(b"".join(parts), dtype=self.dtype)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        flat = idx.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self._len):
            raise IndexError(f"index out of range for a token file of {self._len} ids")
        order = np.argsort(flat, kind="stable")
        wanted = flat[order]  # sorted: rows become runs of nearby ids
        starts = np.concatenate([[0], np.flatnonzero(np.diff(wanted) > READ_GAP) + 1])
        ends = np.concatenate([starts[1:], [len(wanted)]])
        out = np.empty(len(wanted), dtype=self.dtype)
        for a, b in zip(starts.tolist(), ends.tolist()):
            lo = int(wanted[a])
            out[a:b] = self._read_run(lo, int(wanted[b - 1]) + 1)[wanted[a:b] - lo]
        result = np.empty_like(out)
        result[order] = out
        return result.reshape(idx.shape)


class _Descriptor:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        weakref.finalize(self, os.close, fd)


@dataclass
class Prepared:
    path: Path
    tokens: TokenFile  # (N,) the ids, read as they are indexed
    vocab: Vocab
    meta: dict  # prepared.json

    @property
    def record(self) -> dict:
        """What a run records of its corpus (the same keys as for text, plus where it is)."""
        return {
            "sources": list(self.meta["sources"]),
            "chars": int(self.meta["tokens"]),
            "sha256": self.meta["sha256"],
            "prepared": str(self.path),
        }


def is_prepared(path: str | Path) -> bool:
    return path_kind(Path(path) / META) == "file"


def open_prepared(path: str | Path) -> Prepared:
    """Open a directory written by prepare(), checking that its files belong together."""
    path = Path(path)
    meta_path = path / META
    meta = read_json(meta_path, "run charnn prepare again")
    check_version(meta, meta_path, FORMAT_NAME, FORMAT_VERSION, not_ours="was not written by charnn prepare",
                  kind="prepared-corpus", fix="upgrade charnn, or run charnn prepare again")
    dtype, count = meta.get("dtype"), meta.get("tokens")
    if dtype not in DTYPES or not isinstance(count, int) or count < 1 or "sha256" not in meta:
        raise CharnnError(f"{meta_path} is incomplete or malformed; run charnn prepare again")
    vocab = Vocab.load(path / VOCAB)
    if meta.get("vocab_sha256") != vocab_digest(vocab) or token_dtype(len(vocab)) != dtype:
        raise CharnnError(f"{path / VOCAB} does not match {META}: it was changed; run charnn prepare again")
    tokens_path = path / TOKENS
    itemsize = np.dtype(dtype).itemsize
    try:
        size = tokens_path.stat().st_size
    except OSError as e:
        raise CharnnError(f"cannot read {tokens_path}: {e.strerror}; run charnn prepare again") from None
    if size != count * itemsize:
        raise CharnnError(
            f"{tokens_path} has {size:,} bytes but {META} says {count:,} {dtype} tokens "
            f"({count * itemsize:,} bytes): it is truncated or changed; run charnn prepare again"
        )
    return Prepared(path, TokenFile(tokens_path, dtype, count), vocab, meta)


def find_prepared(paths: list[str] | tuple[str, ...]) -> Prepared | None:
    """The prepared directory the corpus paths name, or None when they name text."""
    prepared = [p for p in paths if is_prepared(p)]
    if not prepared:
        return None
    if len(paths) > 1:
        raise CharnnError(
            f"{prepared[0]} is a prepared corpus (charnn prepare); train on it alone, or "
            f"prepare all the text together"
        )
    return open_prepared(prepared[0])
