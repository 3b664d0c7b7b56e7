"""Files that survive a kill: atomic writes, versioned JSON documents, append-only JSONL.

- `atomic_write` / `write_json`: a temporary sibling, flushed and fsynced, then os.replace
  (and the directory fsynced), so readers see the old file or the new one, never a mix.
  `atomic_stream` is the same for files written piece by piece (token files).
- `read_versioned_json`: a JSON object that names its format and version, with one clear
  error for each way it can be wrong (missing, unreadable, not JSON, another format, another
  version).
- `append_jsonl` / `read_jsonl`: one JSON object a line; a line torn by a kill is skipped on
  reading, and the next append starts a fresh line after it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from charnn.errors import CharnnError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


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
        Path(tmp).unlink(missing_ok=True)
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


def remove_temporaries(directory: str | Path) -> None:
    """Delete the temporary siblings that a kill in the middle of atomic_write leaves behind."""
    for p in Path(directory).glob(".*.tmp"):
        p.unlink(missing_ok=True)


def write_json(path: str | Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def check_version(doc, source: str | Path, format_name: str, version: int, *, not_ours: str, kind: str,
                  fix: str = "upgrade charnn") -> dict:
    """`doc` if it is a dict of `format_name` at `version`; else one clear CharnnError.

    `not_ours` finishes "SOURCE ..." for another format ("is not a charnn vocabulary file");
    `kind` names the format in the version message ("vocabulary"), `fix` what to do then.
    """
    if not isinstance(doc, dict) or doc.get("format") != format_name:
        raise CharnnError(f"{source} {not_ours}")
    if doc.get("version") != version:
        raise CharnnError(f"{source} has {kind} format version {doc.get('version')!r}; "
                          f"this charnn reads version {version}: {fix}")
    return doc


def read_json(path: str | Path, fix: str = "restore it"):
    """The JSON document at `path`, or one clear CharnnError naming the file and the fix."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CharnnError(f"{path} is missing; {fix}") from None
    except (OSError, ValueError) as e:
        raise CharnnError(f"{path} cannot be read as JSON ({e}); {fix}") from None


def append_jsonl(path: str | Path, record: dict, *, durable: bool = False) -> None:
    """Append one JSON line; after a torn last line (a kill mid-append), start a fresh line."""
    with open(path, "ab") as f:
        if f.tell() and not _ends_with_newline(Path(path)):
            f.write(b"\n")
        f.write((json.dumps(record, ensure_ascii=True) + "\n").encode())
        f.flush()
        if durable:
            os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file, one a line; a torn or non-object line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
