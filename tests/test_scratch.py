"""The from-scratch cells equal torch's cells and fused layers with copied weights (float64, 1e-6)."""

import pytest
import torch
from torch import nn

from charnn.models import CORES, ModelConfig, build_model, scratch

TORCH_CELLS = {"rnn": (scratch.ElmanCell, nn.RNNCell), "lstm": (scratch.LSTMCell, nn.LSTMCell),
               "gru": (scratch.GRUCell, nn.GRUCell)}
TORCH_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
TOL = {"rtol": 0, "atol": 1e-6}


def copy_cell(ours: scratch._Cell, w_ih, w_hh, b_ih, b_hh) -> None:
    with torch.no_grad():
        ours.i2h.weight.copy_(w_ih)
        ours.i2h.bias.copy_(b_ih)
        ours.h2h.weight.copy_(w_hh)
        ours.h2h.bias.copy_(b_hh)


def random_state(kind: str, *shape):
    h = torch.randn(*shape, dtype=torch.float64)
    return (h, torch.randn_like(h)) if kind == "lstm" else h


@pytest.mark.parametrize("kind", sorted(TORCH_CELLS))
def test_cell_equals_torch_cell(kind):
    torch.manual_seed(0)
    ours_cls, theirs_cls = TORCH_CELLS[kind]
    theirs = theirs_cls(5, 7).double()
    ours = ours_cls(5, 7).double()
    copy_cell(ours, theirs.weight_ih, theirs.weight_hh, theirs.bias_ih, theirs.bias_hh)
    state = random_state(kind, 3, 7)
    for _ in range(4):  # several steps, so errors would compound
        x = torch.randn(3, 5, dtype=torch.float64)
        expected, state_ours = theirs(x, state), ours(x, state)
        if kind == "lstm":
            for a, b in zip(state_ours, expected):
                torch.testing.assert_close(a, b, **TOL)
        else:
            torch.testing.assert_close(state_ours, expected, **TOL)
        state = expected


@pytest.mark.parametrize("kind", sorted(TORCH_LAYERS))
def test_stack_equals_multilayer_torch_layer(kind):
    torch.manual_seed(1)
    layers, B, T, D, H = 3, 2, 9, 4, 6
    theirs = TORCH_LAYERS[kind](D, H, layers, batch_first=True).double()
    ours = CORES[f"{kind}-scratch"](D, H, layers, 0.0).double()
    for k, cell in enumerate(ours.cells):
        copy_cell(cell, *(getattr(theirs, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    x = torch.randn(B, T, D, dtype=torch.float64)
    state = random_state(kind, layers, B, H)
    y_theirs, s_theirs = theirs(x, state)
    y_ours, s_ours = ours(x, state)
    assert y_ours.shape == (B, T, H)
    torch.testing.assert_close(y_ours, y_theirs, **TOL)
    for a, b in zip(*(s if kind == "lstm" else (s,) for s in (s_ours, s_theirs))):
        assert a.shape == (layers, B, H)
        torch.testing.assert_close(a, b, **TOL)
    # Gradients agree too: the written-out equations are the same function, not a look-alike.
    (y_ours.square().sum()).backward()
    (y_theirs.square().sum()).backward()
    torch.testing.assert_close(ours.cells[0].h2h.weight.grad, theirs.weight_hh_l0.grad, **TOL)


@pytest.mark.parametrize("kind", sorted(TORCH_LAYERS))
def test_initial_state_follows_the_weights(kind):
    core = CORES[f"{kind}-scratch"](3, 4, 2, 0.0).double()
    state = core.initial_state(5)
    tensors = state if kind == "lstm" else (state,)
    assert len(tensors) == (2 if kind == "lstm" else 1)
    for t in tensors:
        assert t.shape == (2, 5, 4) and t.dtype == torch.float64 and not t.any()


def test_scratch_model_trains_like_any_core():
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="gru-scratch", vocab_size=7, embed=4, hidden=8, layers=2))
    ids = torch.randint(0, 7, (2, 10))
    logits, _ = model(ids)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dropout_only_between_layers():
    core = CORES["rnn-scratch"](3, 4, 1, 0.5)
    assert core.drop.p == 0.0  # one layer: nothing between layers (as nn.RNN)
    assert CORES["rnn-scratch"](3, 4, 2, 0.5).drop.p == 0.5
