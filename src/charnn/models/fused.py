"""Recurrent cores on torch.nn.RNN / LSTM / GRU: the fused kernels (oneDNN on CPU, cuDNN on GPU).

State layout (the model contract): `h` of shape (layers, B, hidden) for rnn and gru,
the tuple `(h, c)` of two such tensors for lstm.
"""

from __future__ import annotations

import torch
from torch import nn

TORCH_RNNS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class TorchCore(nn.Module):
    """A stack of `layers` torch recurrent layers, batch-first, dropout between layers."""

    input_weight = "rnn.weight_ih_l0"  # reads the input vector: (gates * H, D), one column per feature

    def __init__(self, kind: str, input_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.kind, self.hidden, self.layers = kind, hidden, layers
        self.rnn = TORCH_RNNS[kind](
            input_size, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )

    def initial_state(self, batch_size: int, device: torch.device | str | None = None):
        w = self.rnn.weight_hh_l0
        h = torch.zeros(self.layers, batch_size, self.hidden, device=device or w.device, dtype=w.dtype)
        return (h, torch.zeros_like(h)) if self.kind == "lstm" else h

    def forward(self, x: torch.Tensor, state=None):
        # x: (B, T, D) -> y: (B, T, H); a missing state is the zero state.
        return self.rnn(x, state)


def rnn(input_size: int, hidden: int, layers: int, dropout: float) -> TorchCore:
    return TorchCore("rnn", input_size, hidden, layers, dropout)


def lstm(input_size: int, hidden: int, layers: int, dropout: float) -> TorchCore:
    return TorchCore("lstm", input_size, hidden, layers, dropout)


def gru(input_size: int, hidden: int, layers: int, dropout: float) -> TorchCore:
    return TorchCore("gru", input_size, hidden, layers, dropout)
