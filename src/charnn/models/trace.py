"""Every unit of every layer at every position: what `charnn cells` records.

CharLM.forward returns the top layer's outputs and the final state; asking what the cells
remember needs the state of every layer after every character, and an LSTM's cell c too
(nn.LSTM returns c only at the end). `Tracer(model)(ids, state)` runs the model and returns
the logits and new state that `model(ids, state)` returns (tested, for every core), and
beside them one (B, T, units) tensor per group of units, named in `Tracer.groups`:

- rnn, lstm, gru (torch's fused modules): layer by layer through a one-layer copy of the
  fused module, which returns h at every position; an LSTM's c is then recomputed from those:
  its gates depend only on x_t and h_{t-1}, both known now, so all of them take two matrix
  products, and c_t = f_t c_{t-1} + i_t g_t is a loop of element-wise steps.
  Groups: "layer 1 h", "layer 1 c", ...
- rnn-, lstm-, gru-scratch: the scratch cells stepped one position at a time with their own
  equations, keeping h (and c) at every step.
- mingru, minlstm: a forward hook on each layer's MinCell catches its states h (B, T, S) as
  the ordinary forward pass computes them. Groups: "layer 1 h", ... (S = the state size).

Imports only this package and torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from charnn.errors import CharnnError
from charnn.models import fused, minrnn, scratch
from charnn.models.lm import CharLM

_SCRATCH_CELLS = {"rnn": scratch.ElmanCell, "lstm": scratch.LSTMCell, "gru": scratch.GRUCell}


def _one_layer(core: fused.TorchCore, k: int) -> torch.nn.RNNBase:
    """Layer k of a fused torch core as a one-layer module of the same kind and weights."""
    rnn = core.rnn
    w_ih = getattr(rnn, f"weight_ih_l{k}")
    layer = type(rnn)(w_ih.shape[1], core.hidden, 1, batch_first=True).to(device=w_ih.device, dtype=w_ih.dtype)
    layer.load_state_dict({f"{name}_l0": getattr(rnn, f"{name}_l{k}")
                           for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    return layer.eval()


def _lstm_cells(layer: torch.nn.LSTM, x: torch.Tensor, h: torch.Tensor, h0: torch.Tensor,
                c0: torch.Tensor) -> torch.Tensor:
    """An LSTM layer's cells c (B, T, H) from its input x (B, T, D), its outputs h (B, T, H)
    and its initial state h0, c0 (B, H), with the equations of scratch.LSTMCell."""
    h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1)  # (B, T, H)
    gates = F.linear(x, layer.weight_ih_l0, layer.bias_ih_l0) + F.linear(h_prev, layer.weight_hh_l0, layer.bias_hh_l0)
    i, f, g, _ = gates.chunk(4, dim=-1)  # 4 x (B, T, H), torch's gate order
    f, update = torch.sigmoid(f), torch.sigmoid(i) * torch.tanh(g)
    cs, c = torch.empty_like(update), c0
    for t in range(x.shape[1]):
        c = torch.addcmul(update[:, t], f[:, t], c)
        cs[:, t] = c
    return cs


class Tracer:
    """Runs a CharLM and keeps every unit of every layer at every position (inference only)."""

    def __init__(self, model: CharLM) -> None:
        self.model = model
        core = model.core
        if isinstance(core, fused.TorchCore):
            self.kind, self.lstm = "fused", core.kind == "lstm"
            self.cells = [_one_layer(core, k) for k in range(core.layers)]
            self.sizes = [core.hidden] * core.layers
        elif isinstance(core, scratch.ScratchCore):
            self.kind, self.lstm = "scratch", core.is_lstm
            self.cells = list(core.cells)
            self.sizes = [core.hidden] * core.layers
        elif isinstance(core, minrnn.MinRNN):
            self.kind, self.lstm = "min", False
            self.cells = list(core.cells) if core.block == "plain" else [b.cell for b in core.blocks]
            self.sizes = [core.state_size] * core.layers
        else:
            raise CharnnError(f"charnn cells cannot record the units of a {type(core).__name__} core; "
                              f"it reads rnn, lstm, gru (fused or scratch), mingru and minlstm")

    @property
    def groups(self) -> list[tuple[str, int]]:
        """(name, units) of each group, in the order __call__ returns them."""
        out = []
        for k, size in enumerate(self.sizes, 1):
            out.append((f"layer {k} h", size))
            if self.lstm:
                out.append((f"layer {k} c", size))
        return out

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, state=None):
        """ids (B, T) -> logits (B, T, V), the new state, [one (B, T, units) tensor per group]."""
        if self.kind == "min":
            return self._min(ids, state)
        return self._classic(ids, state)

    def _min(self, ids, state):
        caught: list[torch.Tensor] = []
        hooks = [cell.register_forward_hook(lambda _m, _i, out: caught.append(out)) for cell in self.cells]
        try:
            logits, state = self.model(ids, state)
        finally:
            for h in hooks:
                h.remove()
        return logits, state, [h.float() for h in caught]  # each (B, T, S)

    def _classic(self, ids, state):
        model = self.model
        x = model.encode(ids)  # (B, T, D)
        if state is None:
            state = model.initial_state(ids.shape[0], ids.device)
        traces, finals = [], []
        for k, cell in enumerate(self.cells):
            s = (state[0][k], state[1][k]) if self.lstm else state[k]  # (B, H)
            if self.kind == "fused":
                h, c, s = self._fused(cell, x, s)
            else:
                h, c, s = self._stepped(cell, x, s)
            traces += [h, c] if self.lstm else [h]
            finals.append(s)
            x = h  # the next layer's input (no dropout: inference)
        if self.lstm:
            new_state = (torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))
        else:
            new_state = torch.stack(finals)  # (layers, B, H)
        return model.head(x), new_state, [t.float() for t in traces]

    def _fused(self, layer, x, s):
        """One fused layer over all positions: h (B, T, H), c (or None) and the final state."""
        if self.lstm:
            h, _ = layer(x, (s[0][None], s[1][None]))
            c = _lstm_cells(layer, x, h, *s)
            return h, c, (h[:, -1], c[:, -1])
        h, _ = layer(x, s[None])
        return h, None, h[:, -1]

    def _stepped(self, cell, x, s):
        """One scratch layer, a step at a time: h (B, T, H), c (or None) and the final state."""
        xi = cell.i2h(x)  # (B, T, G*H): the input's share of every gate, all positions at once
        hs, cs = [], []
        for t in range(xi.shape[1]):
            s = cell.step(xi[:, t], s)
            hs.append(s[0] if self.lstm else s)
            if self.lstm:
                cs.append(s[1])
        return torch.stack(hs, dim=1), torch.stack(cs, dim=1) if self.lstm else None, s
