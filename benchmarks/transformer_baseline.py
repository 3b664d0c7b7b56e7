"""A small transformer baseline in the same run: nanoGPT's CPU recipe for tiny Shakespeare
(4 layers, 4 heads, 128 wide, 64-character context, batch 12, AdamW 1e-3 with warmup and
cosine decay, 2,000 iterations), written here from its published settings, against a charnn
preset trained for the same wall time, both scored on the same validation split.

    python benchmarks/transformer_baseline.py                 # nanoGPT recipe vs cpu-2min
    python benchmarks/transformer_baseline.py --quick

A transformer with a 64-character context can only be scored on windows of at most 64
characters, so both models are scored with 64-character windows (every position, fresh
context per window: nanoGPT's own val loss), and charnn also with its usual 256.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from charnn.data.corpus import bundled_text, split_text
from charnn.data.vocab import Vocab
from common import append_section, table


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, C / heads)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, layers: int = 4, heads: int = 4, width: int = 128) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in nanoGPT
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def windows_loss(logits_fn, ids: torch.Tensor, window: int, batch: int = 64) -> float:
    n = (len(ids) - 1) // window
    total = 0.0
    with torch.inference_mode():
        for i in range(0, n, batch):
            starts = torch.arange(i, min(n, i + batch)) * window
            chunk = ids[starts[:, None] + torch.arange(window + 1)]
            logits = logits_fn(chunk[:, :-1])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum").item()
    return total / (n * window)


def train_gpt(train: torch.Tensor, iters: int, block: int = 64, batch: int = 12, seconds: float = 0) -> tuple[GPT, int, float]:
    torch.manual_seed(1337)
    model = GPT(int(train.max()) + 1, block)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99), fused=True)
    warmup, min_lr = 100, 1e-4
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    it = 0
    for it in range(iters):
        if seconds and time.perf_counter() - start > seconds:
            break
        lr = 1e-3 * (it + 1) / warmup if it < warmup else min_lr + (1e-3 - min_lr) * 0.5 * (
            1 + math.cos(math.pi * (it - warmup) / (iters - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr
        ix = torch.randint(len(train) - block - 1, (batch,), generator=g)
        chunk = train[ix[:, None] + torch.arange(block + 1)]
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.eval(), it + 1, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-2min")
    ap.add_argument("--iters", type=int, default=2000, help="nanoGPT recipe iterations")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    text = bundled_text()
    vocab = Vocab.from_text(text)
    train_text, val_text = split_text(text, 0.1)
    ids = torch.from_numpy(vocab.encode(text))
    train_ids, val_ids = ids[: len(train_text)], ids[len(train_text):]
    iters = 30 if args.quick else args.iters

    gpt, done, gpt_time = train_gpt(train_ids, iters)
    gpt_loss = windows_loss(gpt, val_ids, 64)
    params = sum(p.numel() for p in gpt.parameters())
    print(f"transformer: {done} iterations in {gpt_time:.0f} s, val loss (64-char windows) {gpt_loss:.4f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        run = f"{tmp}/run"
        cmd = [sys.executable, "-m", "charnn", "train", "--preset", args.preset, "--out", run, "--quiet",
               "--sample-chars", "0", "--max-time", str(max(5.0, gpt_time))]
        if args.quick:
            cmd += ["--hidden", "64", "--layers", "1"]
        start = time.perf_counter()
        summary = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        print(summary, end="", flush=True)
        found = re.search(r"([\d,]+) parameters", summary)
        rnn_params = f"{int(found.group(1).replace(',', '')) / 1e6:.2f} M" if found else "?"
        rnn_time = time.perf_counter() - start
        results = {}
        for window in (64, 256):
            out = subprocess.run([sys.executable, "-m", "charnn", "eval", run, "--protocol", "windows",
                                  "--window", str(window), "--json"], capture_output=True, text=True, check=True)
            results[window] = json.loads(out.stdout)["loss"]
        cfg = json.loads(open(f"{run}/config.json").read())
    m = cfg["model"]
    rows = [
        ["nanoGPT CPU recipe (transformer 4x128, context 64)", f"{params / 1e6:.2f} M", f"{gpt_time:.0f} s ({done} iters)",
         f"{gpt_loss:.4f}", "—"],
        [f"charnn --preset {args.preset} ({m['model']} {m['layers']}x{m['hidden']}), same training time",
         rnn_params, f"{rnn_time:.0f} s wall (training {max(5.0, gpt_time):.0f} s)", f"**{results[64]:.4f}**", f"{results[256]:.4f}"],
    ]
    body = ("Validation loss (nats/char) on tiny Shakespeare's last 10 %, non-overlapping windows from a fresh "
            "context/state, every position scored.\n\n"
            + table(["model", "params", "time", "val loss, 64-char windows", "val loss, 256-char windows"], rows))
    print(body)
    if not args.no_write and not args.quick:
        append_section("Against a small transformer", body)


if __name__ == "__main__":
    main()
