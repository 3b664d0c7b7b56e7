"""The faster sampling paths: the sampler's path for uncut draws, and torch's own int8 step."""

import math

import pytest
import torch

from charnn.errors import CharnnError
from charnn.infer.sampling import _float32, generate, sample_next, sample_rows
from charnn.infer.steps import Stepper, make_stepper
from charnn.models import ModelConfig, build_model


@pytest.mark.parametrize("temperature", [1.0, 0.8, 3.0, 1e-30, 1e38, 1e39, math.inf])
def test_an_uncut_draw_is_sample_rows_draw(temperature):
    """sample_next without top-k / top-p skips the cuts but draws what sample_rows draws, from
    the same noise, for every row, including the rows float32 cannot carry (inf, NaN logits)."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        B, V = [(1, 65), (3, 7), (2, 100)][trial % 3]
        logits = torch.randn(B, V, generator=gen) * [0.1, 1.0, 30.0][trial % 3]
        if trial % 4 == 1:
            logits[0, 0] = -math.inf
        if trial % 5 == 2:
            logits[-1, 1] = math.inf
        if trial % 7 == 3:
            logits[0, 2] = math.nan
        for top_k, top_p in ((0, 1.0), (V, 1.0), (10**9, 1.0 - 1e-12)):  # all "off"
            g1, g2 = torch.Generator().manual_seed(trial), torch.Generator().manual_seed(trial)
            got = sample_next(logits, temperature, top_k, top_p, g1)
            noise = torch.empty(B, V).exponential_(generator=g2)
            want = sample_rows(logits, torch.full((B,), _float32(temperature)),
                               torch.full((B,), min(top_k, V), dtype=torch.long), torch.full((B,), _float32(top_p)),
                               noise)
            assert torch.equal(got, want), (trial, top_k, top_p)
            assert torch.equal(g1.get_state(), g2.get_state())  # the generator moved as much


@pytest.fixture
def lstm():
    torch.manual_seed(0)
    return build_model(ModelConfig(model="lstm", layers=2, hidden=32, embed=8, vocab_size=20)).eval()


def test_torch_int8_step_is_close_to_float32_and_reads_int8_weights(lstm):
    exact, int8 = Stepper(lstm, "torch"), make_stepper(lstm, "torch", "int8")
    assert int8.backend == "torch" and int8.quantize == "int8"
    linears = [m for m in int8._module.modules() if "quantized.dynamic" in type(m).__module__]
    assert len(linears) == 3  # layer 0's recurrent, layer 1's stacked, the head
    ids = torch.tensor([1, 5, 7])
    state_a = state_b = None
    for _ in range(5):
        a, state_a = exact.step(ids, state_a)
        b, state_b = int8.step(ids, state_b)
        assert not torch.equal(a, b)  # it is quantised...
        assert torch.allclose(a, b, atol=0.05)  # ...to within int8's rounding
        ids = a.argmax(1)
    text = [int(x) for x in generate(int8, [[1, 2, 3]], 50, seed=1)]
    assert text == [int(x) for x in generate(int8, [[1, 2, 3]], 50, seed=1)] and len(text) == 50


def test_torch_int8_needs_a_torch_nn_core():
    model = build_model(ModelConfig(model="mingru", layers=1, hidden=16, embed=8, vocab_size=20))
    with pytest.raises(CharnnError, match=r"--backend torch --quantize int8 runs an LSTM, GRU or RNN.*--backend onnx"):
        make_stepper(model, "torch", "int8")
