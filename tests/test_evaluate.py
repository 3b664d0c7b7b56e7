import pytest
import torch

from charnn.evaluate import WINDOW, evaluate_ids
from charnn.models import ModelConfig, build_model


def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(model="gru", vocab_size=7, embed=4, hidden=8, layers=1)).eval()


def test_stateful_single_pass_equals_manual_sum():
    m = model()
    ids = torch.randint(0, 7, (3000,))
    logits, _ = m(ids[None, :-1])
    expected = torch.nn.functional.cross_entropy(logits[0], ids[1:]).item()
    r = evaluate_ids(m, ids, "stateful", chunk=256)
    assert r.chars == 2999
    assert r.loss == pytest.approx(expected, rel=1e-5)


def test_parallel_warmed_up_streams_match_one_pass():
    m = model()
    ids = torch.randint(0, 7, (20000,))
    exact = evaluate_ids(m, ids, "stateful", streams=1)
    fast = evaluate_ids(m, ids, "stateful", streams=4, warmup=256)
    assert fast.chars == exact.chars
    assert fast.loss == pytest.approx(exact.loss, rel=1e-4)


def test_windows_scores_each_window_from_a_fresh_state():
    m = model()
    ids = torch.randint(0, 7, (3 * WINDOW + 10,))
    r = evaluate_ids(m, ids, "windows", batch_size=2)
    assert r.chars == 3 * WINDOW
    total = 0.0
    for k in range(3):
        w = ids[k * WINDOW : (k + 1) * WINDOW + 1]
        logits, _ = m(w[None, :-1])
        total += torch.nn.functional.cross_entropy(logits[0], w[1:], reduction="sum").item()
    assert r.loss == pytest.approx(total / (3 * WINDOW), rel=1e-5)
