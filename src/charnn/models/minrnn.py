"""minGRU and minLSTM: recurrences that train in parallel over time and sample in O(1) per step.

Feng, Tung, Ahmed, Bengio, Hajimirsadeghi (2024), "Were RNNs All We Needed?", arXiv 2410.01201.
The paper strips GRU and LSTM down until their gates depend on the current input only
(Section 3.1.2 for minGRU, 3.2.2 for minLSTM):

    minGRU   z_t  = sigmoid(Linear(x_t))                 h~_t = g(Linear(x_t))
             h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t
    minLSTM  f_t  = sigmoid(Linear(x_t))   i_t = sigmoid(Linear(x_t))   h~_t = g(Linear(x_t))
             f'_t = f_t / (f_t + i_t)      i'_t = i_t / (f_t + i_t)
             h_t  = f'_t * h_{t-1} + i'_t * h~_t

where g(x) = x + 1/2 for x >= 0 and sigmoid(x) below (Appendix B.3: it keeps h~ positive so
that the log-space scan can take its logarithm; we use it on every path so all paths compute
one function). Both are one linear recurrence h_t = a_t * h_{t-1} + b_t with
a_t = sigmoid(r_t) and b_t = sigmoid(-r_t) * g(v_t), where r_t is the log-odds of keeping the
old state: r = -k for minGRU (k the gate pre-activation), and for minLSTM
r = log f - log i = softplus(-k_i) - softplus(-k_f), which is the paper's normalised f' written
stably (its log-space code, Appendix B.2, computes the same difference of softpluses).

Because a and b depend on x only, one matrix product computes them for every time step, and
the recurrence is then a scan of element-wise multiply-adds. Two ways to run that scan:

- "loop" (the default on CPU): time-major, one fused multiply-add per step over all B x H
  units, in a custom autograd function whose backward is the reverse recurrence
  (dL/dh_{t-1} += a_t * dL/dh_t), so no per-step graph is built. It does the least work, is
  exact (a convex combination: |h| never exceeds the largest |h~|) and on 2 CPU cores it is
  several times faster than the log-space scan, which spends exp/log/logcumsumexp on every
  element (benchmarks/minrnn_speed.py measures both).
- "log" (the default elsewhere): the paper's parallel scan in log space (Section 3.3 and
  Appendix B.1): h_t = exp(a*_t + logcumsumexp(log b - a*)_t) with a* = cumsum(log a). It is
  O(log T) deep on a GPU. In float32 the two big terms cancel when the gates are near 0 for
  long stretches, so it runs in chunks of LOG_CHUNK steps carrying h between them.

The one-step path (sampling, CharLM.step) is the recurrence itself: O(1) per character.

Two ways to stack layers (ModelConfig.block):

- "plain": layer l's states are layer l+1's inputs, dropout in between, as torch.nn.GRU
  stacks its layers; `hidden` is the state size.
- "residual": the paper's language model (Section 4.3 "Language Modelling" and its appendix,
  and the authors' code, BorealisAI/minRNNs models/model.py): each layer is

      x = x + Conv(x)                       optional short causal convolution (conv > 0)
      x = x + Out(minRNN(RMSNorm(x)))       minRNN with state size expand * hidden
      x = x + MLP(RMSNorm(x))               Linear(hidden, mlp * hidden), GELU, Linear back

  then a final RMSNorm; `hidden` is the width of the residual stream.

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
import torch.nn.functional as F
from torch import nn

KINDS = ("gru", "lstm")
BLOCKS = ("plain", "residual")
SCANS = ("auto", "loop", "log")
LOG_CHUNK = 256  # steps per log-space scan; bounds the cancellation error in float32


# --- the candidate activation (Appendix B.3) -------------------------------------------------
def g(x: torch.Tensor) -> torch.Tensor:
    """x + 1/2 for x >= 0, sigmoid(x) below: continuous, positive, linear for large x."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def _g_prime(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return torch.where(x >= 0, torch.ones_like(x), s * (1 - s))


def _coefficients(r: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a = sigmoid(r), g(v), b = (1 - a) * g(v); all (T, B, S)."""
    a = torch.sigmoid(r)
    gv = g(v)
    return a, gv, torch.addcmul(gv, a, gv, value=-1.0)


def _recur(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t for t = 0..T-1, time-major: (T, B, S) -> (T, B, S)."""
    out = torch.empty_like(b)
    h = h0
    for t in range(b.shape[0]):
        h = torch.addcmul(b[t], a[t], h, out=out[t])
    return out


class _LoopScan(torch.autograd.Function):
    """The sequential scan with a hand-written backward: two multiply-adds per step in all."""

    @staticmethod
    def forward(ctx, r, v, h0):
        a, gv, b = _coefficients(r, v)
        out = _recur(a, b, h0)
        ctx.save_for_backward(a, v, gv, out, h0)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        a, v, gv, out, h0 = ctx.saved_tensors
        T = out.shape[0]
        # dL/dh_t, accumulated backwards: gh_t = grad_out_t + a_{t+1} * gh_{t+1}.
        gh = torch.empty_like(out)
        acc = gh[T - 1]
        acc.copy_(grad_out[T - 1])
        for t in range(T - 2, -1, -1):
            acc = torch.addcmul(grad_out[t], a[t + 1], acc, out=gh[t])
        h_prev = torch.cat([h0[None].to(out.dtype), out[:-1]])  # (T, B, S)
        # h_t = a h_{t-1} + (1 - a) g(v):  dh/da = h_{t-1} - g(v),  dh/dg = 1 - a.
        one_minus_a = 1 - a
        grad_r = gh * (h_prev - gv) * a * one_minus_a  # da/dr = a (1 - a)
        grad_v = gh * one_minus_a * _g_prime(v)
        grad_h0 = a[0] * gh[0]
        return grad_r, grad_v, grad_h0


def scan_loop(r: torch.Tensor, v: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The minRNN recurrence by a sequential scan. r, v: (T, B, S); h0: (B, S) -> (T, B, S)."""
    if torch.is_grad_enabled() and (r.requires_grad or v.requires_grad or h0.requires_grad):
        return _LoopScan.apply(r, v, h0)
    a, _, b = _coefficients(r, v)
    return _recur(a, b, h0)


def scan_log(r: torch.Tensor, v: torch.Tensor, h0: torch.Tensor, chunk: int = LOG_CHUNK) -> torch.Tensor:
    """The same recurrence by the paper's log-space parallel scan (Appendix B.1), in chunks.

    Within a chunk, h_t = A_t h0 + sum_{s<=t} (A_t / A_s) b_s with A_t = prod_{s<=t} a_s;
    the sum is exp(a*_t + logcumsumexp(log b - a*)_t), a* = cumsum(log a). The h0 term is
    kept apart, so h0 may be zero or negative.
    """
    log_a = -F.softplus(-r)  # log sigmoid(r)
    log_b = -F.softplus(r) + log_g(v)  # log (sigmoid(-r) g(v))
    outs = []
    h = h0
    for s in range(0, r.shape[0], chunk):
        a_star = torch.cumsum(log_a[s : s + chunk], 0)  # (C, B, S)
        y = torch.exp(a_star + torch.logcumsumexp(log_b[s : s + chunk] - a_star, 0))
        y = y + torch.exp(a_star) * h
        outs.append(y)
        h = y[-1]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


SCAN_FUNCTIONS = {"loop": scan_loop, "log": scan_log}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: gates and scans never run in bfloat16 / float16."""
    return torch.promote_types(dtype, torch.float32)


# --- one recurrent layer ------------------------------------------------------------------------
class MinCell(nn.Module):
    """x (T, B, D) -> h (T, B, S): one minGRU or minLSTM layer (Sections 3.1.2 / 3.2.2)."""

    def __init__(self, kind: str, input_size: int, state_size: int) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.state_size = kind, state_size
        # One product for all gates and the candidate: [k, v] (minGRU) or [k_f, k_i, v] (minLSTM).
        self.proj = nn.Linear(input_size, (2 if kind == "gru" else 3) * state_size)

    def keep_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r (log-odds of keeping h_{t-1}) and v (the candidate's pre-activation)."""
        pre = self.proj(x)
        pre = pre.to(_compute_dtype(pre.dtype))  # (T, B, n*S)
        if self.kind == "gru":
            k, v = pre.chunk(2, dim=-1)
            return -k, v  # 1 - z = sigmoid(-k)
        k_f, k_i, v = pre.chunk(3, dim=-1)
        # log f' - log i' = log f - log i: the normalised gates of Section 3.2.2, stably.
        return F.softplus(-k_i) - F.softplus(-k_f), v

    def forward(self, x: torch.Tensor, h0: torch.Tensor, scan: str) -> torch.Tensor:
        r, v = self.keep_logits(x)
        return SCAN_FUNCTIONS[scan](r, v, h0.to(r.dtype))


class CausalConv(nn.Module):
    """A short causal depthwise convolution over time, then a pointwise channel mix.

    As in the authors' code (CausalDepthWiseConv1d). Time-major: x (T, B, D) and the last
    K - 1 inputs `past` (K - 1, B, D) -> y (T, B, D) and the new `past`.
    """

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        bound = 1 / math.sqrt(kernel)  # nn.Conv1d's default init for a depthwise kernel
        self.weight = nn.Parameter(torch.empty(dim, kernel).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.mix = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T, K = x.shape[0], self.kernel
        xp = torch.cat([past.to(x.dtype), x])  # (K - 1 + T, B, D)
        y = torch.addcmul(self.bias, xp[K - 1 :], self.weight[:, K - 1])
        for k in range(K - 1):
            y = torch.addcmul(y, xp[k : k + T], self.weight[:, k])
        return self.mix(y), xp[T:]


class ResidualBlock(nn.Module):
    """One layer of the paper's language model: [conv], RMSNorm -> minRNN -> Linear, RMSNorm -> MLP."""

    def __init__(self, kind: str, dim: int, state_size: int, mlp_size: int, conv: int, dropout: float) -> None:
        super().__init__()
        self.conv = CausalConv(dim, conv) if conv else None
        self.norm_rnn = nn.RMSNorm(dim)
        self.cell = MinCell(kind, dim, state_size)
        self.out = nn.Linear(state_size, dim)
        if mlp_size:
            self.norm_mlp = nn.RMSNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp_size), nn.GELU(), nn.Linear(mlp_size, dim))
        else:
            self.norm_mlp = self.mlp = None
        self.drop = nn.Dropout(dropout)

    def forward(self, x, h0, past, scan):
        # x (T, B, D) -> x (T, B, D), h_T (B, S), the conv's new past (K - 1, B, D) or None
        if self.conv is not None:
            c, past = self.conv(x, past)
            x = x + c
        h = self.cell(self.norm_rnn(x), h0, scan)  # (T, B, S)
        x = x + self.drop(self.out(h.to(x.dtype)))
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm_mlp(x)))
        return x, h[-1], past


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
        block: str = "plain",
        expand: float = 1.0,
        mlp: float = 0.0,
        conv: int = 0,
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
            self.norm = nn.RMSNorm(hidden)

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
        x = x.transpose(0, 1)  # (T, B, D): the scan steps through contiguous time slices
        finals, pasts = [], []
        if self.block == "plain":
            for i, cell in enumerate(self.cells):
                if i:
                    x = self.drop(x)
                x = cell(x, h0[i], scan)  # (T, B, H)
                finals.append(x[-1])
        else:
            if self.inp is not None:
                x = self.inp(x)  # (T, B, H)
            # The residual stream stays in the weights' dtype under autocast: the blocks'
            # bfloat16 outputs are added to it, never the other way round.
            x = x.to(self.norm.weight.dtype)
            for i, block in enumerate(self.blocks):
                past = c0[i].transpose(0, 1) if self.conv else None  # (K - 1, B, H)
                x, h_last, past = block(x, h0[i], past, scan)
                finals.append(h_last)
                if self.conv:
                    pasts.append(past.transpose(0, 1))
            x = self.norm(x)
        w_dtype = h0.dtype
        h = torch.stack(finals).to(w_dtype)  # (layers, B, S)
        new_state = (h, torch.stack(pasts).to(w_dtype)) if self.conv else h
        return x.transpose(0, 1), new_state  # (B, T, H)


def mingru(input_size: int, hidden: int, layers: int, dropout: float, **options) -> MinRNN:
    return MinRNN("gru", input_size, hidden, layers, dropout, **options)


def minlstm(input_size: int, hidden: int, layers: int, dropout: float, **options) -> MinRNN:
    return MinRNN("lstm", input_size, hidden, layers, dropout, **options)
