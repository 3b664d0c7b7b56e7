"""The scans of minGRU and minLSTM (models/minrnn.py): h_t = h_{t-1} + z_t (g(v_t) - h_{t-1}).

Feng et al. (2024), "Were RNNs All We Needed?", arXiv 2410.01201. Because z and g(v) depend
on x only, one matrix product computes them for every time step and the recurrence is a scan
of element-wise operations. Two ways to run that scan:

- "loop" (the default on CPU): through time in cache-sized chunks, one lerp per step over all
  B x S units, in a custom autograd function whose backward is the reverse recurrence
  (dL/dh_{t-1} += (1 - z_t) dL/dh_t), so no per-step graph is built. It does the least work,
  is exact (a convex combination: |h| never exceeds the largest |h~| or |h_0|), and on 2 CPU
  cores it is several times faster than the log-space scan, which spends exp / log /
  logcumsumexp on every element (benchmarks/minrnn_speed.py measures both).
- "log" (the default elsewhere): the paper's parallel scan in log space (Appendix B.1):
  h_t = exp(a*_t + logcumsumexp(log b - a*)_t), a* = cumsum(log (1 - z)), b = z g(v); it is
  O(log T) deep on a GPU. In float32 the two big terms cancel when gates stay near 0 for long
  stretches, so it runs in chunks of LOG_CHUNK steps carrying h between them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("gru", "lstm")
LOG_CHUNK = 256  # steps per log-space scan; bounds the cancellation error in float32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: gates and scans never run in bfloat16 / float16."""
    return torch.promote_types(dtype, torch.float32)


# --- the candidate activation (Appendix B.3) and the gates --------------------------------------
def g(x: torch.Tensor) -> torch.Tensor:
    """x + 1/2 for x >= 0, sigmoid(x) below: continuous, positive, linear for large x."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def split_gates(kind: str, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection (..., n*S) -> r, the log-odds of keeping h_{t-1}, and v, the candidate's
    pre-activation, so that h_t = sigmoid(r) h_{t-1} + sigmoid(-r) g(v). (r = -u.)

    minGRU (Section 3.1): pre = [k, v], 1 - z = sigmoid(-k), so r = -k.
    minLSTM (Section 3.2): pre = [k_f, k_i, v]; f' = f / (f + i) = sigmoid(log f - log i),
    so r = log sigmoid(k_f) - log sigmoid(k_i) = softplus(-k_i) - softplus(-k_f).
    """
    if kind == "gru":
        k, v = pre.chunk(2, dim=-1)
        return -k, v
    k_f, k_i, v = pre.chunk(3, dim=-1)
    return F.softplus(-k_i) - F.softplus(-k_f), v


# --- the sequential scan ------------------------------------------------------------------------
# Element-wise work dominates a minRNN layer on a CPU unless it stays in cache: the scan works
# through time in chunks of about CHUNK_ELEMENTS numbers, copying a chunk of the projection
# time-major into a float32 buffer, computing its gates there in place, stepping the recurrence
# through it, and moving on. The backward pass recomputes the gates chunk by chunk (in reverse)
# instead of storing them: only the projection and the states are kept. Written with the update
# gate z = 1 - a = sigmoid(-r), one step is one lerp: h_t = h_{t-1} + z_t (g(v_t) - h_{t-1}),
# and g(v) = relu(v) + sigmoid(min(v, 0)) is g() without torch.where (~10x slower per element
# here). On 2 cores this runs 2-5x faster than the same arithmetic in whole-tensor autograd ops.
CHUNK_ELEMENTS = 1 << 18


def _chunk_steps(B: int, S: int, T: int) -> int:
    return max(1, min(T, CHUNK_ELEMENTS // max(1, B * S)))


def _gates_in_place(kind: str, P: torch.Tensor, S: int, G: torch.Tensor, mask: torch.Tensor | None):
    """The gates of a float32+ chunk P (c, B, n*S) of the projection, computed in P's memory.

    Returns z = sigmoid(-r), the update gate, and s = sigmoid(min(v, 0)), both (c, B, S);
    G <- g(v) = relu(v) + s; mask <- [v > 0] if given. For minLSTM, P's gate columns are left
    holding -k_f and -k_i (the backward pass needs them).
    """
    v = P[..., P.shape[-1] - S :]
    torch.clamp(v, min=0, out=G)  # relu(v)
    if mask is not None:
        torch.gt(G, 0, out=mask)
    v.clamp_(max=0)
    if kind == "gru":
        P.sigmoid_()  # z = sigmoid(k) and s = sigmoid(min(v, 0)) in one pass
        z = P[..., :S]
    else:
        # z = 1 - f' = i / (f + i) = sigmoid(log i - log f) = sigmoid(softplus(-k_f) - softplus(-k_i))
        neg_k_f, neg_k_i = P[..., :S].neg_(), P[..., S : 2 * S].neg_()
        z = torch.sub(F.softplus(neg_k_f), F.softplus(neg_k_i)).sigmoid_()
        v.sigmoid_()
    G.add_(v)
    return z, v


def _loop_forward(kind: str, pre: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, int]:
    """h_t = h_{t-1} + z_t (g(v_t) - h_{t-1}): pre (B, T, n*S), h0 (B, S) -> (B, T, S)."""
    B, T, n = pre.shape
    S = h0.shape[-1]
    dtype = compute_dtype(pre.dtype)
    out = torch.empty(B, T, S, dtype=dtype, device=pre.device)
    C = _chunk_steps(B, S, T)
    P = torch.empty(C, B, n, dtype=dtype, device=pre.device)
    G = torch.empty(C, B, S, dtype=dtype, device=pre.device)
    h = h0
    for t0 in range(0, T, C):
        c = min(C, T - t0)
        Pc, Gc = P[:c], G[:c]
        Pc.copy_(pre[:, t0 : t0 + c].transpose(0, 1))  # time-major, float32 (bfloat16 under autocast)
        z, _ = _gates_in_place(kind, Pc, S, Gc, None)
        for t in range(c):
            h = torch.lerp(h, Gc[t], z[t], out=out[:, t0 + t])
    return out, C


class _LoopScan(torch.autograd.Function):
    """The sequential scan with a hand-written backward: dL/dh_{t-1} += (1 - z_t) dL/dh_t."""

    @staticmethod
    def forward(ctx, pre, h0, kind):
        out, C = _loop_forward(kind, pre, h0)
        ctx.save_for_backward(pre, out, h0)
        ctx.kind, ctx.C = kind, C
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pre, out, h0 = ctx.saved_tensors
        kind, C = ctx.kind, ctx.C
        B, T, n = pre.shape
        S = out.shape[-1]
        grad_pre = torch.empty_like(pre)
        P, GP = (torch.empty(C, B, n, dtype=out.dtype, device=out.device) for _ in range(2))
        G, A, GH, T1, M = (torch.empty(C, B, S, dtype=out.dtype, device=out.device) for _ in range(5))
        carry = torch.zeros_like(h0)  # (1 - z_{t1}) dL/dh_{t1} from the chunk after this one
        for t0 in reversed(range(0, T, C)):
            c = min(C, T - t0)
            Pc, Gc, Ac, GHc, T1c, Mc, GPc = (x[:c] for x in (P, G, A, GH, T1, M, GP))
            Pc.copy_(pre[:, t0 : t0 + c].transpose(0, 1))
            z, s = _gates_in_place(kind, Pc, S, Gc, Mc)
            torch.sub(1, z, out=Ac)  # 1 - z = dh_t / dh_{t-1}
            # dL/dh_t = grad_out_t + (1 - z_{t+1}) dL/dh_{t+1}, backwards through the chunk
            acc = torch.add(grad_out[:, t0 + c - 1], carry, out=GHc[c - 1])
            for t in range(c - 2, -1, -1):
                acc = torch.addcmul(grad_out[:, t0 + t], Ac[t + 1], acc, out=GHc[t])
            carry = Ac[0] * GHc[0]
            if t0:
                h_prev = out[:, t0 - 1 : t0 + c - 1].transpose(0, 1)  # (c, B, S)
            else:
                h_prev = torch.cat([h0[None].to(out.dtype), out[:, : c - 1].transpose(0, 1)])
            # dL/du = dL/dh (g(v) - h_prev) z (1 - z), for z = sigmoid(u)
            torch.sub(Gc, h_prev, out=T1c)
            T1c.mul_(GHc).mul_(z).mul_(Ac)
            # dL/dv = dL/dh z g'(v), g'(v) = s (1 - s) + 3/4 [v > 0]  (s = 1/2 for v >= 0)
            GHc.mul_(z)
            Mc.mul_(0.75).add_(s).addcmul_(s, s, value=-1)
            torch.mul(GHc, Mc, out=GPc[..., n - S :])
            if kind == "gru":
                GPc[..., :S].copy_(T1c)  # u = k
            else:
                # u = softplus(-k_f) - softplus(-k_i): du/dk_f = -sigmoid(-k_f), du/dk_i = sigmoid(-k_i)
                torch.mul(T1c, Pc[..., :S].sigmoid_(), out=GPc[..., :S]).neg_()
                torch.mul(T1c, Pc[..., S : 2 * S].sigmoid_(), out=GPc[..., S : 2 * S])
            grad_pre[:, t0 : t0 + c].copy_(GPc.transpose(0, 1))
        return grad_pre, carry, None


def scan_loop(kind: str, pre: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The minRNN recurrence by a sequential scan: pre (B, T, n*S), h0 (B, S) -> (B, T, S)."""
    dtype = compute_dtype(pre.dtype)
    h0 = h0.to(dtype)
    if torch.is_grad_enabled() and (pre.requires_grad or h0.requires_grad):
        return _LoopScan.apply(pre, h0, kind)
    if pre.shape[1] == 1:  # one step (sampling): the fewest operations, no buffers
        r, v = split_gates(kind, pre.to(dtype))
        return torch.lerp(h0[:, None], g(v), torch.sigmoid(-r))  # h + z (g(v) - h)
    return _loop_forward(kind, pre, h0)[0]


def scan_log(kind: str, pre: torch.Tensor, h0: torch.Tensor, chunk: int = LOG_CHUNK) -> torch.Tensor:
    """The same recurrence by the paper's log-space parallel scan (Appendix B.1), in chunks.

    Within a chunk, h_t = A_t h0 + sum_{s<=t} (A_t / A_s) b_s with A_t = prod_{s<=t} a_s;
    the sum is exp(a*_t + logcumsumexp(log b - a*)_t), a* = cumsum(log a). The h0 term is
    kept apart, so h0 may be zero or negative.
    """
    r, v = split_gates(kind, pre.to(compute_dtype(pre.dtype)))
    log_a = -F.softplus(-r)  # log sigmoid(r)
    log_b = -F.softplus(r) + log_g(v)  # log (sigmoid(-r) g(v))
    outs = []
    h = h0.to(r.dtype)[:, None]  # (B, 1, S)
    for s in range(0, r.shape[1], chunk):
        a_star = torch.cumsum(log_a[:, s : s + chunk], 1)  # (B, C, S)
        y = torch.exp(a_star + torch.logcumsumexp(log_b[:, s : s + chunk] - a_star, 1))
        y = y + torch.exp(a_star) * h
        outs.append(y)
        h = y[:, -1:]
    return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


SCAN_FUNCTIONS = {"loop": scan_loop, "log": scan_log}
