"""Files that survive a kill, and reads that survive hostile files.

- `atomic_write` / `write_json`: a temporary sibling, flushed and fsynced, then os.replace
  (and the directory fsynced), so readers see the old file or the new one, never a mix.
  `atomic_stream` is the same for files written piece by piece (token files). They raise
  OSError; the owner of the file (checkpoint.py for a run) says what it means for the user.
- `open_regular` / `read_bytes` / `read_json`: a file is read only if it is a regular file
  (never a pipe that blocks, never /dev/zero that never ends) and at most `limit` bytes, and
  every way it can fail (missing, unreadable, too large, not UTF-8, not JSON, nested too
  deep) is one CharnnError naming the file and the fix.
- `check_version`: a JSON object that names its format and version, or one clear error.
- `append_jsonl` / `read_jsonl`: one JSON object a line; a line torn by a kill is skipped on
  reading, the next append starts a fresh line after it, and an append that fails part-way
  (a full disk) is cut back, so it leaves no torn line.
- `path_kind` / `make_directory` / `remove_temporaries`: looking at and making directories
  with one clear error for a permission or I/O fault, instead of pathlib's tracebacks.

Imports only the standard library and errors.py. All file-system calls go through this
module's `os`, so a test can inject a fault (ENOSPC, EACCES) in one place.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from charnn.errors import CharnnError

JSON_LIMIT = 64 << 20  # a configuration, a vocabulary (1.1M code points take ~11 MB)
JSONL_LIMIT = 1 << 30  # a metrics log: ~200 bytes a line


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


# --- words for faults --------------------------------------------------------------------------
def reason(e: BaseException) -> str:
    """The cause of an error in one short line: "No space left on device", not a traceback."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
    line = text.splitlines()[0] if text.strip() else type(e).__name__
    return line if len(line) <= 200 else line[:200] + "..."


def shown(value, width: int = 60) -> str:
    """A value read from a file, for a message: repr, on one line, cut to `width` characters."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def size_text(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _kind_name(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# --- looking at paths --------------------------------------------------------------------------
def path_kind(path: str | Path, *, follow: bool = True) -> str | None:
    """"file", "dir" or "other" (a pipe, a device, a link when follow=False), or None when
    nothing is there; a permission or I/O fault is one CharnnError naming the path."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise CharnnError(f"cannot read {path}: {reason(e)}") from None
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "dir" if stat.S_ISDIR(st.st_mode) else "other"


def make_directory(path: str | Path) -> list[Path]:
    """Create `path` and its missing parents; the ones created, outermost first (OSError on failure,
    after removing what it created)."""
    path = Path(path)
    missing = []
    p = path
    while path_kind(p, follow=False) is None and p != p.parent:
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            os.mkdir(d)
            created.append(d)
    except OSError:
        remove_directories(created)
        raise
    return created


def remove_directories(created: list[Path]) -> None:
    """Undo make_directory (innermost first), leaving anything someone else put there."""
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            return


def remove_temporaries(directory: str | Path) -> None:
    """Delete the temporary siblings that a kill in the middle of atomic_write leaves behind."""
    try:
        for entry in os.scandir(directory):
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                os.unlink(entry.path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise CharnnError(f"cannot clean up {directory}: {reason(e)}") from None


# --- writing -----------------------------------------------------------------------------------
@contextmanager
def atomic_stream(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write `path` through; it replaces `path` only if the block completes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    with atomic_stream(path) as f:
        f.write(data)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable. Not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


# --- reading -----------------------------------------------------------------------------------
@contextmanager
def open_regular(path: str | Path, fix: str, missing: str | None = None) -> Iterator[tuple[BinaryIO, int]]:
    """(file, size) of a regular file opened for reading, else one CharnnError naming it
    (`missing`: the message when there is no such file).

    Opened without blocking (a pipe would wait for a writer forever) and checked after
    opening (a check before it could be raced); read errors become CharnnErrors too.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as e:
        raise CharnnError(missing or f"cannot read {path}: {reason(e)}; {fix}") from None
    except OSError as e:
        raise CharnnError(f"cannot read {path}: {reason(e)}; {fix}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CharnnError(f"{path} is {_kind_name(st.st_mode)}, not a file charnn wrote; {fix}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            yield f, st.st_size
        except OSError as e:
            raise CharnnError(f"cannot read {path}: {reason(e)}; {fix}") from None


def read_bytes(path: str | Path, limit: int, fix: str = "restore it", missing: str | None = None) -> bytes:
    """The content of a regular file of at most `limit` bytes, or one CharnnError."""
    with open_regular(path, fix, missing) as (f, size):
        data = f.read(size + 1) if size <= limit else b""  # + 1: growing past the limit is seen
    if size > limit or len(data) > limit:
        raise CharnnError(f"{path} is too large ({size_text(max(size, len(data)))}, at most "
                          f"{size_text(limit)} expected); {fix}")
    return data


def read_json(path: str | Path, fix: str = "restore it", limit: int = JSON_LIMIT):
    """The JSON document at `path`, or one clear CharnnError naming the file and the fix."""
    data = read_bytes(path, limit, fix, missing=f"{path} is missing; {fix}")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
        raise CharnnError(f"{path} cannot be read as JSON ({reason(e)}); {fix}") from None


def check_version(doc, source: str | Path, format_name: str, version: int, *, not_ours: str, kind: str,
                  fix: str = "upgrade charnn") -> dict:
    """`doc` if it is a dict of `format_name` at `version`; else one clear CharnnError.

    `not_ours` finishes "SOURCE ..." for another format ("is not a charnn vocabulary file");
    `kind` names the format in the version message ("vocabulary"), `fix` what to do then.
    """
    if not isinstance(doc, dict) or doc.get("format") != format_name:
        raise CharnnError(f"{source} {not_ours}")
    if doc.get("version") != version:
        raise CharnnError(f"{source} has {kind} format version {shown(doc.get('version'))}; "
                          f"this charnn reads version {version}: {fix}")
    return doc


# --- JSON lines --------------------------------------------------------------------------------
def append_jsonl(path: str | Path, record: dict, *, durable: bool = False) -> None:
    """Append one JSON line; after a torn last line (a kill mid-append), start a fresh line.

    Appends only to a regular file (not through a symbolic link, which could point anywhere).
    If the write fails part-way (OSError: a full disk), the file is cut back to its old size.
    """
    line = (json.dumps(record, ensure_ascii=True) + "\n").encode()
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags, 0o666)
    with os.fdopen(fd, "ab", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CharnnError(f"{path} is {_kind_name(st.st_mode)}; charnn appends only to a regular file")
        try:
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                line = b"\n" + line
            view = memoryview(line)
            while view:
                view = view[f.write(view) :]
            if durable:
                os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, st.st_size)
            except OSError:
                pass
            raise


def read_jsonl(path: str | Path, limit: int = JSONL_LIMIT, fix: str = "restore it, or delete it") -> list[dict]:
    """The JSON objects of a JSONL file, one a line; a torn, non-UTF-8 or non-object line is skipped."""
    if path_kind(path, follow=False) is None:
        return []
    records = []
    for raw in read_bytes(path, limit, fix).split(b"\n"):
        try:
            record = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
