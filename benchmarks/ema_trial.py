"""Weight averaging at the end of a run: one training run that keeps exponential moving averages
(EMA) of its weights beside them, then scores the final weights and each average on the
windows protocol. One run, so the comparison holds the trajectory, the machine's load and the
data order fixed: the difference is the averaging alone.

    python benchmarks/ema_trial.py --out runs/ema --decays 0.99 0.995 0.998 0.999 -- --preset cpu-10min

Everything after `--` is `charnn train` settings (as flags). Prints one JSON line: the final
weights' loss and each average's, with the run's steps and the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from charnn import checkpoint
from charnn.train.loop import Trainer
from common import machine, train_config, windows_loss


class AveragingTrainer(Trainer):
    """The loop unchanged; after every step each average moves toward the weights."""

    decays: tuple[float, ...] = ()

    def train_step(self) -> float:
        loss = super().train_step()
        with torch.no_grad():
            if not hasattr(self, "averages"):
                self.averages = {d: [p.detach().clone() for p in self.model.parameters()] for d in self.decays}
            for d, avg in self.averages.items():
                torch._foreach_lerp_(avg, [p.detach() for p in self.model.parameters()], 1 - d)
        return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--decays", type=float, nargs="+", default=[0.99, 0.995, 0.998, 0.999])
    ap.add_argument("train", nargs=argparse.REMAINDER, help="-- then charnn train flags")
    args = ap.parse_args()
    flags, (model_config, cfg) = train_config(args.train, args.out)
    AveragingTrainer.decays = tuple(args.decays)
    trainer = AveragingTrainer(model_config, cfg, progress=False)
    summary = trainer.run()
    run = Path(args.out)
    result = {"settings": flags, "steps": summary.step, "chars_per_s": round(summary.chars_per_s),
              "final": round(windows_loss(run), 4), "machine": machine()}
    final = [p.detach().clone() for p in trainer.model.parameters()]
    for d, avg in trainer.averages.items():
        twin = run.parent / f"{run.name}-ema{d}"
        shutil.rmtree(twin, ignore_errors=True)
        twin.mkdir()
        for name in (checkpoint.CONFIG, checkpoint.VOCAB):
            shutil.copy(run / name, twin / name)
        with torch.no_grad():
            for p, a in zip(trainer.model.parameters(), avg):
                p.copy_(a)
        checkpoint.save_weights(twin, trainer.model, trainer.vocab, {"step": summary.step, "ema": d})
        result[f"ema{d}"] = round(windows_loss(twin), 4)
    with torch.no_grad():
        for p, f in zip(trainer.model.parameters(), final):
            p.copy_(f)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
