"""lab/ngram.py: interpolated Kneser-Ney equals a plain dictionary implementation and sums to 1."""

from collections import Counter

import numpy as np
import pytest

from charnn.lab.ngram import context_rows, kneser_ney, text_losses


def brute_force(train: list[int], vocab_size: int, max_order: int):
    """P_n(c | ctx) of interpolated Kneser-Ney, straight from the formulas (lab/ngram.py's docstring)."""
    grams = {k: Counter(tuple(train[i : i + k]) for i in range(len(train) - k + 1)) for k in range(1, max_order + 2)}
    cont = {k: Counter(g[1:] for g in grams[k + 1]) for k in range(1, max_order + 1)}  # N+(.w)

    def discount(counts):
        n1 = sum(1 for v in counts if v == 1)
        n2 = sum(1 for v in counts if v == 2)
        return max(0.1, n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.0)

    def level(table, k, ctx, c, lower, d):
        if k > 1 and len(ctx) < k - 1:
            return lower
        h = tuple(ctx[len(ctx) - (k - 1) :]) if k > 1 else ()
        following = {g[-1]: v for g, v in table.items() if g[:-1] == h}
        total = sum(following.values())
        if total == 0:
            return lower
        return (max(following.get(c, 0) - d, 0) + d * len(following) * lower) / total

    def q(k, ctx, c):
        if k == 0:
            return 1 / vocab_size
        return level(cont[k], k, ctx, c, q(k - 1, ctx, c), discount(cont[k].values()))

    def p(n, ctx, c):
        return level(grams[n], n, ctx, c, q(n - 1, ctx, c), discount(grams[n].values()))

    return p


def _contexts(ctx_list, max_order):
    rows = np.full((max_order - 1, len(ctx_list)), -1, dtype=np.int64)
    for i, ctx in enumerate(ctx_list):
        for j, c in enumerate(reversed(ctx[-(max_order - 1) :] if max_order > 1 else [])):
            rows[j, i] = c
    return rows


def test_equals_the_formulas_on_a_small_text():
    rng = np.random.default_rng(0)
    V, N = 6, 5
    # A text with structure (a repeated phrase) and noise, so every order has seen and unseen contexts.
    train = (list(rng.integers(0, 4, 40)) + [0, 1, 2, 3, 1] * 12 + list(rng.integers(0, 5, 60)))
    p = brute_force(train, V, N)
    ctx_list = [list(rng.integers(0, 5, rng.integers(0, 7))) for _ in range(25)] + [[0, 1, 2, 3], [2, 3, 1, 0]]
    nexts = [int(c) for c in rng.integers(0, V, len(ctx_list))]
    got = kneser_ney(np.array(train), _contexts(ctx_list, N), np.array(nexts), V, N)
    expected = np.array([[p(n, ctx, c) for ctx, c in zip(ctx_list, nexts)] for n in range(1, N + 1)])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("max_order", [1, 3, 20])
def test_probabilities_sum_to_one_over_the_vocabulary(max_order):
    rng = np.random.default_rng(1)
    V = 9  # id 8 never occurs in training (like <unk>): it still gets a probability
    train = np.concatenate([rng.integers(0, 8, 500), np.tile([1, 2, 3, 4, 5], 40)])
    contexts = [[1, 2, 3, 4], [7, 7, 7], [], [5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4], [8, 0]]
    for ctx in contexts:
        rows = _contexts([ctx] * V, max_order)
        probs = kneser_ney(train, rows, np.arange(V), V, max_order)  # (max_order, V)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        assert (probs > 0).all()


def test_text_losses_score_every_position_with_its_preceding_characters():
    train = np.array([0, 1, 2] * 50)
    text = np.array([0, 1, 2, 0, 1, 2, 2])
    losses = text_losses(train, text, 4, 4)
    assert losses.shape == (4, 7)
    # The pattern is learnt: "2" after "0 1" is near certain at order 3, the odd "2" after "1 2" is not.
    assert losses[2, 5] < 0.1 and losses[2, 6] > 2.0
    assert losses[0, 0] == pytest.approx(losses[0, 3])
    rows = context_rows(text, 4)
    assert rows[:, 2].tolist() == [1, 0, -1] and rows[:, 0].tolist() == [-1, -1, -1]
