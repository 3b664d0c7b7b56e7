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


@pytest.mark.parametrize("model", ALL_CORES)
@pytest.mark.parametrize("input", ["embedding", "onehot"])
def test_parameter_count_is_what_build_model_makes(model, input):
    """ModelConfig.parameter_count() sizes a model without building it (the memory check)."""
    stackings = [{"block": "plain"}, {}, {"expand": 1.5, "mlp": 0.0, "conv": 0}, {"expand": 0.3, "mlp": 1.3, "conv": 2}]
    for options in stackings if model in ("mingru", "minlstm") else [{}]:
        for hidden, embed, layers in ((12, 6, 1), (12, 12, 3), (7, 5, 2)):
            cfg = ModelConfig(model=model, input=input, vocab_size=11, hidden=hidden, embed=embed, layers=layers,
                              **options)
            assert cfg.parameter_count() == sum(p.numel() for p in build_model(cfg).parameters()), cfg
            weights = 4 * cfg.parameter_count()
            assert cfg.estimated_bytes() == weights
            assert cfg.estimated_bytes(training=True, batch_size=2, seq_len=3) > 4 * weights


def test_absurd_model_settings_are_refused_before_anything_is_built():
    from charnn.errors import CharnnError

    with pytest.raises(CharnnError, match=r"^--layers must be at most 1024, got 1000000$"):
        build_model(ModelConfig(layers=10**6, hidden=1, vocab_size=5))
    with pytest.raises(CharnnError, match=r"^--conv must be at most 256, got 100000$"):
        build_model(ModelConfig(model="mingru", conv=10**5, vocab_size=5))
    with pytest.raises(CharnnError, match=r"^--embed must be a positive integer, got x; vocab_size must be an integer"):
        build_model(ModelConfig(embed="x", vocab_size="5"))
    # problems() never fails on a value of the wrong type (a config.json can hold anything)
    assert ModelConfig(model=["lstm"], block={"a": 1}, conv=[4], expand="x").problems()
