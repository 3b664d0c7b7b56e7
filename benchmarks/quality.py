"""Quality per wall-clock budget: validation loss (windows protocol, as nanoGPT reports it)
reached by the presets after 1, 2, 3, 10 and 30 minutes of training on tiny Shakespeare.

    python benchmarks/quality.py                       # all budgets (~50 minutes)
    python benchmarks/quality.py --only 2 10           # some budgets (minutes)
    python benchmarks/quality.py --quick               # a smoke run

Each row is a real `charnn train` run followed by `charnn eval` under both protocols; the
run directories are kept under --runs for sampling and the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import append_section, table

# minutes -> (preset, --max-time seconds or None for the preset's own budget)
BUDGETS = {1: ("cpu-2min", 60), 2: ("cpu-2min", None), 3: ("cpu-2min", 180),
           10: ("cpu-10min", None), 30: ("cpu-30min", None)}
TARGETS = {2: 1.60, 10: 1.45, 30: 1.40}


def evaluate(run: str, protocol: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "charnn", "eval", run, "--protocol", protocol, "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=int, nargs="*", help="budgets in minutes (default: all)")
    ap.add_argument("--runs", default="runs/bench", help="where the run directories go")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    for minutes in args.only or BUDGETS:
        preset, seconds = BUDGETS[minutes]
        run = f"{args.runs}/{minutes}min-{int(time.time())}"
        cmd = [sys.executable, "-m", "charnn", "train", "--preset", preset, "--out", run,
               "--quiet", "--sample-chars", "0"]
        if args.quick:
            cmd += ["--max-time", "5", "--hidden", "64", "--layers", "1"]
        elif seconds:
            cmd += ["--max-time", str(seconds)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        windows, stateful = evaluate(run, "windows"), evaluate(run, "stateful")
        cfg = json.loads(Path(run, "config.json").read_text())
        m, t = cfg["model"], cfg["train"]
        arch = f"{m['model']} {m['layers']}x{m['hidden']}, drop {m['dropout']}, {t['dtype']}"
        target = TARGETS.get(minutes)
        ok = "" if target is None else (" ✓" if windows["loss"] <= target else " ✗")
        rows.append([f"{minutes} min", preset, arch, f"{wall / 60:.1f} min",
                     f"**{windows['loss']:.4f}**{ok}", f"{stateful['loss']:.4f}",
                     f"≤ {target}" if target else "", f"`{run}`"])
        print(" | ".join(rows[-1]), flush=True)
    body = (
        "Validation loss in nats/char on the last 10 % of tiny Shakespeare; windows = 256-character "
        "windows from a fresh state (nanoGPT's measure), stateful = one pass carrying the state. "
        "Wall time includes start-up and the final evaluation.\n\n"
        + table(["budget", "preset", "model", "wall", "val loss (windows)", "val loss (stateful)",
                 "target", "run"], rows)
    )
    print(body)
    if not args.no_write and not args.quick:
        append_section("Quality per CPU budget", body)


if __name__ == "__main__":
    main()
