import math

import pytest
import torch

from charnn.evaluate import evaluate_ids
from charnn.models import CORES, ModelConfig, build_model
from charnn.models.lm import char_loss, detach_state, state_tensors

ALL_CORES = sorted(CORES)


def tiny(model: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(model=model, vocab_size=11, embed=6, hidden=12, layers=2, **kw)
    return build_model(cfg).double().eval()


@pytest.mark.parametrize("model", ALL_CORES)
@pytest.mark.parametrize("input", ["embedding", "onehot"])
def test_two_chunks_with_carried_state_equal_one_pass(model, input):
    m = tiny(model, input=input)
    ids = torch.randint(0, 11, (3, 20))
    whole, s_whole = m(ids)
    a, s = m(ids[:, :7])
    b, s = m(ids[:, 7:], s)
    assert whole.shape == (3, 20, 11)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=0, atol=1e-12)
    for x, y in zip(state_tensors(detach_state(s)), state_tensors(s_whole)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("model", ALL_CORES)
def test_initial_state_is_the_zero_state(model):
    m = tiny(model)
    ids = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(m(ids)[0], m(ids, m.initial_state(2))[0])


@pytest.mark.parametrize("model", ALL_CORES)
def test_uniform_logits_give_log2_v_bits(model):
    m = tiny(model).float()
    torch.nn.init.zeros_(m.head.weight)
    torch.nn.init.zeros_(m.head.bias)
    ids = torch.randint(0, 11, (500,))
    for protocol in ("stateful", "windows"):
        r = evaluate_ids(m, ids, protocol)
        assert r.bpc == pytest.approx(math.log2(11), abs=1e-5)
        assert r.perplexity == pytest.approx(11, rel=1e-5)


def test_char_loss_reductions():
    logits = torch.randn(2, 3, 5)
    y = torch.randint(0, 5, (2, 3))
    none = char_loss(logits, y, "none")
    assert none.shape == (2, 3)
    torch.testing.assert_close(none.mean(), char_loss(logits, y))
    torch.testing.assert_close(none.sum(), char_loss(logits, y, "sum"))


def test_bad_model_settings_reported_together():
    from charnn.errors import CharnnError

    with pytest.raises(CharnnError, match=r"--model must be one of.*--hidden must be a positive.*--dropout"):
        build_model(ModelConfig(model="transformer", hidden=0, dropout=1.5, vocab_size=5))


@pytest.mark.parametrize("model", ALL_CORES)
def test_step_equals_forward(model):
    m = tiny(model)
    ids = torch.randint(0, 11, (3, 6))
    whole, _ = m(ids)
    state = None
    for t in range(6):
        logits, state = m.step(ids[:, t], state)
        torch.testing.assert_close(logits, whole[:, t], rtol=0, atol=1e-12)
