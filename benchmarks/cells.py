"""The cells that remember, on tiny Shakespeare and on Python source: the README's figures.

    python benchmarks/cells.py                 # trains both runs (~150 s + ~240 s), analyses both
    python benchmarks/cells.py --shakespeare-run runs/default --python-run runs/cells/python
                                               # analyses runs trained before
    python benchmarks/cells.py --quick         # a smoke run (about a minute): tiny models, short texts

Two corpora, both offline:

- tiny Shakespeare (bundled), with `charnn train`'s defaults: the README's quick-start run;
- Python source, the analogue of the paper's Linux kernel: every *.py file directly in the
  running Python's standard library directory (sysconfig's "stdlib" path, no subdirectories;
  168 files, 4.7 million characters for CPython 3.11.7), in sorted file-name order, concatenated as they are
  (UTF-8). The last 10 % (the validation split, the files late in the alphabet) is analysed.
  Trained with the default model for --python-time seconds (240: about 1.5 passes on 2 cores).

Each run is analysed with `charnn cells` (100,000 characters of its validation split, n-gram
orders 1 to 20; --syntax python for the Python run). Written to --out (docs/cells/):
NAME.json (`charnn cells --json`), NAME.html (the coloured strips), NAME.png (a screenshot of
the page, when Chromium is installed), cells.md (both tables, with the commands); and, with
--markdown FILE, cells.md appended to FILE (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from charnn.lab.cells import CellsConfig
from charnn.lab.report import cells, format_table, to_json


def python_corpus(path: Path, files: int = 0) -> tuple[int, int]:
    """Write the standard library's top-level *.py files (sorted; the first `files`, 0 = all) to
    `path`; return (files, characters)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if files:
        sources = sources[:files]
    text = "".join(p.read_text(encoding="utf-8") for p in sources)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return len(sources), len(text)


def charnn(*args: str) -> None:
    cmd = [sys.executable, "-m", "charnn", *args]
    print("$", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")


def screenshot(page: Path, png: Path) -> bool:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return False
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
                    "--window-size=1100,1500", page.resolve().as_uri()], capture_output=True, timeout=120)
    return png.is_file()


def analyse(name: str, run: Path, out: Path, config: CellsConfig) -> str:
    config.html = str(out / f"{name}.html")
    result = cells(run, config)
    (out / f"{name}.json").write_text(json.dumps(to_json(result), ensure_ascii=False, indent=1) + "\n")
    shot = screenshot(out / f"{name}.html", out / f"{name}.png")
    flags = f" {Path(config.text).name}" if config.text else ""
    flags += f" --syntax {config.syntax}" if config.syntax != "prose" else ""
    command = (f"charnn cells {run}{flags} --max-chars {config.max_chars} --ngram {config.ngram} "
               f"--html {config.html}")
    pictures = f"{name}.html" + (f", {name}.png" if shot else "")
    return f"### {name}\n\nCommand: `{command}` (pictures: {pictures})\n\n```\n{format_table(result)}\n```\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shakespeare-run", help="a run on tiny Shakespeare to analyse (default: train one)")
    p.add_argument("--python-run", help="a run on the Python corpus to analyse (default: train one)")
    p.add_argument("--python-time", type=float, default=240.0, help="seconds of training on Python (default 240)")
    p.add_argument("--runs", default="runs/cells", help="where runs and the corpus go (default runs/cells)")
    p.add_argument("--out", default="docs/cells", help="where the results go (default docs/cells)")
    p.add_argument("--max-chars", type=int, default=100_000)
    p.add_argument("--ngram", type=int, default=20)
    p.add_argument("--markdown", help="append the tables to this file (e.g. BENCHMARKS.md)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, 20 stdlib files, short texts")
    args = p.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = ["--hidden", "32", "--layers", "1", "--max-steps", "30", "--eval-every", "30"] if args.quick else []
    if args.quick:
        args.max_chars, args.ngram = 20_000, 5
    corpus = runs / "python-stdlib.txt"
    n_files, n_chars = python_corpus(corpus, 20 if args.quick else 0)
    print(f"Python corpus: {n_files} files, {n_chars:,} characters -> {corpus}")
    shakespeare, python = args.shakespeare_run, args.python_run
    if shakespeare is None:
        shakespeare = str(runs / "shakespeare")
        charnn("train", "--out", shakespeare, "--sample-chars", "0", "--quiet", *tiny)
    if python is None:
        python = str(runs / "python")
        time = [] if args.quick else ["--max-time", f"{args.python_time:g}"]
        charnn("train", str(corpus), "--out", python, "--sample-chars", "0", "--quiet", *time, *tiny)
    sections = [
        analyse("shakespeare", Path(shakespeare), out, CellsConfig(max_chars=args.max_chars, ngram=args.ngram)),
        analyse("python", Path(python), out, CellsConfig(max_chars=args.max_chars, ngram=args.ngram,
                                                         syntax="python")),
    ]
    stamp = datetime.date.today().isoformat()
    body = (f"## The cells that remember ({stamp})\n\nCommand: `python benchmarks/cells.py "
            f"{' '.join(sys.argv[1:])}`  \nPython corpus: the {n_files} top-level *.py files of "
            f"{sysconfig.get_paths()['stdlib']} (Python {sys.version.split()[0]}), sorted, "
            f"{n_chars:,} characters.\n\n" + "\n".join(sections))
    (out / "cells.md").write_text(body)
    print(body)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write("\n" + body)
        print(f"appended to {args.markdown}")


if __name__ == "__main__":
    main()
