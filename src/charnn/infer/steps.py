"""Fast one-character steps for sampling and serving.

Sampling spends its whole life in `step(ids (B,), state) -> (logits (B, V), state)`. Through
torch.nn.LSTM a single step costs far more than its arithmetic (the fused kernel's per-call
set-up dominates at T = 1), so for the fused cores this module rebuilds the step from the
same weights with the fewest possible ops:

- layer 0's input projection of every character is precomputed once into a table
  (V, G*H) = E @ W_ih0^T + b, so the first layer costs one lookup and one matmul with W_hh0;
- every deeper layer is one matmul on [x, h] with the input and recurrent weights stacked;
- the head is one more matmul.

Backends (`make_stepper`): "torch" runs that step in PyTorch (float32, exact to rounding);
"native" runs one LSTM stream's step as one call into a small C kernel (infer.native),
compiled on first use, near the memory-bandwidth limit (batches still go to torch);
"onnx" runs the same step graph under ONNX Runtime, whose per-op overhead is lower, and with
`quantize="int8"` its dynamically quantised int8 version (weights int8, activations
quantised on the fly), which reads 4x fewer bytes per character, at a quality cost measured
in BENCHMARKS.md. "torch" with `quantize="int8"` is the same idea in torch itself
(`int8_module`: its dynamically quantised Linear, fbgemm on x86), without ONNX and with
less overhead per step; opt-in, like every int8 path. Priming on a prompt always runs the
model's own fused forward pass, which is fastest for many characters at once.

The ONNX side (export, sessions, the cached export's check) is onnx.py; where the cache lives
is the caller's to say (the run directory's layout belongs to checkpoint.py). May import
errors, models and infer.onnx.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from charnn.errors import CharnnError
from charnn.infer.onnx import (
    cached_session,
    export_onnx,
    onnx_available,
    onnx_session,
    require_onnx,
)
from charnn.models.fused import TorchCore
from charnn.models.lm import CharLM, state_tensors

BACKENDS = ("auto", "torch", "onnx", "native")
QUANTIZE = ("none", "int8")


class FusedStep(nn.Module):
    """The step of a CharLM whose core is torch.nn.RNN / LSTM / GRU, rebuilt for speed.

    Gate layouts follow torch: LSTM (i, f, g, o), GRU (r, z, n), RNN (tanh). Inputs and
    outputs are `ids (B,)` and the state in the core's own shape, so it is interchangeable
    with CharLM.step (and exportable to ONNX as it stands).
    """

    def __init__(self, lm: CharLM) -> None:
        super().__init__()
        core = lm.core
        if not isinstance(core, TorchCore):
            raise TypeError("FusedStep needs a torch.nn RNN/LSTM/GRU core")
        self.kind, self.layers, self.hidden = core.kind, core.layers, core.hidden
        rnn = core.rnn
        H = self.hidden
        kw = {"dtype": rnn.weight_hh_l0.dtype}
        with torch.no_grad():
            inputs = lm.embed.weight if lm.embed is not None else torch.eye(lm.config.vocab_size, **kw)
            w_ih0, b_ih0 = rnn.weight_ih_l0, rnn.bias_ih_l0
            w_hh0, b_hh0 = rnn.weight_hh_l0, rnn.bias_hh_l0
            table = inputs @ w_ih0.T + b_ih0  # (V, G*H): layer 0's input part, per character
            if self.kind == "gru":
                # r and z add the input and recurrent parts; n keeps them apart (n = tanh(i_n + r * h_n)).
                self.register_buffer("table", table.clone())
                self.first = nn.Linear(H, 3 * H, **kw)
                self.first.weight.copy_(w_hh0)
                self.first.bias.copy_(b_hh0)
            else:
                self.register_buffer("table", (table + b_hh0).clone())
                self.first = nn.Linear(H, w_hh0.shape[0], bias=False, **kw)
                self.first.weight.copy_(w_hh0)
            self.deeper = nn.ModuleList()
            for layer in range(1, self.layers):
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
                if self.kind == "gru":
                    # [x, h] -> [r,z (input + recurrent), n input part, n recurrent part]: (2H -> 4H)
                    lin = nn.Linear(2 * H, 4 * H, **kw)
                    w = torch.zeros(4 * H, 2 * H, **kw)
                    w[: 2 * H, :H], w[: 2 * H, H:] = w_ih[: 2 * H], w_hh[: 2 * H]
                    w[2 * H : 3 * H, :H], w[3 * H :, H:] = w_ih[2 * H :], w_hh[2 * H :]
                    b = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :], b_hh[2 * H :]])
                else:
                    lin = nn.Linear(2 * H, w_ih.shape[0], **kw)
                    w, b = torch.cat([w_ih, w_hh], 1), b_ih + b_hh
                lin.weight.copy_(w)
                lin.bias.copy_(b)
                self.deeper.append(lin)
            self.head = nn.Linear(H, lm.head.out_features, **kw)
            self.head.weight.copy_(lm.head.weight)
            self.head.bias.copy_(lm.head.bias)

    def _lstm(self, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def _gru(self, rz: torch.Tensor, n_in: torch.Tensor, n_h: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        r, z = torch.sigmoid(rz).chunk(2, 1)
        n = torch.tanh(n_in + r * n_h)
        return n + z * (h - n)  # (1 - z) * n + z * h

    def forward(self, ids: torch.Tensor, *state: torch.Tensor):
        """ids (B,) and the state tensors -> logits (B, V) and the new state tensors."""
        H = self.hidden
        x_part = self.table[ids]  # (B, G*H)
        if self.kind == "lstm":
            h_all, c_all = state
            hs, cs = [], []
            h, c = self._lstm(x_part + self.first(h_all[0]), c_all[0])
            hs.append(h), cs.append(c)
            for k, lin in enumerate(self.deeper, start=1):
                h, c = self._lstm(lin(torch.cat([h, h_all[k]], 1)), c_all[k])
                hs.append(h), cs.append(c)
            return self.head(h), torch.stack(hs), torch.stack(cs)
        (h_all,) = state
        hs = []
        if self.kind == "gru":
            g = self.first(h_all[0])  # (B, 3H): W_hh0 h + b_hh0
            h = self._gru(x_part[:, : 2 * H] + g[:, : 2 * H], x_part[:, 2 * H :], g[:, 2 * H :], h_all[0])
        else:
            h = torch.tanh(x_part + self.first(h_all[0]))
        hs.append(h)
        for k, lin in enumerate(self.deeper, start=1):
            g = lin(torch.cat([h, h_all[k]], 1))
            if self.kind == "gru":
                h = self._gru(g[:, : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :], h_all[k])
            else:
                h = torch.tanh(g)
            hs.append(h)
        return self.head(h), torch.stack(hs)


class _GenericStep(nn.Module):
    """CharLM.step with flat state tensors in and out (any core), for export."""

    def __init__(self, lm: CharLM) -> None:
        super().__init__()
        self.lm = lm
        self.template = lm.initial_state(1)

    def forward(self, ids: torch.Tensor, *state: torch.Tensor):
        logits, new = self.lm.step(ids, _unflatten(self.template, list(state)))
        return (logits, *state_tensors(new))


def _unflatten(template, tensors: list[torch.Tensor]):
    if isinstance(template, torch.Tensor):
        return tensors.pop(0)
    return tuple(_unflatten(t, tensors) for t in template)


def step_module(lm: CharLM) -> nn.Module:
    """The fastest torch module for one step of `lm`: (ids, *state) -> (logits, *state)."""
    module = FusedStep(lm) if isinstance(lm.core, TorchCore) else _GenericStep(lm)
    return module.eval()


def int8_module(step: FusedStep) -> nn.Module:
    """A copy of `step` whose Linear layers hold int8 weights, one float32 scale per output
    row, run by torch's dynamically quantised linear (fbgemm on x86): the activation is
    quantised on the fly, the products summed in int32 and scaled back to float32. The
    input table, the gates and the state stay float32. A step reads ~4x fewer bytes."""
    try:  # torch.ao.quantization announces its move to torchao: a torch without it says so
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise CharnnError(f"torch {torch.__version__} has no dynamic int8 linear; "
                          f"use --backend onnx --quantize int8") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(step, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


class Stepper:
    """What sampling and serving drive: prime on a prompt, then step one character at a time.

    `__call__(ids (B, P), state)` primes with the model's own fused forward pass;
    `step(ids (B,), state)` runs the fast path of the chosen backend.
    """

    sample_steps = None  # the native kernel's draw-and-step, for sampling.generate

    def __init__(self, lm: CharLM, backend: str = "torch", quantize: str = "none", session=None) -> None:
        self.lm = lm.eval()
        self.device = next(lm.parameters()).device
        self.backend, self.quantize = backend, quantize
        self._template = lm.initial_state(1)
        if backend == "onnx":
            self._session = session if session is not None else onnx_session(export_step_onnx(lm, quantize))
            self._inputs = [i.name for i in self._session.get_inputs()]
        else:
            module = step_module(lm).to(self.device)
            self._module = int8_module(module) if quantize == "int8" else module
        self._native = None
        if backend == "native":  # one stream in C (its own int8 for "int8"); batches in torch
            from charnn.infer.native import NativeLSTMStep

            self._native = NativeLSTMStep(module, quantize)
            self.sample_steps = self._native.sample_steps  # sampling.generate draws in chunks

    def __call__(self, ids: torch.Tensor, state=None):
        return self.lm(ids, state)

    def initial_state(self, batch_size: int):
        return self.lm.initial_state(batch_size)

    def step(self, ids: torch.Tensor, state=None):
        if self._native is not None and state is not None and ids.shape[0] == 1:
            logits, h, c = self._native(ids, *state)  # one LSTM stream: the C kernel, no autograd
            return logits, (h, c)
        return self._step(ids, state)

    @torch.inference_mode()
    def _step(self, ids: torch.Tensor, state=None):
        if state is None:
            state = self.lm.initial_state(ids.shape[0])
        flat = state_tensors(state)
        if self.backend == "onnx":
            feed = {self._inputs[0]: ids.cpu().numpy()}
            for name, t in zip(self._inputs[1:], flat):
                feed[name] = t.detach().float().cpu().contiguous().numpy()
            outs = [torch.from_numpy(o) for o in self._session.run(None, feed)]
        else:
            outs = self._module.forward(ids, *flat)  # no hooks to run: skip nn.Module's call
        return outs[0], _unflatten(self._template, list(outs[1:]))


def export_step_onnx(lm: CharLM, quantize: str = "none", digest: str = "") -> bytes:
    """The one-step function (ids, *state) -> (logits, *state) of `lm` as an ONNX model (bytes).

    `digest` (the SHA-256 of the weights) is recorded in the model (see onnx.export_onnx).
    """
    require_onnx()
    lm = lm.cpu().eval()
    return export_onnx(step_module(lm), state_tensors(lm.initial_state(2)), quantize, digest)


def make_stepper(
    lm: CharLM,
    backend: str = "auto",
    quantize: str = "none",
    cache: Path | None = None,
    digest: str = "",
) -> Stepper:
    """The fastest stepper for `lm` that keeps its quality unless int8 is asked for.

    "native" (opt-in, LSTM, CPU) steps one stream in C (with "int8": its own int8, one scale
    per row, the inputs quantised on the fly), a batch in torch (torch's int8 for "int8").
    auto: ONNX Runtime on CPU when `cache` holds an export (`charnn export`; the same float32
    step with less overhead per call) or int8 is asked for, else the torch fast path; "torch"
    with quantize="int8" is torch's own int8 step (CPU, LSTM/GRU/RNN). An export made here for
    the weights `digest` is written to `cache` for the next load. `backend` and `quantize` are
    among BACKENDS and QUANTIZE (the caller's settings checked them).
    """
    on_cpu = next(lm.parameters()).device.type == "cpu"
    if backend == "auto":
        exported = cache is not None and cache.is_file() and onnx_available()
        backend = "onnx" if on_cpu and (quantize == "int8" or exported) else "torch"
    if quantize == "int8" and backend == "torch" and not (on_cpu and isinstance(lm.core, TorchCore)):
        raise CharnnError("--backend torch --quantize int8 runs an LSTM, GRU or RNN on the CPU; "
                          "use --backend onnx, or --device cpu")
    if backend == "native" and (not on_cpu or not isinstance(lm.core, TorchCore) or lm.core.kind != "lstm"):
        raise CharnnError("--backend native runs one LSTM stream on the CPU; use --backend torch or onnx")
    if backend == "onnx" and not on_cpu:
        raise CharnnError("the onnx backend runs on the CPU; use --device cpu or --backend torch")
    session = None
    if backend == "onnx":
        session = cached_session(lambda: export_step_onnx(lm, quantize, digest), cache, digest)
    return Stepper(lm, backend, quantize, session)
