"""Memory at scale: peak RSS of `charnn prepare` and of training from a prepared corpus.

    python benchmarks/prepare_memory.py                 # 20 MB vs 2 GiB, about 5 minutes
    python benchmarks/prepare_memory.py --large-mb 100  # a quick look

Generates two corpora in a temporary directory under --tmp (deleted afterwards): tiny
Shakespeare repeated, each copy with a numbered header line and a line of multi-byte
characters, to --small-mb and --large-mb megabytes. For each it runs, as child processes,
`charnn prepare` and a short `charnn train DIR` (stateful streams, the default model, 20
steps, a 100,000-character validation split so both sizes score the same amount), and,
for contrast, training from the small corpus's text (which is read and encoded in
memory) and from the large prepared corpus with the random-windows layout (whose
per-epoch shuffle holds one int64 per window). Peak resident memory of each child comes
from os.wait4; it includes the ~220 MB that importing torch costs every process (the
training runs also load oneDNN and matplotlib). Appends the table to BENCHMARKS.md under
"Memory at scale" (--no-write: print only), with the load average before and after: the
memory figures do not depend on a busy machine, the wall times do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charnn.data.corpus import bundled_text
from common import append_section, table

TRAIN = ["--max-steps", "20", "--eval-every", "0", "--log-every", "10", "--sample-chars", "0",
         "--dtype", "float32", "--quiet"]
VAL_CHARS = 100_000


def generate(path: Path, size: int) -> int:
    """Write at least `size` bytes of text to `path`; returns the bytes written."""
    base = bundled_text().encode("utf-8")
    written, copy = 0, 0
    with open(path, "wb") as f:
        while written < size:
            piece = f"== copy {copy} ==\nnaïve café — Ωμέγα 𝄞 {copy}\n".encode() + base
            f.write(piece)
            written += len(piece)
            copy += 1
    return written


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run `cmd`; its peak resident memory in MB and its wall time in seconds."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{out.decode(errors='replace')}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-mb", type=float, default=20)
    ap.add_argument("--large-mb", type=float, default=2048, help="default: 2 GiB")
    ap.add_argument("--tmp", default="/tmp", help="where to put the corpora (needs ~2.1x --large-mb free)")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]

    need = int(2.1 * args.large_mb * 2**20)
    free = shutil.disk_usage(args.tmp).free
    if free < need:
        sys.exit(f"{args.tmp} has {free / 2**30:.1f} GiB free; this needs {need / 2**30:.1f} GiB")
    charnn = [sys.executable, "-m", "charnn"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    root = Path(tempfile.mkdtemp(prefix="charnn-memory-", dir=args.tmp))
    try:
        for label, mb in (("small", args.small_mb), ("large", args.large_mb)):
            corpus = root / f"{label}.txt"
            t = time.perf_counter()
            size = generate(corpus, int(mb * 2**20))
            print(f"generated {corpus} ({size:,} bytes) in {time.perf_counter() - t:.0f} s", flush=True)
            prepared = root / f"{label}-prepared"
            rss, wall = measure([*charnn, "prepare", str(corpus), "--out", str(prepared), "--quiet"], env)
            rows.append((f"`charnn prepare`, {size / 1e6:,.0f} MB corpus", rss, wall))
            val = ["--val-fraction", f"{VAL_CHARS / size:.8f}"]
            runs = [("streams", prepared, ["--batching", "streams"])]
            if label == "small":
                runs.append(("streams, from the text", corpus, ["--batching", "streams"]))
            else:
                runs.append(("windows", prepared, ["--batching", "windows"]))
            for name, source, extra in runs:
                out = root / f"run-{label}-{name.split(',')[0]}-{len(rows)}"
                rss, wall = measure([*charnn, "train", str(source), "--out", str(out), *TRAIN, *val, *extra], env)
                what = "prepared" if source == prepared else "text"
                rows.append((f"`charnn train` ({name}), {size / 1e6:,.0f} MB {what} corpus", rss, wall))
            corpus.unlink()  # keep the disk footprint down before the next size
            print(*(f"{r[0]}: {r[1]:,.0f} MB peak RSS, {r[2]:.0f} s" for r in rows[-3:]), sep="\n", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    body = table(["what", "peak RSS", "wall time"], [[w, f"{rss:,.0f} MB", f"{wall:.0f} s"] for w, rss, wall in rows])
    body += (f"\n\nLoad average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on "
             f"{os.cpu_count()} cores. Peak RSS of each child process (os.wait4), including the "
             f"~220 MB every process spends importing torch.")
    print("\n" + body)
    if not args.no_write:
        append_section("Memory at scale", body)


if __name__ == "__main__":
    main()
