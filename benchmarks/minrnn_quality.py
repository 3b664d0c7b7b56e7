"""Validation loss of minGRU / minLSTM against an LSTM at equal wall-clock budgets.

    python benchmarks/minrnn_quality.py --budgets 600,1800     # the full run: 2 x (10 + 30) min
    python benchmarks/minrnn_quality.py --quick                # a smoke run (about 1 minute)

For each budget (seconds of training) it trains the baseline and every candidate one after
another with `charnn train --max-time BUDGET` on the bundled tiny Shakespeare, then scores
each run's best weights on the validation split with `charnn eval` under both protocols
(windows: 256-character windows from a fresh state, comparable with nanoGPT; stateful: one
pass carrying the state). It prints one table per budget with the difference to the
baseline, and with --markdown FILE appends it, the command and the date to FILE.

The baseline and the candidates are `charnn train` flags. "{minutes}" in them is replaced by
the budget in minutes, so `--baseline "--preset cpu-{minutes}min"` picks the LSTM preset
tuned for that budget. Run it on an otherwise idle machine: each training run gets the same
wall time, so anything else running steals from whichever model is training at the time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

# The untuned LSTM of issue 6 (about 1.45 windows after 30 minutes on 2 cores); pass
# --baseline "--preset cpu-{minutes}min" to compare with the tuned presets instead.
DEFAULT_BASELINE = ("--model lstm --layers 2 --hidden 512 --embed 64 --batch-size 32 --seq-len 128 "
                    "--dropout 0.25 --lr 3e-3")
# Recommended from short runs (README, "minGRU and minLSTM"): random-window batches suit the
# minRNNs (and the windows protocol); see the README for per-budget sizes.
DEFAULT_CANDIDATES = [
    "--model mingru --layers 3 --hidden 384 --embed 384 --batching windows --dropout 0.1 --lr 4e-3",
    "--model minlstm --layers 3 --hidden 384 --embed 384 --batching windows --dropout 0.1 --lr 4e-3",
]
QUICK_BASELINE = "--model lstm --layers 1 --hidden 64 --embed 16 --batch-size 8 --seq-len 32"
QUICK_CANDIDATES = ["--model mingru --layers 1 --hidden 64 --embed 16 --batch-size 8 --seq-len 32",
                    "--model minlstm --block residual --layers 1 --hidden 32 --embed 32 --conv 4 "
                    "--batch-size 8 --seq-len 32"]


def charnn(*args: str) -> str:
    cmd = [sys.executable, "-m", "charnn", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr.strip()}")
    return done.stdout


def train_and_score(flags: str, budget: float, out: Path, extra: list[str]) -> dict:
    argv = ["train", "--out", str(out), "--max-time", f"{budget:g}", "--sample-chars", "0", "--quiet",
            *shlex.split(flags), *extra]
    summary = charnn(*argv)
    params = re.search(r"([\d,]+) parameters", summary)
    return score(flags, out, int(params.group(1).replace(",", "")) if params else 0)


def parameter_count(run: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def score(flags: str, out: Path, params: int) -> dict:
    """Score a finished run's best weights under both protocols."""
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        metrics = [json.loads(line) for line in f]
    with open(out / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    scores = {p: json.loads(charnn("eval", str(out), "--protocol", p, "--json"))["loss"]
              for p in ("windows", "stateful")}
    last = metrics[-1]
    speeds = [m["chars_per_s"] for m in metrics if m.get("chars_per_s")]
    return {
        "flags": flags, "windows": scores["windows"], "stateful": scores["stateful"],
        "steps": last["step"], "time": last["time"], "chars_per_s": sorted(speeds)[len(speeds) // 2] if speeds else 0.0,
        "dtype": config.get("train", {}).get("dtype", "?"), "run": str(out),
        "params": params,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny models, 15-second budgets")
    p.add_argument("--budgets", default="600,1800", help="seconds of training, comma-separated (default: %(default)s)")
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="charnn train flags (default: %(default)s)")
    p.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES, metavar="FLAGS",
                   help="charnn train flags, one string per candidate")
    p.add_argument("--workdir", default="runs/minrnn_quality", help="where the runs go (default: %(default)s)")
    p.add_argument("--extra", default="", help="flags added to every run, e.g. '--threads 2' (default: none)")
    p.add_argument("--markdown", metavar="FILE", help="append the results to FILE")
    p.add_argument("--baseline-run", action="append", default=[], metavar="SECONDS=DIR",
                   help="score this finished run as the baseline of that budget instead of training one "
                        "(e.g. 600=runs/bench/10min-...: quality.py's cpu-10min run, same budget); repeatable")
    args = p.parse_args(argv)
    baseline_runs = {float(k): Path(v) for k, v in (item.split("=", 1) for item in args.baseline_run)}
    if args.quick:
        args.budgets, args.baseline, args.candidates = "15", QUICK_BASELINE, QUICK_CANDIDATES
        if args.workdir == p.get_default("workdir"):
            args.workdir = "runs/minrnn_quality_quick"
    extra = shlex.split(args.extra)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    sections = []
    for budget in (float(b) for b in args.budgets.split(",")):
        minutes = f"{budget / 60:g}"
        rows = []
        for i, flags in enumerate([args.baseline, *args.candidates]):
            flags = flags.replace("{minutes}", minutes)
            if i == 0 and budget in baseline_runs:
                r = score(flags, baseline_runs[budget], parameter_count(baseline_runs[budget]))
            else:
                out = Path(args.workdir) / f"{stamp}-{minutes}min-{i}"
                r = train_and_score(flags, budget, out, extra)
            rows.append(r)
            print(f"{minutes} min: windows {r['windows']:.4f}, stateful {r['stateful']:.4f}, {r['steps']} steps, "
                  f"{r['chars_per_s']:,.0f} chars/s ({r['dtype']}): {flags}", flush=True)
        base = rows[0]["windows"]
        lines = [f"Validation loss after {minutes} minutes of training (nats/char; baseline first):", "",
                 "| flags | parameters | windows | vs baseline | stateful | steps | chars/s |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `{r['flags']}` | {r['params']:,} | {r['windows']:.4f} | {r['windows'] - base:+.4f} | {r['stateful']:.4f} "
                         f"| {r['steps']} | {r['chars_per_s']:,.0f} |")
        sections.append("\n".join(lines))
    report = "\n\n".join(sections)
    print("\n" + report)
    if args.markdown:
        command = shlex.join(["python", "benchmarks/minrnn_quality.py", *(argv if argv is not None else sys.argv[1:])])
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write(f"\n## minGRU / minLSTM quality per wall-clock budget ({datetime.date.today()})\n\n"
                    f"`{command}`\n\n{report}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
