"""Novelty: how much of a run's samples is copied, beside new text from the same source, and
what the index costs (build, query), libdivsufsort against numpy prefix doubling.

    python benchmarks/novelty.py --run runs/default            # the README's table
    python benchmarks/novelty.py --run runs/default --write    # and a section in BENCHMARKS.md

Samples: 1,000 characters at temperatures 0.5 / 0.8 / 1.0, seed 0, no prime (the same text as
`charnn sample RUN --length 1000 --temperature T --seed 0 --novelty --format jsonl`). The
yardstick: the held-out split cut into 1,000-character pieces, measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

import charnn
from charnn import checkpoint
from charnn.data import suffixarray
from charnn.data.source import training_corpus
from charnn.infer.novelty import open_novelty
from common import append_section, table

NS = (8, 16, 32)


def row(what: str, measured: list) -> list:
    """A table row: the mean of each figure over `measured` (Novelty objects)."""
    example = max(measured, key=lambda m: m.longest)
    longest = str(example.longest) if len(measured) == 1 else \
        f"{statistics.mean(m.longest for m in measured):.0f} on average, at most {example.longest}"
    shown = json.dumps(example.longest_text[:60] + ("..." if example.longest > 60 else ""), ensure_ascii=False)
    return [what, longest, f"`{shown}`"] + [f"{100 * statistics.mean(m.ngrams[n] for m in measured):.1f} %"
                                           for n in NS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    ap.add_argument("--write", action="store_true", help="append a section to BENCHMARKS.md")
    args = ap.parse_args()

    files = checkpoint.read_run(args.run)
    corpus = training_corpus(files)
    train = np.asarray(corpus.train_array())
    t0 = time.perf_counter()
    sa = suffixarray.suffix_array(train)
    library = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert np.array_equal(suffixarray._prefix_doubling(train), sa)
    numpy = time.perf_counter() - t0
    for path in checkpoint.novelty_paths(args.run):  # the first open builds, the second reads
        if path.exists():
            os.unlink(path)
    t0 = time.perf_counter()
    open_novelty(args.run)
    first_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = open_novelty(args.run)
    cached_open = time.perf_counter() - t0

    model = charnn.load(args.run)
    rows, query_s = [], []
    for t in args.temperatures:
        text = model.generate("", args.length, temperature=t, seed=0)
        t0 = time.perf_counter()
        measured = index.measure(text)
        query_s.append(time.perf_counter() - t0)
        rows.append(row(f"sample, temperature {t:g}", [measured]))
    val = corpus.val_text
    pieces = [val[i : i + args.length] for i in range(0, len(val) - args.length + 1, args.length)]
    rows.append(row(f"held-out text ({len(pieces)} pieces)", [index.measure(p) for p in pieces]))

    header = [f"text ({args.length:,} characters)", "longest copied (characters)", "the longest"] + [f"{n}-grams in training"
                                                                                    for n in NS]
    body = table(header, rows) + (
        f"\n\nIndex of {len(train):,} training characters: suffix array {library:.3f} s with libdivsufsort, "
        f"{numpy:.2f} s with numpy prefix doubling ({numpy / library:.0f} x); first open of the run "
        f"(array, cache, held-out yardstick) {first_open:.2f} s, cached {cached_open:.3f} s; one "
        f"{args.length:,}-character sample measured in {1000 * statistics.median(query_s):.0f} ms (median).\n"
    )
    print(body)
    if args.write:
        append_section("Novelty: how much of a sample is copied", body)


if __name__ == "__main__":
    main()
