"""charnn vs makemore on names.txt: held-out loss and novelty at the same wall time, same machine.

    python benchmarks/names.py                      # 300 s each: charnn --preset names, makemore's
                                                    # transformer and GRU (~20 minutes in all)
    python benchmarks/names.py --seconds 600 --threads 2
    python benchmarks/names.py --quick --no-write   # a smoke run of the script (tiny models, 20 s)

The peer is karpathy/makemore's own script, unchanged (../shared/peers/makemore/makemore.py, MIT):
its default 4-layer transformer (~200 K parameters) and `--type gru`, each run with its defaults
until the time is up (it trains until killed), then `--sample-only` on the model it saved for its
novelty count. makemore imports torch.utils.tensorboard only to log; where the tensorboard
package is missing, a no-op SummaryWriter stands in for it (nothing else of the script changes).

Same conditions:
- wall time: charnn trains with --max-time SECONDS; its whole process (start-up, evaluations,
  the last evaluation) takes W seconds, and each makemore run is killed after the same W.
  makemore evaluates every 500 steps: its figure is its best test loss printed within W (the
  model it saved); the time it was printed is in the JSON.
- held-out size: makemore holds out min(1000, 10 %) = 1,000 names (a torch.randperm under its
  seed 3407); charnn holds out --val-docs 1000 whole names (its own seeded split, data/documents.py).
  The two sets are different random thousands of the same 32,033 names.
- the loss: mean cross-entropy over each held-out name's characters and its end token, inputs
  starting with the start token, in nats per character: makemore's evaluate() (the mean of ten
  batch means of 100 names) and `charnn eval RUN` on a documents run (the exact mean per character).
- novelty: makemore's print_samples (50 names, temperature 1, sampled from its start token) counted
  in train / in test / new; charnn: `charnn sample RUN --num-samples N` (temperature 1) counted
  against the run's training and held-out names (charnn.data.source.run_documents).
- threads: both processes see the same OMP_NUM_THREADS (--threads; default: torch's default).

Writes the markdown table and JSON (--json) and appends the table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import ROOT, append_section, cpu_model, has_amx, table

sys.path.insert(0, str(ROOT / "src"))  # this checkout's charnn, here and in the processes it starts
from charnn import checkpoint  # noqa: E402
from charnn.data.source import run_documents  # noqa: E402

# ../shared beside the repository (or beside the folder of worktrees that holds it).
SHARED = next((p / "shared" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared").is_dir()), ROOT / "shared")
DATA = SHARED / "data" / "names.txt"
MAKEMORE = SHARED / "peers" / "makemore" / "makemore.py"
# Runs makemore.py as its own __main__, with a no-op SummaryWriter where tensorboard is missing.
SHIM = r"""
import runpy, sys, types
try:
    import torch.utils.tensorboard
except ImportError:
    class SummaryWriter:
        def __init__(self, *a, **k): pass
        def add_scalar(self, *a, **k): pass
        def flush(self): pass
    stub = types.ModuleType("torch.utils.tensorboard")
    stub.SummaryWriter = SummaryWriter
    sys.modules["torch.utils.tensorboard"] = stub
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def cpu_line(threads: int | None) -> str:
    """CPU model, whether it has AMX (bfloat16 matrix tiles), cores and the threads both sides use."""
    amx = "AMX" if has_amx() else "no AMX"
    shown = f"{threads} threads (OMP_NUM_THREADS)" if threads else "torch's default threads"
    return f"{cpu_model()}, {amx}, {os.cpu_count()} cores, {shown}"


def environment(threads: int | None) -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_makemore(kind: str, data: Path, work: Path, seconds: float, env: dict, extra: list[str]) -> dict:
    """makemore's script for `seconds` of wall time, then --sample-only for its novelty count."""
    work.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-c", SHIM, str(MAKEMORE), "-i", str(data), "-o", str(work), "--type", kind, *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    timer = threading.Timer(seconds, proc.kill)  # it trains until killed
    timer.start()
    evals, params, steps, log = [], None, 0, []
    try:
        for line in proc.stdout:  # read as it comes, so each evaluation gets its time
            log.append(line)
            now = time.perf_counter() - started
            if m := re.match(r"step (\d+) train loss: ([\d.]+) test loss: ([\d.]+)", line):
                evals.append({"step": int(m[1]), "train_loss": float(m[2]), "test_loss": float(m[3]),
                              "seconds": round(now, 1)})
            elif m := re.match(r"step (\d+) \|", line):
                steps = int(m[1])
            elif m := re.match(r"model #params: (\d+)", line):
                params = int(m[1])
            if now > seconds:
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    if params is None:
        raise SystemExit(f"makemore --type {kind} failed:\n{''.join(log[-20:])}")
    best = min(evals, key=lambda e: e["test_loss"]) if evals else None
    out = {"system": "makemore", "model": kind, "params": params, "steps": steps, "seconds": seconds,
           "loss": best["test_loss"] if best else None, "best": best, "evals": evals}
    if best and (work / "model.pt").exists():
        sampled = subprocess.run(args + ["--sample-only"], capture_output=True, text=True, env=env, check=True)
        counts = {k: int(n) for n, k in re.findall(r"(\d+) samples that are (in train|in test|new):", sampled.stdout)}
        out["novelty"] = {k: counts.get(k, 0) for k in ("in train", "in test", "new")}
    return out


def charnn(*argv: str, env: dict) -> str:
    p = subprocess.run([sys.executable, "-m", "charnn", *argv], capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"charnn {' '.join(argv)} failed:\n{p.stderr}")
    return p.stdout


def run_charnn(data: Path, run: Path, seconds: float, samples: int, env: dict, extra: list[str]) -> dict:
    started = time.perf_counter()
    charnn("train", str(data), "--preset", "names", "--val-docs", "1000", "--max-time", f"{seconds:g}",
           "--out", str(run), "--sample-chars", "0", "--quiet", *extra, env=env)
    wall = time.perf_counter() - started
    loss = json.loads(charnn("eval", str(run), "--json", env=env))
    sampled = charnn("sample", str(run), "--num-samples", str(samples), "--seed", "0", "--length", "50",
                     "--format", "jsonl", env=env)
    texts = [json.loads(line)["text"] for line in sampled.splitlines()]
    files = checkpoint.read_run(run)
    train, held = map(set, run_documents(files))
    novelty = {"in train": sum(t in train for t in texts),
               "in test": sum(t in held and t not in train for t in texts)}
    novelty["new"] = len(texts) - novelty["in train"] - novelty["in test"]
    metrics = checkpoint.read_metrics(run)
    m = files.model_config
    return {"system": "charnn", "model": f"{m.model} {m.layers}x{m.hidden} (--preset names)",
            "params": files.params, "steps": metrics[-1]["step"] if metrics else 0, "seconds": round(wall, 1),
            "loss": loss["loss"], "held_out_chars": loss["chars"], "novelty": novelty}


def fraction(row: dict, key: str) -> str:
    n = row.get("novelty")
    if not n or not sum(n.values()):
        return "–"
    total = sum(n.values())
    return f"{n[key]}/{total} ({100 * n[key] / total:.0f} %)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=None, help="charnn's --max-time (default: 300; --quick: 20)")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for both, 0 = torch's default")
    p.add_argument("--samples", type=int, default=1000, help="documents charnn samples for its novelty count")
    p.add_argument("--data", type=Path, default=DATA, help=f"names.txt (default: {DATA})")
    p.add_argument("--runs", type=Path, default=Path("runs/names-bench"), help="where the runs go")
    p.add_argument("--json", type=Path, default=None, help="write the results here too")
    p.add_argument("--only", nargs="*", default=["charnn", "transformer", "gru"],
                   choices=["charnn", "transformer", "gru"])
    p.add_argument("--quick", action="store_true", help="tiny models: checks the script, not the figures")
    p.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = p.parse_args(argv)
    env = environment(args.threads or None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    seconds = args.seconds or (20.0 if args.quick else 300.0)
    tiny_charnn = ["--hidden", "32", "--layers", "1", "--eval-every", "100"] if args.quick else []
    # makemore evaluates every 500 steps: a quick run needs tiny models to get there soon.
    tiny_makemore = ["--n-layer", "1", "--n-embd", "8", "--n-embd2", "8", "--batch-size", "4",
                     "--num-workers", "0"] if args.quick else []
    rows, wall = [], seconds
    if "charnn" in args.only:
        rows.append(run_charnn(args.data, args.runs / f"charnn-{stamp}", seconds, 50 if args.quick else args.samples,
                               env, tiny_charnn))
        wall = rows[-1]["seconds"]  # makemore gets the wall time charnn's whole process took
        print(json.dumps(rows[-1]), flush=True)
    for kind in ("transformer", "gru"):
        if kind in args.only:
            rows.append(run_makemore(kind, args.data, args.runs / f"makemore-{kind}-{stamp}", wall, env,
                                     tiny_makemore))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "evals"}), flush=True)
    machine = cpu_line(args.threads or None)
    body = (
        f"names.txt (32,033 names), 1,000 held out by each side; {wall:.0f} s of wall time each on {machine}. "
        "Loss: nats per character on the held-out names, end token included (makemore's measure). "
        "Novelty: samples at temperature 1 found in the training names, in the held-out names, or neither.\n\n"
        + table(["system", "model", "parameters", "steps", "wall s", "held-out loss", "in train", "in held-out",
                 "new"],
                [[r["system"], r["model"], f"{r['params']:,}", f"{r['steps']:,}", f"{r['seconds']:.0f}",
                  f"**{r['loss']:.4f}**" if r["loss"] is not None else "none printed",
                  fraction(r, "in train"), fraction(r, "in test"), fraction(r, "new")] for r in rows])
    )
    print(body)
    result = {"machine": machine, "seconds": wall, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_write and not args.quick:
        append_section("Documents: charnn vs makemore on names.txt", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
