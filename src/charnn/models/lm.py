"""CharLM: input encoding -> recurrent core -> head. The one model contract of charnn.

`CharLM.forward(ids, state)` maps ids (B, T) to raw logits (B, T, V) and the new state.
It never applies a softmax, never flattens, never computes the loss. The state is an
opaque value: a tensor or a tuple of tensors, each with the batch on dimension 1 (as in
torch's (layers, B, H)); the helpers below work on any such shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

State = torch.Tensor | tuple  # (layers, B, ...) tensors, possibly nested in tuples


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state):
    """Apply `fn` to every tensor of a state, keeping its shape of tuples."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    return tuple(map_state(fn, s) for s in state)


def detach_state(state):
    """Cut the graph at a truncated-BPTT window edge."""
    return map_state(torch.Tensor.detach, state)


def state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a state in a fixed order (for saving)."""
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in state_tensors(s)]


def select_state(state, index: torch.Tensor):
    """The rows `index` (K,) of a batched state: (layers, B, ...) -> (layers, K, ...).

    Rows may repeat (one primed prompt fanned out to n streams) or be dropped (finished
    streams leaving the server's shared batch).
    """
    return map_state(lambda t: t.index_select(1, index), state)


def cat_states(states: list):
    """Stack the rows of several states of the same shape of tuples along the batch (dim 1)."""
    if isinstance(states[0], torch.Tensor):
        return torch.cat(states, dim=1)
    return tuple(cat_states([s[i] for s in states]) for i in range(len(states[0])))


IGNORE = -1  # a target that is padding (data/docbatches.py): not scored, 0 under reduction "none"


def char_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in nats per character. reduction: "mean", "sum", or "none" -> (B, T).

    Targets IGNORE are left out (the mean is over the others)."""
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), reduction=reduction,
                           ignore_index=IGNORE)
    return loss.view(targets.shape) if reduction == "none" else loss


class CharLM(nn.Module):
    def __init__(self, config, core: nn.Module) -> None:
        super().__init__()
        self.config = config
        V = config.vocab_size
        self.embed = nn.Embedding(V, config.embed) if config.input == "embedding" else None
        self.core = core
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, V)

    @property
    def input_size(self) -> int:
        return self.config.embed if self.embed is not None else self.config.vocab_size

    def token_axes(self) -> dict[str, int]:
        """The weights with one slice per token, by state_dict name -> that slice's axis: the
        input's (the embedding's rows, or for one-hot input the columns of the core's weight that
        reads it) and the head's (its rows and its bias). Fine-tuning moves these (resize.py)."""
        axes = {}
        if self.embed is not None:
            axes["embed.weight"] = 0
        elif self.core.input_weight is not None:  # None: the one-hot vector is the core's input as it is
            axes[f"core.{self.core.input_weight}"] = 1
        return {**axes, "head.weight": 0, "head.bias": 0}

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (B, T) -> input vectors (B, T, D): a learned embedding, or one-hot as in the tutorial."""
        if self.embed is not None:
            return self.embed(ids)
        return F.one_hot(ids, self.config.vocab_size).to(self.head.weight.dtype)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None):
        """The zero state, on the model's device and in its dtype unless told otherwise."""
        return self.core.initial_state(batch_size, device)

    def forward(self, ids: torch.Tensor, state=None):
        x = self.encode(ids)  # (B, T, D)
        y, state = self.core(x, state)  # (B, T, H)
        return self.head(self.drop(y)), state  # (B, T, V)

    def step(self, ids: torch.Tensor, state=None):
        """One character for each of B streams: ids (B,) -> logits (B, V) and the new state.

        The sampling loop and the server call this once per generated character.
        """
        logits, state = self(ids[:, None], state)  # (B, 1, V)
        return logits[:, 0], state
