"""AWD-LSTM's regularisers on a charnn run: weight drop and variational (locked) dropout.

    taskset -c 0 python benchmarks/dropout_trial.py --variant weight-drop:0.25 --out runs/wd -- \\
        --preset cpu-10min --threads 1 &
    taskset -c 1 python benchmarks/dropout_trial.py --variant none --out runs/plain -- \\
        --preset cpu-10min --threads 1 &

Everything after `--` is `charnn train` settings (as flags). The variant changes the forward
pass of the torch LSTM core while training only (evaluation uses the weights as they are):
- `weight-drop:P` (Merity et al. 2017, DropConnect): each forward pass zeroes a fraction P of
  every layer's hidden-to-hidden weights (the same mask at every step of the batch), the fused
  kernel running on the masked weights;
- `locked` (Gal & Ghahramani 2016, variational dropout): the dropout between the layers and
  before the head draws one mask per sequence of the batch, the same at every step, instead of
  a new one at every character (the layers run one at a time for that);
- `none`: the run as charnn makes it.
Run two variants side by side, one core each (taskset), so that both see the same load on a
shared machine. Prints one JSON line: the variant, steps, chars/s, and the windows loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn import functional as F

from charnn.models.fused import TorchCore
from charnn.models.lm import CharLM
from charnn.train.loop import Trainer
from common import machine, train_config, windows_loss


def weight_drop(p: float):
    plain = TorchCore.forward

    def forward(self, x, state=None):
        if not self.training:
            return plain(self, x, state)
        dropped = {f"weight_hh_l{k}": F.dropout(getattr(self.rnn, f"weight_hh_l{k}"), p, True)
                   for k in range(self.layers)}
        return torch.func.functional_call(self.rnn, dropped, (x, state))

    TorchCore.forward = forward


def locked_mask(y: torch.Tensor, p: float) -> torch.Tensor:
    """One dropout mask per sequence (B, 1, H), scaled as dropout scales."""
    return torch.empty_like(y[:, :1]).bernoulli_(1 - p) / (1 - p)


def locked() -> None:
    plain_core, plain_lm = TorchCore.forward, CharLM.forward

    def core_forward(self, x, state=None):
        q = self.rnn.dropout
        if not (self.training and self.kind == "lstm" and q > 0):
            return plain_core(self, x, state)
        h0, c0 = state if state is not None else self.initial_state(x.shape[0])
        hs, cs = [], []
        for k in range(self.layers):
            if k:
                x = x * locked_mask(x, q)
            w = [getattr(self.rnn, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            # torch.nn.LSTM's own call, one layer at a time, without its per-step dropout
            x, h, c = torch._VF.lstm(x, (h0[k:k + 1], c0[k:k + 1]), w, True, 1, 0.0, True, False, True)
            hs.append(h)
            cs.append(c)
        return x, (torch.cat(hs), torch.cat(cs))

    def lm_forward(self, ids, state=None):
        if not (self.training and self.drop.p > 0):
            return plain_lm(self, ids, state)
        y, state = self.core(self.encode(ids), state)
        return self.head(y * locked_mask(y, self.drop.p)), state

    TorchCore.forward, CharLM.forward = core_forward, lm_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True, help="none, locked, or weight-drop:P")
    ap.add_argument("--out", required=True)
    ap.add_argument("train", nargs=argparse.REMAINDER, help="-- then charnn train flags")
    args = ap.parse_args()
    if args.variant == "locked":
        locked()
    elif args.variant.startswith("weight-drop:"):
        weight_drop(float(args.variant.split(":", 1)[1]))
    elif args.variant != "none":
        ap.error(f"--variant must be none, locked or weight-drop:P, got {args.variant!r}")
    flags, (model_config, cfg) = train_config(args.train, args.out)
    summary = Trainer(model_config, cfg, progress=False).run()
    print(json.dumps({"variant": args.variant, "settings": flags, "steps": summary.step,
                      "chars_per_s": round(summary.chars_per_s), "stateful": round(summary.val_loss, 4),
                      "windows": round(windows_loss(Path(args.out)), 4), "machine": machine()}))


if __name__ == "__main__":
    main()
