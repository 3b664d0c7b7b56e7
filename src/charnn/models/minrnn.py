"""minGRU and minLSTM: recurrences that train in parallel over time and sample in O(1) per step.

Feng, Tung, Ahmed, Bengio, Hajimirsadeghi (2024), "Were RNNs All We Needed?", arXiv 2410.01201
(section numbers below are those of its v2). The paper strips GRU and LSTM down until their
gates depend on the current input only (Section 3.1 for minGRU, 3.2 for minLSTM):

    minGRU   z_t  = sigmoid(Linear(x_t))                 h~_t = g(Linear(x_t))
             h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t
    minLSTM  f_t  = sigmoid(Linear(x_t))   i_t = sigmoid(Linear(x_t))   h~_t = g(Linear(x_t))
             f'_t = f_t / (f_t + i_t)      i'_t = i_t / (f_t + i_t)      (3.2, step 3: the
             h_t  = f'_t * h_{t-1} + i'_t * h~_t                          scale of h is time-free)

where g(x) = x + 1/2 for x >= 0 and sigmoid(x) below (Appendix B.3: it keeps h~ positive so
that the log-space scan can take its logarithm; we use it on every path so that all paths
compute one function). Both are the linear recurrence h_t = h_{t-1} + z_t (g(v_t) - h_{t-1})
with an update gate z_t = sigmoid(u_t): u = k for minGRU (k the gate's pre-activation), and
for minLSTM z = i' = sigmoid(log i - log f), u = softplus(-k_f) - softplus(-k_i), the
normalised gates written stably (the same difference of softpluses as the log-space code).

Because z and g(v) depend on x only, one matrix product computes them for every time step and
the recurrence is a scan of element-wise operations: models/minscan.py holds the two ways to
run it ("loop", the CPU default, and the paper's log-space "log").

The one-step path (sampling, CharLM.step) is the recurrence itself: O(1) per character.

Two ways to stack layers (ModelConfig.block):

- "plain": layer l's states are layer l+1's inputs, dropout in between, as torch.nn.GRU
  stacks its layers; `hidden` is the state size.
- "residual": the paper's language model (the language-modelling experiment of Section 4,
  and the authors' code, github.com/BorealisAI/minRNNs models/model.py): each layer is

      x = x + Conv(x)                       optional short causal convolution (conv > 0)
      x = x + Out(minRNN(Norm(x)))          minRNN with state size expand * hidden
      x = x + MLP(Norm(x))                  Linear(hidden, mlp * hidden), GELU, Linear back

  then a final Norm; `hidden` is the width of the residual stream. Norm is LayerNorm (the
  authors' code offers RMSNorm or BatchNorm): in torch 2.13 on CPU, RMSNorm's backward is
  not fused and a LayerNorm forward + backward is about 6x faster.

State (the model contract: batch on dim 1): h of shape (layers, B, S), S the state size; with
a convolution, the tuple (h, c) where c (layers, B, conv - 1, hidden) holds each layer's last
conv - 1 inputs, so that a sequence cut into TBPTT windows gives the same result as one pass.

Precision: the gates and the scan run in float32 at least. Under bfloat16 autocast the
projections are bfloat16 but sigmoid and the recurrence are not: in bfloat16, a keep-gate of
0.999 would round to 1.0 or 0.996 and long memories would drift.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from charnn.models.minscan import (  # noqa: F401  (KINDS, g and the scans are this module's API too)
    KINDS,
    SCAN_FUNCTIONS,
    compute_dtype,
    g,
    scan_log,
    scan_loop,
    split_gates,
)

BLOCKS = ("plain", "residual")
SCANS = ("auto", "loop", "log")


# --- one recurrent layer ------------------------------------------------------------------------
class MinCell(nn.Module):
    """x (B, T, D) -> h (B, T, S): one minGRU or minLSTM layer (Sections 3.1 / 3.2)."""

    def __init__(self, kind: str, input_size: int, state_size: int) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.state_size = kind, state_size
        # One product for all gates and the candidate: [k, v] (minGRU) or [k_f, k_i, v] (minLSTM).
        self.proj = nn.Linear(input_size, (2 if kind == "gru" else 3) * state_size)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, scan: str) -> torch.Tensor:
        return SCAN_FUNCTIONS[scan](self.kind, self.proj(x), h0)  # (B, T, S)


def _depthwise(xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """xp (B, K - 1 + T, D), weight (D, K), bias (D,) -> y (B, T, D)."""
    K = weight.shape[1]
    T = xp.shape[1] - K + 1
    y = torch.addcmul(bias, xp[:, K - 1 :], weight[:, K - 1])
    for k in range(K - 1):
        y.addcmul_(xp[:, k : k + T], weight[:, k])
    return y


class _DepthwiseConv(torch.autograd.Function):
    """y_t = bias + sum_k w_k * x_{t+k} over a window of K inputs, with a hand-written backward
    (autograd through K shifted slices allocates and copies a full-size gradient per slice)."""

    @staticmethod
    def forward(ctx, xp, weight, bias):
        ctx.save_for_backward(xp, weight)
        return _depthwise(xp, weight, bias)

    @staticmethod
    def backward(ctx, gy):
        xp, weight = ctx.saved_tensors
        K = weight.shape[1]
        T, D = gy.shape[1], gy.shape[-1]
        gy = gy.contiguous()
        grad_xp = torch.zeros_like(xp)
        grad_w = torch.empty_like(weight)
        prod = torch.empty_like(gy)
        for k in range(K):
            grad_xp[:, k : k + T].addcmul_(gy, weight[:, k])
            torch.mul(gy, xp[:, k : k + T], out=prod)
            grad_w[:, k] = prod.view(-1, D).sum(0)
        return grad_xp, grad_w, gy.view(-1, D).sum(0)


class CausalConv(nn.Module):
    """A short causal depthwise convolution over time (each channel its own K-tap filter).

    The optional "short convolution" of the paper's language model; as in Mamba and Griffin
    it mixes time only, the Linear layers after it mix channels. x (B, T, D) and the last
    K - 1 inputs `past` (B, K - 1, D) -> y (B, T, D) and the new `past`.
    """

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        bound = 1 / math.sqrt(kernel)  # nn.Conv1d's default init for a depthwise kernel
        self.weight = nn.Parameter(torch.empty(dim, kernel).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = x.shape[1]
        xp = torch.cat([past.to(x.dtype), x], 1)  # (B, K - 1 + T, D)
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        if torch.is_grad_enabled() and (xp.requires_grad or w.requires_grad):
            return _DepthwiseConv.apply(xp, w, b), xp[:, T:]
        return _depthwise(xp, w, b), xp[:, T:]  # sampling and scoring: no autograd node


class ResidualBlock(nn.Module):
    """One layer of the paper's language model: [conv], Norm -> minRNN -> Linear, Norm -> MLP."""

    def __init__(self, kind: str, dim: int, state_size: int, mlp_size: int, conv: int, dropout: float) -> None:
        super().__init__()
        self.conv = CausalConv(dim, conv) if conv else None
        self.norm_rnn = nn.LayerNorm(dim)
        self.cell = MinCell(kind, dim, state_size)
        self.out = nn.Linear(state_size, dim)
        if mlp_size:
            self.norm_mlp = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp_size), nn.GELU(), nn.Linear(mlp_size, dim))
        else:
            self.norm_mlp = self.mlp = None
        self.drop = nn.Dropout(dropout)

    def forward(self, x, h0, past, scan):
        # x (B, T, D) -> x (B, T, D), h_T (B, S), the conv's new past (B, K - 1, D) or None
        if self.conv is not None:
            c, past = self.conv(x, past)
            x = x + c
        h = self.cell(self.norm_rnn(x), h0, scan)  # (B, T, S)
        x = x + self.drop(self.out(h.to(x.dtype)))
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm_mlp(x)))
        return x, h[:, -1], past


# --- the core ---------------------------------------------------------------------------------
class MinRNN(nn.Module):
    """A stack of minGRU / minLSTM layers obeying the core contract of lm.py.

    `scan` picks the scan for training and scoring: "loop", "log", or "auto" (loop on CPU,
    log elsewhere). All three compute the same function; it is not part of the saved config.
    """

    def __init__(
        self,
        kind: str,
        input_size: int,
        hidden: int,
        layers: int,
        dropout: float,
        *,
        block: str = "residual",  # the defaults are ModelConfig's (tested)
        expand: float = 1.0,
        mlp: float = 2.0,
        conv: int = 4,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.kind, self.block, self.layers, self.hidden = kind, block, layers, hidden
        self.conv = conv if block == "residual" else 0
        self.scan = "auto"
        self.drop = nn.Dropout(dropout)
        if block == "plain":
            self.state_size = hidden
            self.cells = nn.ModuleList(
                MinCell(kind, input_size if i == 0 else hidden, hidden) for i in range(layers)
            )
        else:
            self.state_size = max(1, round(hidden * expand))
            mlp_size = round(hidden * mlp)
            self.inp = nn.Linear(input_size, hidden, bias=False) if input_size != hidden else None
            self.blocks = nn.ModuleList(
                ResidualBlock(kind, hidden, self.state_size, mlp_size, self.conv, dropout)
                for _ in range(layers)
            )
            self.norm = nn.LayerNorm(hidden)

    @property
    def input_weight(self) -> str | None:
        """The weight that reads the input vector, one column per feature; None where the
        input is the residual stream itself (input size = hidden, no input map)."""
        if self.block == "plain":
            return "cells.0.proj.weight"
        return "inp.weight" if self.inp is not None else None

    def _scan_name(self, device: torch.device) -> str:
        if self.scan != "auto":
            return self.scan
        return "loop" if device.type == "cpu" else "log"

    def initial_state(self, batch_size: int, device: torch.device | str | None = None):
        w = next(self.parameters())
        device = device or w.device
        h = torch.zeros(self.layers, batch_size, self.state_size, device=device, dtype=w.dtype)
        if not self.conv:
            return h
        c = torch.zeros(self.layers, batch_size, self.conv - 1, self.hidden, device=device, dtype=w.dtype)
        return h, c

    def forward(self, x: torch.Tensor, state=None):
        # x: (B, T, D) -> y: (B, T, H) and the new state; a missing state is the zero state.
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        h0, c0 = state if self.conv else (state, None)
        scan = self._scan_name(x.device)
        finals, pasts = [], []
        if self.block == "plain":
            for i, cell in enumerate(self.cells):
                if i:
                    x = self.drop(x)
                x = cell(x, h0[i], scan)  # (B, T, H)
                finals.append(x[:, -1])
        else:
            if self.inp is not None:
                x = self.inp(x)  # (B, T, H)
            # The residual stream stays in the weights' dtype under autocast: the blocks'
            # bfloat16 outputs are added to it, never the other way round.
            x = x.to(self.norm.weight.dtype)
            for i, block in enumerate(self.blocks):
                x, h_last, past = block(x, h0[i], c0[i] if self.conv else None, scan)
                finals.append(h_last)
                pasts.append(past)
            x = self.norm(x)
        w_dtype = h0.dtype
        h = torch.stack(finals).to(w_dtype)  # (layers, B, S)
        new_state = (h, torch.stack(pasts).to(w_dtype)) if self.conv else h
        return x, new_state  # (B, T, H)


def mingru(input_size: int, hidden: int, layers: int, dropout: float, **options) -> MinRNN:
    return MinRNN("gru", input_size, hidden, layers, dropout, **options)


def minlstm(input_size: int, hidden: int, layers: int, dropout: float, **options) -> MinRNN:
    return MinRNN("lstm", input_size, hidden, layers, dropout, **options)
