"""Every unit of every layer at every position: what `charnn cells` records.

CharLM.forward returns the top layer's outputs and the final state; asking what the cells
remember needs the state of every layer after every character, and an LSTM's cell c too
(nn.LSTM returns c only at the end). `Tracer(model)(ids, state)` runs the model and returns
the logits and new state that `model(ids, state)` returns (tested, for every core), and
beside them one (B, T, units) tensor per group of units, named in `Tracer.groups`:

- rnn, lstm, gru (torch's fused modules or the scratch cells of scratch.py): layer by layer,
  the input projection of all positions in one product, then the recurrence one step at a
  time with the scratch cell's own equations (parity-tested against torch's kernels), which
  keeps h, and c for the LSTM, at every step. Groups: "layer 1 h", "layer 1 c", ...
- mingru, minlstm: a forward hook on each layer's MinCell catches its states h (B, T, S) as
  the ordinary forward pass computes them. Groups: "layer 1 h", ... (S = the state size).

Imports only this package and torch.
"""

from __future__ import annotations

import torch

from charnn.errors import CharnnError
from charnn.models import fused, minrnn, scratch
from charnn.models.lm import CharLM

_SCRATCH_CELLS = {"rnn": scratch.ElmanCell, "lstm": scratch.LSTMCell, "gru": scratch.GRUCell}


def _scratch_copy(core: fused.TorchCore, k: int) -> torch.nn.Module:
    """Layer k of a fused torch core as a scratch cell with the same weights."""
    rnn = core.rnn
    w_ih = getattr(rnn, f"weight_ih_l{k}")
    cell = _SCRATCH_CELLS[core.kind](w_ih.shape[1], core.hidden).to(device=w_ih.device, dtype=w_ih.dtype)
    cell.load_state_dict({
        "i2h.weight": w_ih, "i2h.bias": getattr(rnn, f"bias_ih_l{k}"),
        "h2h.weight": getattr(rnn, f"weight_hh_l{k}"), "h2h.bias": getattr(rnn, f"bias_hh_l{k}"),
    })
    return cell.eval()


class Tracer:
    """Runs a CharLM and keeps every unit of every layer at every position (inference only)."""

    def __init__(self, model: CharLM) -> None:
        self.model = model
        core = model.core
        if isinstance(core, fused.TorchCore):
            self.kind = "classic"
            self.cells = [_scratch_copy(core, k) for k in range(core.layers)]
            self.lstm = core.kind == "lstm"
        elif isinstance(core, scratch.ScratchCore):
            self.kind = "classic"
            self.cells = list(core.cells)
            self.lstm = core.is_lstm
        elif isinstance(core, minrnn.MinRNN):
            self.kind = "min"
            self.cells = list(core.cells) if core.block == "plain" else [b.cell for b in core.blocks]
            self.lstm = False
        else:
            raise CharnnError(f"charnn cells cannot record the units of a {type(core).__name__} core; "
                              f"it reads rnn, lstm, gru (fused or scratch), mingru and minlstm")

    @property
    def groups(self) -> list[tuple[str, int]]:
        """(name, units) of each group, in the order __call__ returns them."""
        out = []
        for k, cell in enumerate(self.cells, 1):
            size = cell.state_size if self.kind == "min" else cell.hidden
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
            xi = cell.i2h(x)  # (B, T, G*H): the input's share of every gate, all positions at once
            hs, cs = [], []
            for t in range(xi.shape[1]):
                s = cell.step(xi[:, t], s)
                if self.lstm:
                    hs.append(s[0])
                    cs.append(s[1])
                else:
                    hs.append(s)
            x = torch.stack(hs, dim=1)  # (B, T, H): the next layer's input (no dropout: inference)
            traces.append(x)
            if self.lstm:
                traces.append(torch.stack(cs, dim=1))
            finals.append(s)
        if self.lstm:
            new_state = (torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))
        else:
            new_state = torch.stack(finals)  # (layers, B, H)
        return model.head(x), new_state, [t.float() for t in traces]
