"""Fine-tuning vs training from scratch on a small English text, at equal wall time.

    python benchmarks/finetune.py --parent runs/default          # ~45 minutes with the defaults
    python benchmarks/finetune.py --parent runs/default --write  # and append to BENCHMARKS.md
    python benchmarks/finetune.py --quick                        # a smoke run (tiny parent, a few minutes)

The text is the prose of Python's own documentation topics (`pydoc_data/topics.py`, the
text of `help("with")` and its siblings), which ships with every CPython: anyone can
reproduce the figures without downloading anything, it is English prose (with some code)
unlike the parent's Shakespeare, and it is long enough (~465,000 characters in 3.11) to cut
a 200 KB training set and a separate validation set from it. It is read in sorted key order,
so one Python version always gives the same text; its SHA-256 is reported with the results.

For each training size (20,000 and 200,000 characters from the start of the text; the last
--val-chars characters of the text are the validation set of every run):

1. fine-tune the parent (`charnn train TEXT --init-from PARENT`, fine-tuning's defaults) for
   --budget seconds;
2. train from scratch with the default settings (the parent's architecture: `charnn train`'s
   defaults) for the same --budget seconds;
3. train from scratch for --cap x --budget seconds and find when its validation loss first
   reaches the fine-tuned run's best: how long from scratch needs to catch up (the parent's
   own training time is not counted). A run planned for longer keeps a higher learning rate
   for longer, so it may reach a loss later than a run planned to end there: an upper bound.

Validation loss: the runs' own evaluations every --eval-every steps (stateful protocol, nats
per character), the best of each run; the curves go to the JSON file. Every run directory is
kept under --runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from common import append_section, has_amx, machine, table

SIZES = (20_000, 200_000)


def topics_text() -> str:
    """The documentation topics of the running Python, in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


def split_fraction(size: int, val: int) -> float:
    """The --val-fraction that makes charnn train on exactly the first `size` characters of a
    corpus of size + val (data/corpus.py's split_point: int(n * (1 - f)))."""
    n = size + val
    f = val / n
    while int(n * (1.0 - f)) > size:
        f += 1e-12
    while int(n * (1.0 - f)) < size:
        f -= 1e-12
    return f


def charnn(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "charnn", *args], check=True)


def curve(run: Path) -> list[tuple[float, int, float]]:
    """(seconds of training, step, validation loss) of every evaluation of a run."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["time"], r["step"], r["val_loss"]) for r in map(json.loads, lines) if r.get("val_loss") is not None]


def best(points: list[tuple[float, int, float]]) -> float:
    return min(v for _, _, v in points)


def catch_up(points: list[tuple[float, int, float]], target: float) -> float | None:
    """The training time at which a run's validation loss first reaches `target` (None: never)."""
    return next((t for t, _, v in points if v <= target), None)


def train(corpus: Path, out: Path, seconds: float, args, *extra: str) -> list[tuple[float, int, float]]:
    # --quick's model flags go to the fine-tuned run too: they are its parent's, so they agree.
    charnn("train", str(corpus), "--out", str(out), "--max-time", f"{seconds:g}", "--val-fraction",
           repr(args.val_fraction[corpus]), "--eval-every", str(args.eval_every), "--sample-chars", "0",
           "--quiet", *args.model, *extra)
    return curve(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent", help="the run to fine-tune: the default `charnn train` run (runs/default)")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of training per run (default 120)")
    ap.add_argument("--cap", type=float, default=8.0, help="the long from-scratch run: cap x budget (default 8)")
    ap.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="training characters")
    ap.add_argument("--val-chars", type=int, default=30_000, help="validation characters (default 30000)")
    ap.add_argument("--eval-every", type=int, default=50, help="steps between evaluations (default 50)")
    ap.add_argument("--runs", default="runs/bench-finetune", help="where the run directories go")
    ap.add_argument("--quick", action="store_true", help="smoke run: a tiny parent, tiny sizes, seconds")
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    runs = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    runs.mkdir(parents=True)
    args.model = []
    if args.quick:  # tiny everything, and a parent trained here
        args.model = ["--hidden", "32", "--layers", "1", "--batch-size", "8", "--seq-len", "32"]
        args.budget, args.cap, args.sizes, args.val_chars, args.eval_every = 4.0, 2.0, [2_000, 6_000], 2_000, 10
        if not args.parent:
            args.parent = str(runs / "parent")
            charnn("train", "--out", args.parent, "--max-time", "5", "--quiet", "--sample-chars", "0", *args.model)
    if not args.parent:
        ap.error("--parent RUN is required (the default run: charnn train --out runs/default)")
    parent_cfg = json.loads(Path(args.parent, "config.json").read_text())

    text = topics_text()
    val = text[-args.val_chars:]
    pool = text[: -args.val_chars]
    if max(args.sizes) > len(pool):
        ap.error(f"--sizes: the text has {len(pool):,} characters besides the validation set")
    args.val_fraction, results = {}, []
    for size in args.sizes:
        corpus = runs / f"topics-{size}.txt"
        corpus.write_text(pool[:size] + val, encoding="utf-8")
        args.val_fraction[corpus] = split_fraction(size, len(val))
        ft = train(corpus, runs / f"finetune-{size}", args.budget, args, "--init-from", args.parent)
        scratch = train(corpus, runs / f"scratch-{size}", args.budget, args)
        long = train(corpus, runs / f"scratch-long-{size}", args.cap * args.budget, args)
        caught = catch_up(long, best(ft))
        results.append({"size": size, "finetune": ft, "scratch": scratch, "scratch_long": long,
                        "finetune_best": best(ft), "scratch_best": best(scratch), "scratch_long_best": best(long),
                        "catch_up_s": caught})
        print(f"{size:,} chars: fine-tuned {best(ft):.4f}, from scratch {best(scratch):.4f}, "
              f"catch-up {caught if caught is not None else 'never'} s", flush=True)

    m, t = parent_cfg["model"], parent_cfg["train"]
    amx = has_amx()
    bold = lambda v, other: f"**{v:.4f}**" if v <= other else f"{v:.4f}"  # noqa: E731  (the better one)
    rows = [[f"{r['size']:,}", bold(r["finetune_best"], r["scratch_best"]), bold(r["scratch_best"], r["finetune_best"]),
             f"{r['scratch_long_best']:.4f} ({args.cap:g} x)",
             f"{r['catch_up_s']:.0f} s ({r['catch_up_s'] / args.budget:.1f} x)" if r["catch_up_s"] is not None
             else f"not within {args.cap * args.budget:.0f} s"] for r in results]
    body = (
        f"Parent: `{args.parent}` ({m['model']} {m['layers']}x{m['hidden']}, trained on "
        f"{', '.join(Path(s).name for s in t['corpus']) or 'tiny Shakespeare'}). Text: Python "
        f"{sys.version.split()[0]}'s `pydoc_data/topics.py` ({len(text):,} characters, SHA-256 "
        f"{hashlib.sha256(text.encode()).hexdigest()[:16]}...); training = its first N characters, validation = "
        f"its last {len(val):,}. Every run {args.budget:g} s of training (`--max-time`), evaluated every "
        f"{args.eval_every} steps; validation loss = the best evaluation, nats/char (stateful). Catch-up: "
        f"training time of a {args.cap:g} x longer from-scratch run until its validation loss first reaches the "
        f"fine-tuned run's. AMX: {'yes' if amx else 'no'}; {machine()}.\n\n"
        + table(["training chars", "fine-tuned", "from scratch", "from scratch, longer", "from scratch catches up"],
                rows)
    )
    out = runs / "finetune.json"
    out.write_text(json.dumps({"parent": args.parent, "budget_s": args.budget, "cap": args.cap,
                               "python": sys.version.split()[0], "text_chars": len(text), "val_chars": len(val),
                               "results": results}, indent=1))
    print(body)
    print(f"curves: {out}")
    if args.write and not args.quick:
        append_section("Fine-tuning vs training from scratch", body)


if __name__ == "__main__":
    main()
