"""Where one stream's sampling time goes: the matrix products, the rest of the torch step,
the Stepper's wrapper, the draw, and the whole loop, each timed apart in one process.

    python benchmarks/sampling_split.py --hidden 384 --threads 2

Random weights of an LSTM 2 x hidden (vocabulary 65, embedding 64), the `torch` path, batch 1.
Each part is the best stretch of 10 calls over --seconds, in interleaved rounds (the same
convention as bandwidth.py), printed in microseconds per character.
"""

from __future__ import annotations

import argparse

import torch

from charnn.infer.sampling import generate, sample_next
from charnn.infer.steps import make_stepper
from charnn.models import ModelConfig, build_model
from common import calls_per_s, machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=384, help="hidden units of the 2-layer LSTM (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch's default")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds, the best kept (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=1.0, help="per part and round (default: %(default)s)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = build_model(ModelConfig(model="lstm", layers=2, hidden=args.hidden, embed=64, vocab_size=65)).eval()
    stepper = make_stepper(lm, "torch")
    module = stepper._module
    linears = [m for m in module.modules() if hasattr(m, "in_features")]
    rows = [torch.randn(1, m.in_features) for m in linears]
    with torch.inference_mode():
        ids, state = torch.tensor([3]), lm.initial_state(1)
        flat = list(state)
        logits, _ = stepper.step(ids, state)
        generator = torch.Generator().manual_seed(0)
        loop = generate(stepper, torch.randint(0, 65, (1, 100)), 10**9, temperature=1.0, seed=0)
        parts = {
            "matrix products": lambda: [m(x) for m, x in zip(linears, rows)],
            "torch step": lambda: module.forward(ids, *flat),
            "Stepper.step": lambda: stepper.step(ids, state),
            "draw": lambda: sample_next(logits, 1.0, 0, 1.0, generator),
            "whole loop": lambda: next(loop),
        }
        best = {name: float("inf") for name in parts}
        for _ in range(args.rounds):
            for name, fn in parts.items():
                best[name] = min(best[name], 1e6 / calls_per_s(fn, args.seconds))
    print(machine())
    print(f"LSTM 2x{args.hidden}, one stream, torch path, us per character: "
          + ", ".join(f"{name} {us:.0f}" for name, us in best.items()))


if __name__ == "__main__":
    main()
