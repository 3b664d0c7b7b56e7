"""Which torch device and which precision: `--device` and `--dtype`, resolved and checked once.

Every command that runs a model asks here: "auto" becomes the GPU when there is one, a
device that is not here is a one-line error that says what to pass instead, and "auto"
precision becomes bfloat16 only where the hardware multiplies it natively. `memory_limit`
says how much memory a device has, so that a model that cannot fit is refused before it is built.
Imports only torch and charnn.errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from charnn.errors import CharnnError

# Autocast precisions by name (float32 = autocast off).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> str:
    """auto = cuda when a GPU is present, else cpu; anything else is checked to exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CharnnError(f"--device {name!r} is not a torch device (try cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CharnnError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CharnnError(f"--device {name}: MPS is not available here; use --device cpu")
    return str(device)


def resolve_dtype(name: str, device: str) -> str:
    """auto = bfloat16 where the hardware multiplies it natively (AMX CPUs, recent GPUs).

    On a CPU with AMX, bfloat16 autocast trains an LSTM about 2.8x faster than float32
    (BENCHMARKS.md); without it bfloat16 is emulated and slower, so auto keeps float32.
    """
    if name != "auto":
        return name
    kind = torch.device(device).type
    if kind == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if kind == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        return "bfloat16" if amx() else "float32"
    return "float32"


def check_dtype(dtype: str, device: str) -> None:
    """Refuse a precision the device cannot train in."""
    # oneDNN has no float16 LSTM, and CPUs that multiply float16 fast also do bfloat16.
    if dtype == "float16" and torch.device(device).type == "cpu":
        raise CharnnError(
            "--dtype float16 needs a GPU (--device cuda or mps); on a CPU use --dtype bfloat16 or float32"
        )


# Where a container's memory limit is written (cgroup v2, then v1); "max" or a huge number = none.
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_limit(device: str = "cpu") -> tuple[int, str] | None:
    """The bytes of memory a device has, and their name in a message ("this machine's memory");
    None where it cannot be told. A GPU has its own; a CPU (and MPS, which shares it) has the
    machine's physical memory, or the container's limit where that is lower."""
    kind = torch.device(device).type
    if kind == "cuda":
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        return torch.cuda.get_device_properties(index).total_memory, f"the memory of {device}"
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        return None
    limit, name = physical, "this machine's memory"
    for path in CGROUP_LIMITS:
        try:
            value = int(Path(path).read_text().strip())
        except (OSError, ValueError):  # absent, or "max"
            continue
        if 0 < value < limit:
            limit, name = value, "this container's memory limit"
    return limit, name


def format_bytes(n: float) -> str:
    """1536 -> "1.5 KB" (powers of 1024, as memory is sold)."""
    units, i = ("bytes", "KB", "MB", "GB", "TB", "PB"), 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:,.0f} bytes" if i == 0 else f"{n:,.1f} {units[i]}"
