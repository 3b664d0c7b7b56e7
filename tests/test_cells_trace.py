"""models/trace.py: the recording computes what the model computes, and keeps every layer's units."""

import pytest
import torch

from charnn.models import CORES, ModelConfig, build_model
from charnn.models.trace import Tracer


def _model(core: str, **extra):
    torch.manual_seed(0)
    config = ModelConfig(model=core, vocab_size=11, embed=6, hidden=8, layers=2, **extra)
    return build_model(config).double().eval()


CASES = [(core, {}) for core in CORES] + [("mingru", {"block": "plain"}), ("minlstm", {"conv": 0, "expand": 1.5})]


@pytest.mark.parametrize(("core", "extra"), CASES, ids=[f"{c}-{e}" for c, e in CASES])
def test_trace_returns_what_forward_returns(core, extra):
    model = _model(core, **extra)
    tracer = Tracer(model)
    ids = torch.randint(0, 11, (3, 7))
    with torch.no_grad():
        _, state = model(torch.randint(0, 11, (3, 5)))  # a state that is not the zero state
        expected, expected_state = model(ids, state)
    logits, new_state, traces = tracer(ids, state)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-10)
    for a, b in zip(_flat(new_state), _flat(expected_state)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    groups = tracer.groups
    assert [t.shape for t in traces] == [(3, 7, size) for _, size in groups]
    assert all(t.dtype == torch.float32 for t in traces)
    lstm = core.startswith("lstm")
    assert len(groups) == 2 * (2 if lstm else 1)
    # Each layer's units at the last position are that layer's part of the final state.
    h_last = _flat(new_state)[0]  # (layers, B, S)
    h_groups = [t for (name, _), t in zip(groups, traces) if name.endswith(" h")]
    for k, t in enumerate(h_groups):
        torch.testing.assert_close(t[:, -1].double(), h_last[k], rtol=0, atol=1e-6)
    if lstm:
        c_groups = [t for (name, _), t in zip(groups, traces) if name.endswith(" c")]
        for k, t in enumerate(c_groups):
            torch.testing.assert_close(t[:, -1].double(), new_state[1][k], rtol=0, atol=1e-6)


def test_trace_groups_are_named_by_layer():
    assert Tracer(_model("lstm")).groups == [("layer 1 h", 8), ("layer 1 c", 8), ("layer 2 h", 8), ("layer 2 c", 8)]
    assert Tracer(_model("minlstm", expand=1.5)).groups == [("layer 1 h", 12), ("layer 2 h", 12)]


def _flat(state):
    return [state] if isinstance(state, torch.Tensor) else [t for s in state for t in _flat(s)]
