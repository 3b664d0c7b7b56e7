"""The grid behind --preset auto: every rung of the ladder (charnn.train.auto.LADDER) trained
for each budget on one effective machine, scored on the windows protocol.

    python benchmarks/auto_grid.py --machine bf16-1t --flags "--dtype bfloat16 --threads 1" \
        --core 0 --budgets 60 120 300 --sizes 1x256 2x256 2x384 2x512 2x640 2x768 --jsonl grid.jsonl

Two machines are run at once, one per core (`--core`, by taskset), so that each sees the
other's load throughout. A run's dropout and weight decay follow auto.regularisation for the
passes it will make, from its rung's speed measured in an earlier (shorter) budget, as the
automatic choice would set them. `--auto` runs `charnn train --preset auto` instead of the
rungs. One JSON line per run goes to --jsonl (appended).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from charnn.models import ModelConfig
from charnn.train.auto import LADDER, NOMINAL_VOCAB, regularisation

TRAIN_CHARS = 1_003_854  # tiny Shakespeare's training split (the first 90 %)


def run(cmd: list[str], core: int | None) -> str:
    pin = ["taskset", "-c", str(core)] if core is not None else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if core is not None else None
    return subprocess.run(pin + cmd, capture_output=True, text=True, check=True, env=env).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machine", required=True, help="a name for the effective machine")
    ap.add_argument("--flags", default="", help="charnn train flags that make the machine (dtype, threads)")
    ap.add_argument("--core", type=int, help="pin to this CPU core (taskset)")
    ap.add_argument("--budgets", type=float, nargs="+", required=True, help="seconds")
    ap.add_argument("--sizes", nargs="*", default=[c.name for c in LADDER[:6]])
    ap.add_argument("--auto", action="store_true", help="run --preset auto once per budget instead")
    ap.add_argument("--jsonl", required=True)
    ap.add_argument("--runs", default="runs/grid")
    args = ap.parse_args()
    rungs = {c.name: c for c in LADDER}
    jsonl = Path(args.jsonl)
    speed = {}  # rung -> chars/s measured on this machine
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            r = json.loads(line)
            if r["machine"] == args.machine and r["size"] in rungs:
                speed[r["size"]] = r["cps"]
    for budget in args.budgets:
        for size in ["auto"] if args.auto else args.sizes:
            out = f"{args.runs}/{args.machine}-{size}-{int(budget)}s-{int(time.time())}"
            extra = []
            if not args.auto:
                settings = rungs[size].settings()
                epochs = speed.get(size, 0) * budget / TRAIN_CHARS
                mc = ModelConfig(**{k: v for k, v in settings.items() if k in ("model", "layers", "hidden", "embed")},
                                 vocab_size=NOMINAL_VOCAB)
                settings.update(regularisation(epochs, mc.parameter_count()))
                extra = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
            else:
                extra = ["--preset", "auto"]
            cmd = [sys.executable, "-m", "charnn", "train", "--out", out, "--max-time", str(budget),
                   "--eval-every", "0", "--quiet", "--sample-chars", "0", *shlex.split(args.flags), *extra]
            start = time.perf_counter()
            run(cmd, args.core)
            wall = time.perf_counter() - start
            windows = json.loads(run([sys.executable, "-m", "charnn", "eval", out, "--protocol", "windows",
                                      "--json"], args.core))
            cfg = json.loads(Path(out, "config.json").read_text())
            m, t = cfg["model"], cfg["train"]
            metrics = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines() if x.strip()]
            steps = max(x.get("step", 0) for x in metrics)
            chars = steps * t["batch_size"] * t["seq_len"]
            seconds = max(x.get("time", 0) for x in metrics) or budget
            vals = [x["val_loss"] for x in metrics if x.get("val_loss") is not None]
            rec = {"machine": args.machine, "size": size if not args.auto else f"{m['layers']}x{m['hidden']}",
                   "auto": args.auto, "budget": budget, "steps": steps, "chars": chars,
                   "cps": round(chars / seconds), "wall": round(wall, 1),
                   "params": ModelConfig.from_dict(m).parameter_count(), "layers": m["layers"], "hidden": m["hidden"],
                   "dropout": m["dropout"], "weight_decay": t["weight_decay"], "lr": t["lr"],
                   "batch_size": t["batch_size"], "seq_len": t["seq_len"],
                   "stateful": round(vals[-1], 4) if vals else None, "windows": round(windows["loss"], 4),
                   "auto_record": t.get("auto") or None, "run": out}
            if not args.auto:
                speed[size] = rec["cps"]
            print(json.dumps(rec), flush=True)
            with open(jsonl, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
