"""The run's tensor files (model.safetensors, last.safetensors): safetensors with checksums.

A file holds tensors and, as safetensors metadata (strings), the run format's name and
version, `meta` (JSON: the file's kind, and what it says of itself: step, validation loss,
vocabulary digest, trainer counters, optimizer settings), `sha256` (the tensors: names,
dtypes, shapes and bytes) and `checksum` (every other metadata entry, `sha256` included, so
the whole file). Files written before `checksum` existed still load (see checkpoint/__init__).

Reading checks in the order that reads least: a regular file, the header (its length, JSON,
format, version, kind, the tensor shapes through the caller's check), the file size against
the header, and only then the data and its checksums. Part of the checkpoint package: only
checkpoint/__init__.py imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from charnn.checkpoint.layout import CONFIG
from charnn.checkpoint.modelcheck import is_int
from charnn.errors import CharnnError
from charnn.files import atomic_write, open_regular, reason, shown
from charnn.models import CharLM

FORMAT_NAME = "charnn-run"
FORMAT_VERSION = 1
WEIGHTS, RESUME_POINT = "best weights", "resume point"  # the "kind" in a file's metadata
HEADER_LIMIT = 100_000_000  # bytes; safetensors' own limit on a header
FIX = "restore it, or retrain the run"

Shapes = dict[str, tuple[int, ...]]


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checksum(metadata: dict[str, str]) -> str:
    """SHA-256 of every metadata entry but itself; with "sha256" (the tensors') among them, of
    the whole file."""
    body = json.dumps({k: v for k, v in metadata.items() if k != "checksum"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write `tensors` and the JSON `meta` to `path` atomically (OSError on a write fault)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "meta": json.dumps(meta)}
    metadata["sha256"] = digest(tensors)
    metadata["checksum"] = checksum(metadata)
    atomic_write(path, st_save(tensors, metadata=metadata))


def corrupt(path: Path, why: str) -> CharnnError:
    return CharnnError(f"{path} is truncated or corrupt ({why}); {FIX}")


def kind_of(meta: dict):
    # Files written before "kind" existed: the resume point is the one with trainer counters.
    return meta.get("kind", RESUME_POINT if "trainer" in meta else WEIGHTS)


def _parse_header(path: Path, raw: bytes) -> tuple[dict[str, str], dict, Shapes, int]:
    """The metadata, `meta` JSON, tensor shapes and data length that a header describes."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise corrupt(path, f"its header: {reason(e)}") from None
    if not isinstance(header, dict):
        raise corrupt(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt(path, "its metadata is not a map of strings")
    shapes, end = {}, 0
    for name, entry in header.items():
        try:
            shape, (start, stop) = tuple(entry["shape"]), entry["data_offsets"]
            valid = isinstance(entry["dtype"], str) and all(is_int(x) and x >= 0 for x in (*shape, start, stop))
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid or start > stop:
            raise corrupt(path, f"its header describes tensor {shown(name)} as {shown(entry)}")
        shapes[name], end = shape, max(end, stop)
    if metadata.get("format") != FORMAT_NAME:
        raise CharnnError(f"{path} was not written by charnn; it cannot be loaded as a run file")
    if metadata.get("version") != str(FORMAT_VERSION):
        raise CharnnError(f"{path} has run format version {shown(metadata.get('version'))}; this charnn "
                          f"reads version {FORMAT_VERSION}: upgrade charnn")
    try:
        meta = json.loads(metadata["meta"])
    except (KeyError, ValueError, RecursionError) as e:
        raise corrupt(path, f"its metadata: {reason(e)}") from None
    if not isinstance(meta, dict):
        raise corrupt(path, "its metadata is not a JSON object")
    return metadata, meta, shapes, end


def _read_header(f, size: int, path: Path) -> tuple[bytes, dict[str, str], dict, Shapes, int]:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < n <= min(HEADER_LIMIT, size - 8):
        raise corrupt(path, f"{size:,} bytes, with a header of {n:,}" if n >= 0 else f"{size} bytes")
    raw = f.read(n)
    return head + raw, *_parse_header(path, raw)


def header(path: Path) -> tuple[Shapes, str]:
    """The tensor shapes and the kind of a file, from its header alone (CharnnError if unreadable)."""
    with open_regular(path, FIX) as (f, size):
        _, _, meta, shapes, _ = _read_header(f, size, path)
    return shapes, kind_of(meta)


def read_tensors(path: Path, kind: str, check: Callable[[Shapes], None] | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and `meta` of a file of `kind`, verified; `check(shapes)` sees the header's
    tensor shapes before any data is read. The meta gets the tensors' "sha256"."""
    with open_regular(path, FIX, missing=f"{path} is missing; the run directory is incomplete") as (f, size):
        head, metadata, meta, shapes, end = _read_header(f, size, path)
        found = kind_of(meta)
        if found != kind:
            raise CharnnError(f"{path} holds the {found} of a run, not its {kind}: another file was copied "
                              f"or renamed over it; restore {path.name}" if found in (WEIGHTS, RESUME_POINT)
                              else f"{path} holds {shown(found)}, not the run's {kind}; {FIX}")
        if check is not None:
            check(shapes)
        if len(head) + end != size:
            raise corrupt(path, f"{size:,} bytes where its header describes {len(head) + end:,}")
        data = head + f.read(end)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError, KeyError, OverflowError) as e:
        raise corrupt(path, reason(e)) from None
    if metadata.get("sha256") != digest(tensors) or metadata.get("checksum", checksum(metadata)) != checksum(metadata):
        raise CharnnError(f"{path} fails its checksum: its tensors or metadata were changed after charnn "
                          f"wrote it; restore the file, or retrain the run")
    meta.pop("kind", None)
    return tensors, {**meta, "sha256": metadata["sha256"]}


# --- tensors into a model --------------------------------------------------------------------
def check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # Training never saves non-finite weights (its NaN guard stops it first).
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CharnnError(f"{path} holds non-finite weights ({', '.join(bad[:4])}), which charnn never "
                          f"writes; {FIX}")


def load_into(model: CharLM, tensors: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or extra or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}"
            for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
            if keys
        )
        raise CharnnError(f"{source} does not match {CONFIG} ({detail}); restore the run's files")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CharnnError(f"{source} cannot be loaded into the model of {CONFIG} ({reason(e)}); {FIX}") from None
