"""Preset tuning: train configurations at one fixed wall-time budget and score them the same way.

    python benchmarks/tune.py 600 2 'c4={"model": "lstm", "hidden": 512, "seq_len": 128, "dropout": 0.35}' ...

Arguments: the budget in seconds, the torch thread count, then NAME=JSON pairs whose keys are
charnn.train keywords (the flags of `charnn train` with underscores). Each configuration is
trained with `charnn.train(max_time=BUDGET, eval_every=0)`, then its best weights are scored on
the validation split under both protocols. One JSON line per run goes to --jsonl (appended, so
a sweep can be spread over several calls); runs go under runs/tune/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import charnn
from charnn.checkpoint import read_run
from charnn.data.source import validation_text


def trial(name: str, budget: float, threads: int, cfg: dict, jsonl: Path) -> dict:
    out = Path("runs/tune") / f"{name}-{int(time.time())}"
    start = time.time()
    summary = charnn.train(out=str(out), max_time=budget, eval_every=0, progress=False, sample_chars=0,
                           threads=threads, **cfg)
    model = charnn.load(out, backend="torch")
    windows = model.evaluate(validation_text(read_run(out)), "windows")
    rec = {"name": name, "budget": budget, "threads": threads, "cfg": cfg, "steps": summary.step,
           "cps": round(summary.chars_per_s), "wall": round(time.time() - start),
           "stateful": round(summary.val_loss, 4), "windows": round(windows.loss, 4)}
    print(json.dumps(rec), flush=True)
    with open(jsonl, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("budget", type=float, help="seconds of training per configuration")
    ap.add_argument("threads", type=int, help="torch threads")
    ap.add_argument("configs", nargs="+", metavar="NAME=JSON")
    ap.add_argument("--jsonl", type=Path, default=Path("runs/tune/tune.jsonl"))
    args = ap.parse_args()
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    for spec in args.configs:
        name, cfg = spec.split("=", 1)
        trial(name, args.budget, args.threads, json.loads(cfg))


if __name__ == "__main__":
    main()
