"""Shared pieces of the benchmark scripts: timing, the machine's matmul peak, BENCHMARKS.md rows.

Every benchmark measures a ratio in one run (ours vs a baseline, interleaved), because these
machines are shared and noisy; absolute figures are printed too but not trusted alone.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def train_config(flags: list[str], out: str) -> tuple[list[str], tuple]:
    """`charnn train FLAGS --out OUT --quiet` resolved as the command line resolves it. FLAGS may
    start with the `--` that ends a script's own options. Returns the flags and (ModelConfig,
    TrainConfig)."""
    from charnn.cli import build_parser
    from charnn.cli.common import given_settings
    from charnn.train.config import resolve

    flags = flags[1:] if flags[:1] == ["--"] else flags
    args = build_parser().parse_args(["train", *flags, "--out", out, "--quiet"])
    return flags, resolve(given_settings(args, "resume", "quiet", "list_presets"))


def windows_loss(run: Path | str) -> float:
    """The run's validation loss on the windows protocol, from `charnn eval` in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "charnn", "eval", str(run), "--protocol", "windows", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["loss"]


def calls_per_s(fn, seconds: float) -> float:
    """Calls of `fn` per second: the best stretch of 10 calls within `seconds` (after one untimed),
    so that a moment another process took counts for nothing (bandwidth.py, sampling_split.py)."""
    fn()
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(10):
            fn()
        best = max(best, 10 / (time.perf_counter() - t))
    return best


def timed(fn, seconds: float = 2.0, min_iters: int = 3) -> tuple[float, int]:
    """Call fn repeatedly for about `seconds`; return (seconds per call, calls)."""
    fn()  # warm-up (allocations, kernel selection)
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n, n


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 2.0, rounds: int = 3) -> float:
    """Measured FLOP/s of n x n matmuls on this machine (the MFU denominator): the best of
    `rounds` timings of `seconds` / `rounds` each, so a busy moment does not lower the peak."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    per_call = min(timed(lambda: a @ b, seconds / rounds)[0] for _ in range(rounds))
    return 2 * n**3 / per_call


def has_amx() -> bool:
    """Whether this CPU has AMX tiles (bfloat16 matmuls several times faster than float32)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict:
    """The machine a figure comes from: CPU model, AMX or not, cores, torch threads."""
    return {"cpu": cpu_model(), "amx": has_amx(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def machine() -> str:
    m = machine_info()
    return (f"{m['cpu']} ({'AMX' if m['amx'] else 'no AMX'}), {m['cores']} cores, torch {m['torch']}, "
            f"{m['threads']} threads, Python {m['python']}")


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else sys.argv[0]
    return "python " + " ".join([shown, *sys.argv[1:]])


def append_section(title: str, body: str) -> None:
    """Append a dated section with the reproducing command to BENCHMARKS.md."""
    stamp = datetime.date.today().isoformat()
    text = f"\n## {title} ({stamp})\n\nCommand: `{command_line()}`  \nMachine: {machine()}\n\n{body.strip()}\n"
    if not BENCHMARKS_MD.exists():
        BENCHMARKS_MD.write_text("# Benchmarks\n\nEvery figure below was measured by the command shown with it; "
                                 "ratios are measured within one run.\n")
    with open(BENCHMARKS_MD, "a", encoding="utf-8") as f:
        f.write(text)
    print(f"appended '{title}' to {BENCHMARKS_MD}")


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
