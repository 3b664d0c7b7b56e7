"""Sampling speed: characters per second single-stream and batched, time to first character,
and what int8 quantisation costs in bits per character.

    python benchmarks/sample_speed.py --run runs/cpu-10min   # a trained run (the LSTM 2x384 preset)
    python benchmarks/sample_speed.py --quick                # a smoke run on a tiny model

Each path is timed in the same run against the baseline of stepping torch.nn.LSTM itself
one character at a time (CharLM.step). All paths run the full sampling loop (temperature,
multinomial draw, feeding the id back), not just the model.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import charnn
from charnn.checkpoint import read_run
from charnn.data.source import validation_text
from charnn.evaluate import evaluate_steps
from charnn.infer.onnx import onnx_available
from charnn.infer.sampling import generate
from charnn.infer.steps import Stepper, make_stepper
from common import append_section, table


def chars_per_s(stepper, prime_ids: list[int], batch: int, length: int) -> tuple[float, float]:
    """(chars/s of the generation loop, seconds to the first character)."""
    prime = [prime_ids] * batch
    start = time.perf_counter()
    it = generate(stepper, prime, length, temperature=0.8, seed=0)
    next(it)
    first = time.perf_counter() - start
    t0 = time.perf_counter()
    n = 1
    for _ in it:
        n += 1
    return batch * (n - 1) / (time.perf_counter() - t0), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run directory (default: train a small one)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--length", type=int, default=3000, help="characters per single-stream measurement")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    run = args.run
    if run is None:
        run = f"{tmp.name}/run"
        size = dict(hidden=64, layers=1) if args.quick else dict(hidden=512, layers=2)
        charnn.train(out=run, max_time=10 if args.quick else 120, progress=False, **size)
    length = 200 if args.quick else args.length
    model = charnn.load(run, backend="torch")
    lm, vocab = model.model, model.vocab
    cfg = model.config
    prime = model.prime_ids("ROMEO:\nWhat light through yonder window breaks? It is the east, and Juliet is the sun.\n"[:100], "skip")

    paths = {"torch.nn step (baseline)": lm, "charnn torch fast step": Stepper(lm, "torch")}
    if onnx_available():
        paths["charnn onnx float32"] = make_stepper(lm, "onnx", "none")
        paths["charnn onnx int8"] = make_stepper(lm, "onnx", "int8")
    rows = []
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, stepper in paths.items():
            single, first = chars_per_s(stepper, prime, 1, length)
            batched, _ = chars_per_s(stepper, prime, 32, max(50, length // 10))
            results[(name, threads)] = (single, batched)
            rows.append([name, threads, f"{single:,.0f}", f"{batched:,.0f}", f"{first * 1000:.1f} ms"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    base = max(results[("torch.nn step (baseline)", t)][0] for t in (1, 2))
    best_name, best_t = max(results, key=lambda k: results[k][0])
    best_batched = max(v[1] for v in results.values())

    quality = ""
    if "charnn onnx int8" in paths:
        torch.set_num_threads(2)
        text = validation_text(read_run(run))
        if args.quick:
            text = text[:5000]
        ids = vocab.encode(text, "skip")
        ref = evaluate_steps(paths["charnn torch fast step"], ids)
        q = evaluate_steps(paths["charnn onnx int8"], ids)
        quality = (f"\n\nint8 quality cost, stateful bpc on the validation split ({ref.chars:,} characters, "
                   f"16 streams, stepwise): float32 {ref.bpc:.4f}, int8 {q.bpc:.4f}: "
                   f"**{q.bpc - ref.bpc:+.4f} bpc**.")
    params = sum(p.numel() for p in lm.parameters())
    body = (
        f"Model: {cfg.model} {cfg.layers}x{cfg.hidden} ({params / 1e6:.2f} M parameters) from `{run}`. "
        f"Single stream: {length:,} characters after a 100-character prime; batched: 32 streams. "
        f"Time to first character = priming on the 100-character prompt + one step + one draw.\n\n"
        + table(["path", "threads", "single-stream chars/s", "32 streams chars/s", "time to first char"], rows)
        + f"\n\nFastest single stream: {best_name} ({best_t} threads), "
        f"**{results[(best_name, best_t)][0] / base:.1f}x** the torch.nn baseline; "
        f"best batched: {best_batched:,.0f} chars/s." + quality
    )
    print(body)
    if not args.no_write and not args.quick:
        append_section("Sampling speed", body)


if __name__ == "__main__":
    main()
