"""`charnn score` and the API's logprobs: what telling the loss character by character costs.

    python benchmarks/score_speed.py --run runs/default [--write]
    python benchmarks/score_speed.py --quick            # a smoke run on a throwaway tiny model

Measured in one run, each against its baseline:

  1. charnn score vs charnn eval on the run's validation split: characters per second of
     eval's stateful pass (evaluate_ids, the baseline) and of score writing JSON lines and the
     HTML page (to a discarded sink), interleaved; the ratio is what per-character output costs.
  2. memory does not grow with the text: peak RSS of `charnn score` (a subprocess, JSONL to
     /dev/null) on the validation split and on a text 10x longer.
  3. the playground's two calls against a server on 127.0.0.1: the next-character menu
     (max_tokens 1, logprobs 5) vs the same request without logprobs, and echo scoring
     (max_tokens 0, echo, logprobs 1) of a 1,000 and a 4,000-character prompt; median latency
     of each, requests interleaved.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import charnn
from charnn.checkpoint import load_run
from charnn.data.source import validation_text
from charnn.evaluate import evaluate_ids
from charnn.infer.score import ScoreConfig, score_file
from charnn.infer.scorepage import write_score
from charnn.serve.config import ServeConfig
from charnn.serve.run import background_server
from common import ROOT, append_section, table


def score_vs_eval(run: Path, text_path: Path, rounds: int) -> list[list]:
    loaded = load_run(run, "cpu")
    ids = loaded.files.vocab.encode(text_path.read_text(encoding="utf-8"))
    html = text_path.parent / "page.html"
    times = {"eval (baseline)": [], "score, JSONL": [], "score, JSONL + HTML": []}
    for _ in range(rounds):  # interleaved: the machine's noise falls on all three alike
        t = time.perf_counter()
        evaluate_ids(loaded.model, ids, "stateful")
        times["eval (baseline)"].append(time.perf_counter() - t)
        for name, page in (("score, JSONL", None), ("score, JSONL + HTML", str(html))):
            t = time.perf_counter()
            write_score(score_file(run, str(text_path), ScoreConfig(html=page)), io.BytesIO())
            times[name].append(time.perf_counter() - t)
    base = min(times["eval (baseline)"])
    return [[name, f"{len(ids) / min(ts):,.0f}", f"{min(ts) / base:.2f}x"] for name, ts in times.items()]


def peak_rss_mb(run: Path, text: Path) -> float:
    code = ("import resource, sys; from charnn.cli import main; sys.stdout = open('/dev/null', 'w'); "
            f"main(['score', {str(run)!r}, {str(text)!r}]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return float(out.stderr.strip().splitlines()[-1])


def api_latency(run: Path, text: str, rounds: int) -> list[list]:
    model = charnn.load(run)
    prompt = "ROMEO:\nIs the day so young?"
    calls = {
        "next character, max_tokens 1 (baseline)": {"prompt": prompt, "max_tokens": 1},
        "next-character menu, max_tokens 1, logprobs 5": {"prompt": prompt, "max_tokens": 1, "logprobs": 5},
        "score 1,000 characters, echo, max_tokens 0": {"prompt": text[:1000], "max_tokens": 0, "echo": True,
                                                      "logprobs": 1},
        "score 4,000 characters, echo, max_tokens 0": {"prompt": text[:4000], "max_tokens": 0, "echo": True,
                                                      "logprobs": 1},
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    with background_server({"m": model}, ServeConfig(port=0)) as url, httpx.Client(timeout=60) as http:
        for _ in range(rounds):
            for name, body in calls.items():
                t = time.perf_counter()
                r = http.post(f"{url}/v1/completions", json={"model": "m", "temperature": 0, **body})
                times[name].append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
    base = statistics.median(times["next character, max_tokens 1 (baseline)"])
    return [[name, f"{statistics.median(ts) * 1000:.1f}", f"{statistics.median(ts) / base:.2f}x"]
            for name, ts in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: a throwaway tiny one)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny model, few rounds")
    parser.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args()
    rounds = 2 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run
        if run is None:
            run = tmp / "tiny"
            charnn.train(out=str(run), max_steps=1, progress=False, sample_chars=0, hidden=32, layers=1)
        val = validation_text(load_run(run, "cpu").files)
        if args.quick:
            val = val[:20_000]
        short, long = tmp / "val.txt", tmp / "val10.txt"
        short.write_text(val, encoding="utf-8")
        long.write_text(val * 10, encoding="utf-8")
        speed = score_vs_eval(run, short, rounds)
        memory = [[f"{len(val):,}", f"{peak_rss_mb(run, short):.0f}"],
                  [f"{10 * len(val):,}", f"{peak_rss_mb(run, long):.0f}"]]
        api = api_latency(run, val, 3 if args.quick else 20)
    body = "\n\n".join([
        f"Run `{args.run or 'a throwaway tiny run'}`, its validation split ({len(val):,} characters).",
        table(["path", "characters/s", "time vs eval"], speed),
        table(["characters scored", "peak RSS of charnn score, MB"], memory),
        table(["request", "median ms", "vs max_tokens 1"], api),
    ])
    print(body)
    if args.write:
        append_section("charnn score and API logprobs", body)


if __name__ == "__main__":
    main()
