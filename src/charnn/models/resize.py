"""Moving a trained model to a larger vocabulary: the weight surgery of `--vocab extend`.

A parent model reads and predicts V tokens; the fine-tuned one reads and predicts V' >= V,
every parent token at a position of its own and V' - V tokens new (data/vocab.py's
fine_tune_vocab and positions_in say which goes where). Only the weights with one slice
per token change (CharLM.token_axes): the input's (the embedding's rows, or the columns of
the core weight that reads a one-hot input) and the head's (its rows and its bias). Every
parent slice moves, unchanged, to its token's new position; a new token gets

- an input slice that is the mean of the parent's: it reads as an "average" character, so
  its first occurrences move the state the way characters in general do, not somewhere the
  parent never went (a random row could, and an all-zero one reads like no character);
- head weights of 0 and a bias NEW_TOKEN_MARGIN nats below the parent's lowest bias: its
  logit is a constant, far below where the parent puts the tokens it expects.

So on a text of parent characters the fine-tuned model at step 0 computes exactly the
parent's logits for the parent's tokens (the same distribution over them), and the new
tokens together take a tiny probability from them (tests/test_finetune.py measures it for
every core). A zero head row still learns as fast as any: its gradient is (p - y) h, the
same as a trained row's.

Imports torch and the model contract (lm.py); nothing of data/ (a sibling package).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from charnn.errors import CharnnError
from charnn.models.lm import CharLM

# How far (nats) below the parent's lowest output bias a new token's bias starts: low enough
# that the parent's predictions are essentially unchanged, high enough that the new characters
# are learned in a few dozen steps. Measured on the default run (LSTM 2 x 384, tiny Shakespeare;
# its biases lie within +-0.1) extended by the 33 new characters of 20 KB of Python's
# documentation, over its validation text: margin 10 gives the new tokens a total probability
# of 5e-6 on average (1e-4 at most) but costs 15.8 nats where a new character comes; margin 5
# gives 7e-4 on average (1.6e-2 at most; +0.0006 nats on the old characters' loss), 10.8 nats,
# and after 150 steps of fine-tuning a validation loss of 2.014 against margin 10's 2.053;
# margin 3: 1.984, but its new tokens take several percent where the parent was unsure.
NEW_TOKEN_MARGIN = 5.0


def remap_vocab(state: dict[str, torch.Tensor], positions: Sequence[int], model: CharLM) -> dict[str, torch.Tensor]:
    """The weights for `model` (built for the new vocabulary) made from a parent's `state`:
    parent token i's slices moved to id positions[i], new tokens' slices as the module says,
    every other weight copied. The parent's architecture must be the model's but for the
    vocabulary size."""
    target = model.state_dict()
    V, new_size = len(positions), model.config.vocab_size
    if sorted(set(positions)) != sorted(positions) or not all(0 <= p < new_size for p in positions):
        raise ValueError(f"positions must be {V} distinct ids below {new_size}")
    extra = sorted(set(state) - set(target))
    if extra:  # a one-hot minGRU/minLSTM whose new vocabulary is as large as --hidden has no input map
        raise CharnnError(f"the parent's weights {', '.join(extra)} have no place in a model of {new_size} "
                          f"tokens with this architecture; use --vocab keep")
    moved = torch.as_tensor(list(positions), dtype=torch.long)
    is_new = torch.ones(new_size, dtype=torch.bool)
    is_new[moved] = False
    axes = model.token_axes()
    out = {}
    for name, like in target.items():
        old = state.get(name)
        if old is None and name in axes and like.shape[0] == V:
            # The parent had V == hidden and read its one-hot input as it is: the identity map.
            old = torch.eye(V, dtype=like.dtype)
        if name not in axes:
            if old is None or old.shape != like.shape:
                raise CharnnError(f"the parent's weight {name} does not fit the model (shape "
                                  f"{None if old is None else tuple(old.shape)}, expected {tuple(like.shape)})")
            out[name] = old.clone()
            continue
        axis = axes[name]
        if old.shape[axis] != V:
            raise ValueError(f"{name} has {old.shape[axis]} slices along axis {axis}, the parent's vocabulary {V}")
        old = old.movedim(axis, 0)  # (V, ...): one slice per token
        new = torch.empty((new_size, *old.shape[1:]), dtype=old.dtype)
        new[moved] = old
        if name == "head.bias":
            new[is_new] = old.min() - NEW_TOKEN_MARGIN
        elif name == "head.weight":
            new[is_new] = 0.0
        else:  # the input's slice
            new[is_new] = old.mean(0)
        out[name] = new.movedim(0, axis).contiguous()
    return out
