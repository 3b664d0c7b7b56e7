"""From-scratch recurrent cells: the classic Elman RNN, the LSTM and the GRU, written out.

These are the cells the seed notebook built by hand (its Elman cell: `i2h`, `h2h`, tanh,
and an output layer from the hidden state, which here is CharLM's head). They compute
exactly what torch's fused kernels compute, in plain tensor operations one time step at a
time, so you can read, change and instrument every equation; tests/test_scratch.py checks
each against nn.RNNCell / nn.LSTMCell / nn.GRUCell and the multi-layer nn.RNN / nn.LSTM /
nn.GRU with copied weights. They are slower than the fused cores (a Python loop over time).

Each cell holds two linear maps, `i2h` (input -> gates, the torch `weight_ih`/`bias_ih`) and
`h2h` (hidden -> gates, `weight_hh`/`bias_hh`), with the gates stacked in torch's order.
Because `i2h` does not depend on the recurrence, it is applied to the whole sequence in
one matrix product; only `h2h` and the nonlinearities run inside the time loop.

State layout (the model contract, as the fused cores): `h` of shape (layers, B, H) for the
RNN and the GRU, the tuple `(h, c)` of two such tensors for the LSTM.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Cell(nn.Module):
    """One layer: i2h and h2h linear maps producing `gates` stacked pre-activations."""

    gates = 1

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.i2h = nn.Linear(input_size, self.gates * hidden)
        self.h2h = nn.Linear(hidden, self.gates * hidden)
        # torch's recurrent init: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)). For the
        # notebook's cell (input 35 = hidden 35) this equals the nn.Linear default it used.
        bound = 1.0 / math.sqrt(hidden)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, state):
        """One time step: x (B, D) and this layer's state -> the new state (like nn.*Cell)."""
        return self.step(self.i2h(x), state)

    def scan(self, xi: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """All time steps: the input projections xi (B, T, G*H) -> outputs (B, T, H), state."""
        outputs = []
        for t in range(xi.shape[1]):
            state = self.step(xi[:, t], state)
            outputs.append(self.output(state))
        return torch.stack(outputs, dim=1), state  # (B, T, H)

    def step(self, xi: torch.Tensor, state):
        raise NotImplementedError

    @staticmethod
    def output(state) -> torch.Tensor:
        return state


class ElmanCell(_Cell):
    """Elman (1990), "Finding structure in time":  h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    = nn.RNNCell(nonlinearity="tanh"). The output layer y_t = W_ho h_t + b_o is CharLM's head.
    """

    gates = 1

    def step(self, xi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(xi + self.h2h(h))  # (B, H)


class LSTMCell(_Cell):
    """LSTM: Hochreiter & Schmidhuber (1997) with the forget gate of Gers et al. (2000).

    As nn.LSTMCell (gate order i, f, g, o):
        i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)     input gate
        f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)     forget gate
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)        candidate cell
        o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)     output gate
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)
    """

    gates = 4

    def step(self, xi: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, c = state
        i, f, g, o = (xi + self.h2h(h)).chunk(4, dim=-1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    @staticmethod
    def output(state) -> torch.Tensor:
        return state[0]


class GRUCell(_Cell):
    """GRU: Cho et al. (2014), "Learning phrase representations using RNN encoder-decoder".

    As nn.GRUCell (gate order r, z, n); note the reset gate multiplies W_hn h + b_hn, after
    the matrix product (the cuDNN variant torch uses), not h before it as in the paper:
        r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)     reset gate
        z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)     update gate
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn)) candidate
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}
    """

    gates = 3

    def step(self, xi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        xr, xz, xn = xi.chunk(3, dim=-1)  # 3 x (B, H)
        hr, hz, hn = self.h2h(h).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class ScratchCore(nn.Module):
    """A stack of `layers` from-scratch cells, batch-first, dropout between layers (as nn.RNN)."""

    input_weight = "cells.0.i2h.weight"  # reads the input vector: (gates * H, D), as torch's weight_ih_l0

    def __init__(self, cell: type[_Cell], input_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.is_lstm = cell is LSTMCell
        self.cells = nn.ModuleList(cell(input_size if k == 0 else hidden, hidden) for k in range(layers))
        self.drop = nn.Dropout(dropout if layers > 1 else 0.0)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None):
        w = self.cells[0].h2h.weight
        h = torch.zeros(self.layers, batch_size, self.hidden, device=device or w.device, dtype=w.dtype)
        return (h, torch.zeros_like(h)) if self.is_lstm else h

    def forward(self, x: torch.Tensor, state=None):
        # x: (B, T, D) -> y: (B, T, H); a missing state is the zero state.
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        finals = []
        for k, cell in enumerate(self.cells):
            layer_state = (state[0][k], state[1][k]) if self.is_lstm else state[k]  # (B, H)
            if k:
                x = self.drop(x)
            x, layer_state = cell.scan(cell.i2h(x), layer_state)  # (B, T, H)
            finals.append(layer_state)
        if self.is_lstm:
            return x, (torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))
        return x, torch.stack(finals)  # state: (layers, B, H)


def rnn(input_size: int, hidden: int, layers: int, dropout: float) -> ScratchCore:
    return ScratchCore(ElmanCell, input_size, hidden, layers, dropout)


def lstm(input_size: int, hidden: int, layers: int, dropout: float) -> ScratchCore:
    return ScratchCore(LSTMCell, input_size, hidden, layers, dropout)


def gru(input_size: int, hidden: int, layers: int, dropout: float) -> ScratchCore:
    return ScratchCore(GRUCell, input_size, hidden, layers, dropout)
