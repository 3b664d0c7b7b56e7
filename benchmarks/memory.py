"""Peak memory (resident set size) of training and of sampling, each in a fresh process.

    python benchmarks/memory.py --preset cpu-10min     # 60 training steps of the preset (an LSTM 2x384;
                                                       # BENCHMARKS' figure: its 2x512 before 2026-12-02)
    python benchmarks/memory.py --quick
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

from common import append_section, table

PROBE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak RSS of `cmd` (MiB), measured by a fresh parent that runs only it."""
    out = subprocess.run([sys.executable, "-c", PROBE, *cmd], capture_output=True, text=True, check=True)
    code, kib = out.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {code}")
    return int(kib) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-10min")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    charnn = [sys.executable, "-m", "charnn"]
    with tempfile.TemporaryDirectory() as tmp:
        run = f"{tmp}/run"
        extra = ["--hidden", "64", "--layers", "1"] if args.quick else []
        steps = 5 if args.quick else args.steps
        train = peak_rss_mib([*charnn, "train", "--preset", args.preset, "--max-steps", str(steps),
                              "--eval-every", "0", "--sample-chars", "0", "--quiet", "--out", run, *extra])
        sample = peak_rss_mib([*charnn, "sample", run, "--length", "2000", "--seed", "0"])
        baseline = peak_rss_mib([sys.executable, "-c", "import torch, charnn"])
    rows = [
        [f"charnn train --preset {args.preset} ({steps} steps, final evaluation included)", f"{train:,.0f} MiB"],
        ["charnn sample (2,000 characters)", f"{sample:,.0f} MiB"],
        ["python -c 'import torch, charnn' (the floor)", f"{baseline:,.0f} MiB"],
    ]
    body = table(["process", "peak RSS"], rows)
    print(body)
    if not args.no_write and not args.quick:
        append_section("Peak memory", body)


if __name__ == "__main__":
    main()
