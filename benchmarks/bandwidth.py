"""Sampling against the memory-bandwidth limit: each path's chars/s and what the hardware allows.

    python benchmarks/bandwidth.py                        # LSTM 2x384 and 2x512, random weights
    python benchmarks/bandwidth.py --run runs/bench/10min-1   # and that trained run: quality per path
    python benchmarks/bandwidth.py --quick                # a smoke run in seconds

One stream reads every weight of the step once per character, so no path samples faster
than bandwidth / bytes read per character. The bandwidth is the best this machine shows on
an array of that many bytes (the weights of a small model sit in cache, and the limit says
so): the best of a copy (bytes read + written per second, STREAM's convention) and a torch
matrix-vector product (bytes of the matrix per second), timed on arrays of the float32 and
the int8 sizes of the weights. With 32 streams the weights are still read once per step,
so the limit is 32 times higher, and the arithmetic (2 x parameters FLOPs per character)
binds first on most CPUs: the 32-stream column shows how far batching goes.

Every path runs the whole sampling loop (charnn.infer.sampling.generate: the step, the
draw at temperature 1, the id fed back). Paths and bandwidth are timed in interleaved
rounds, each in short stretches, and the best stretch of each is kept, so a busy moment on
a shared machine counts for none of them.
Writes a JSON file (--json) and prints a markdown table (appended to BENCHMARKS.md with
--write).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from charnn.errors import CharnnError
from charnn.infer.onnx import onnx_available
from charnn.infer.sampling import CHUNK, generate
from charnn.infer.steps import FusedStep, Stepper, make_stepper
from charnn.models import ModelConfig, build_model
from common import append_section, calls_per_s, machine, machine_info, table

PRIME = 100  # characters of prompt before the timed steps
BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}


def paths(lm) -> dict[str, tuple[str, object]]:
    """The sampling paths charnn has for this model: name -> (weight precision, stepper)."""
    out = {"torch": ("float32", Stepper(lm, "torch")), "torch --quantize int8": ("int8", make_stepper(lm, "torch", "int8"))}
    try:
        out["native"] = ("float32", make_stepper(lm, "native"))
        out["native --quantize int8"] = ("int8", make_stepper(lm, "native", "int8"))
    except CharnnError as e:  # no C compiler here: the path is left out, and said why
        print(f"native path left out: {e}")
    if onnx_available():
        out["onnx"] = ("float32", make_stepper(lm, "onnx", "none"))
        out["onnx --quantize int8"] = ("int8", make_stepper(lm, "onnx", "int8"))
    return out


def bytes_per_char(lm, precision: str) -> int:
    """Bytes of weights one step reads: every matrix of the fused step (steps.FusedStep) and
    its biases, and one row of layer 0's input table; an int8 matrix adds a float32 scale
    and an int8 zero point per row (per-channel quantisation; the native kernel's int8 has
    no zero point, 1 byte a row less: ~0.3 % of its bytes)."""
    step = FusedStep(lm)
    total = step.table.shape[1] * 4  # one row of the table, float32 in every path
    for p in step.parameters():
        if p.dim() == 2:
            total += p.numel() * BYTES[precision] + (p.shape[0] * 5 if precision == "int8" else 0)
        else:
            total += p.numel() * 4  # biases stay float32
    return total


def bandwidth(nbytes: int, seconds: float) -> dict[str, float]:
    """Bytes per second of a copy (read + written) and of a matrix-vector product over `nbytes`."""
    n = max(1024, nbytes // 4 // 1024 * 1024)
    src, dst = torch.randn(n), torch.empty(n)
    matrix, vector = src.view(-1, 1024), torch.randn(1024)
    return {"copy": 8 * n * calls_per_s(lambda: dst.copy_(src), seconds),
            "mv": 4 * n * calls_per_s(lambda: torch.mv(matrix, vector), seconds)}


def chars_per_s(stepper, vocab: int, batch: int, length: int, per_chunk: int = 2 * CHUNK) -> float:
    """Characters per second of the sampling loop: the best stretch of `per_chunk` steps
    (milliseconds each, as the bandwidth's: a stretch another process interrupted does not count).
    A stepper that draws CHUNK characters per call (native) yields them in bursts, so a
    stretch is two whole bursts: the first burst, with the priming, is not timed."""
    prime = torch.randint(0, vocab, (batch, PRIME), generator=torch.Generator().manual_seed(0))
    chunks = max(1, length // per_chunk)
    it = generate(stepper, prime, per_chunk * chunks + CHUNK, temperature=1.0, seed=0)
    for _ in range(CHUNK):  # priming and the first burst are not timed
        next(it)
    best = 0.0
    for _ in range(chunks):
        start = time.perf_counter()
        for _ in range(per_chunk):
            next(it)
        best = max(best, batch * per_chunk / (time.perf_counter() - start))
    return best


def products_alone(stepper, seconds: float) -> float:
    """Characters per second of a step that did nothing but its matrix products: the torch
    step's Linear layers (float32 or int8) called in order on one row, at batch 1. The
    ceiling torch's own kernels put on that path, whatever the rest of the step costs; 0 for
    a path that is not torch's (ONNX Runtime, the native kernel)."""
    module = getattr(stepper, "_module", None) if getattr(stepper, "backend", "") == "torch" else None
    layers = [m for m in module.modules() if hasattr(m, "in_features")] if module is not None else []
    if not layers:
        return 0.0
    inputs = [torch.randn(1, m.in_features) for m in layers]

    def step():
        for m, x in zip(layers, inputs):
            m(x)

    with torch.inference_mode():
        return calls_per_s(step, seconds)


def quality(lm, steppers: dict, run: str, chars: int) -> dict[str, float]:
    """Stateful loss (nats/char) of each path, stepwise on the run's validation text."""
    from charnn.checkpoint import read_run
    from charnn.data.source import validation_ids
    from charnn.evaluate import evaluate_steps

    ids = torch.as_tensor(validation_ids(read_run(run))[: chars + 1], dtype=torch.long)
    return {name: evaluate_steps(stepper, ids).loss for name, (_, stepper) in steppers.items()}


def measure(name: str, lm, args) -> dict:
    vocab = lm.config.vocab_size
    steppers = paths(lm)
    sizes = {p: bytes_per_char(lm, p) for p, _ in steppers.values()}
    bw = {p: {"copy": 0.0, "mv": 0.0} for p in sizes}
    speed = {k: {1: 0.0, 32: 0.0} for k in steppers}
    alone = {k: 0.0 for k in steppers}
    for r in range(args.rounds):
        for precision, nbytes in sizes.items():
            got = bandwidth(nbytes, args.bandwidth_seconds)
            bw[precision] = {k: max(bw[precision][k], got[k]) for k in got}
        for path, (_, stepper) in steppers.items():
            for streams, length in ((1, args.length), (32, max(20, args.length // 10))):
                speed[path][streams] = max(speed[path][streams], chars_per_s(stepper, vocab, streams, length))
            alone[path] = max(alone[path], products_alone(stepper, args.bandwidth_seconds))
        print(f"{name}: round {r + 1}/{args.rounds} done", flush=True)
    losses = quality(lm, steppers, args.run, args.eval_chars) if args.run and name == "run" else {}
    rows = []
    for path, (precision, _) in steppers.items():
        best = max(bw[precision].values())
        limit = best / sizes[precision]
        rows.append({
            "model": name, "path": path, "precision": precision, "bytes_per_char": sizes[precision],
            "bandwidth_copy": bw[precision]["copy"], "bandwidth_mv": bw[precision]["mv"], "bandwidth": best,
            "limit_1": limit, "chars_per_s_1": speed[path][1], "of_limit_1": speed[path][1] / limit,
            "products_alone_1": alone[path] or None, "products_of_limit_1": alone[path] / limit or None,
            "limit_32": 32 * limit, "chars_per_s_32": speed[path][32], "of_limit_32": speed[path][32] / (32 * limit),
            "val_loss": losses.get(path),
        })
    return {"model": name, "params": sum(p.numel() for p in lm.parameters()), "paths": rows}


def markdown(results: list[dict], args) -> str:
    rows = []
    for m in results:
        for r in m["paths"]:
            rows.append([
                r["model"], f"`{r['path']}`", f"{r['bytes_per_char'] / 1e6:.2f} MB",
                f"{r['bandwidth_copy'] / 1e9:.1f} / {r['bandwidth_mv'] / 1e9:.1f}",
                f"{r['limit_1']:,.0f}", f"{r['chars_per_s_1']:,.0f}", f"**{r['of_limit_1']:.2f}**",
                f"{r['products_alone_1']:,.0f} ({r['products_of_limit_1']:.2f})" if r["products_alone_1"] else "-",
                f"{r['chars_per_s_32']:,.0f}", f"{r['of_limit_32']:.2f}",
            ])
    body = ("Limit = bandwidth / bytes of weights read per character; bandwidth = the best of a copy "
            "and a matrix-vector product over an array of that many bytes (GB/s shown as copy / mv). "
            f"Whole sampling loop, temperature 1, after a {PRIME}-character prime; the best stretch of "
            f"{2 * CHUNK} steps in {args.rounds} interleaved rounds; random weights, vocabulary 65. "
            "Matrix products alone: a torch path's step with nothing but its Linear layers, one row each, "
            "in order: the ceiling torch's own kernels put on that path.\n\n"
            + table(["model", "path", "weights read / char", "bandwidth GB/s", "1-stream limit chars/s",
                     "1 stream chars/s", "of limit",
                     "matrix products alone chars/s (of limit)", "32 streams chars/s", "of 32x limit"], rows))
    scored = [r for m in results for r in m["paths"] if r["val_loss"] is not None]
    if scored:
        ref = scored[0]["val_loss"]
        body += (f"\n\nQuality of each path on `{args.run}` (stateful loss, stepwise, first {args.eval_chars:,} "
                 "validation characters): " + "; ".join(
                     f"`{r['path']}` {r['val_loss']:.4f} ({r['val_loss'] - ref:+.4f})" for r in scored) + ".")
    return body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="384,512", help="hidden sizes of the 2-layer LSTMs (default: %(default)s)")
    ap.add_argument("--run", help="a trained run directory: measured too, with each path's validation loss")
    ap.add_argument("--length", type=int, default=2000, help="timed characters of one stream (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds, the best kept (default: %(default)s)")
    ap.add_argument("--bandwidth-seconds", type=float, default=0.5, help="per array and round (default: %(default)s)")
    ap.add_argument("--eval-chars", type=int, default=20000, help="validation characters scored with --run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch's default")
    ap.add_argument("--json", default="runs/bench/bandwidth.json", help="where the results go (default: %(default)s)")
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, short timings (smoke test)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.length, args.rounds, args.bandwidth_seconds, args.eval_chars = "32", 50, 1, 0.05, 500
    torch.manual_seed(0)
    models = {f"lstm 2x{h}": build_model(ModelConfig(model="lstm", layers=2, hidden=int(h), embed=64, vocab_size=65))
              for h in args.sizes.split(",")}
    if args.run:
        import charnn

        models["run"] = charnn.load(args.run, backend="torch").model
    print(machine(), flush=True)
    results = [measure(name, lm.eval(), args) for name, lm in models.items()]
    body = markdown(results, args)
    print(body)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "results": results}, indent=1) + "\n")
    print(f"wrote {out}")
    if args.write:
        append_section("Sampling against the memory-bandwidth limit", body)


if __name__ == "__main__":
    main()
