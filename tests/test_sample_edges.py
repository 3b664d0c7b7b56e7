"""The sampler at float32's edges: every finite setting draws an allowed character, never a
banned or NaN-driven one, and the limits are what they should be (issue 12, class 5).

sample_next / sample_rows are the one sampler of `charnn sample`, the Python API and the
server's engine. hypothesis is not installed here, so the property test is a seeded grid of
settings (the extreme ones included) over seeded random logits.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from charnn.cli import main
from charnn.infer.sampling import sample_next, sample_rows

INF = float("inf")
# Temperatures from 0 to Python's largest float: below float32's smallest (1e-46, 1e-300),
# overflowing logits / t (1e-45, 1e-30), ordinary, and beyond float32's range (1e39, 1e308).
TEMPERATURES = [0.0, 1e-300, 1e-46, 1e-45, 1e-30, 1e-6, 0.5, 1.0, 10.0, 1e10, 1e38, 3.4e38, 1e39, 1.7e308]
TOP_PS = [1e-46, 1e-45, 1e-30, 1e-7, 0.5, 0.999999, 1.0]
V = 12


def top_ks(v: int) -> list[int]:
    return [0, 1, 2, v - 1, v, v + 5, 10**20]


def random_logits(rng: random.Random, gen: torch.Generator, rows: int, v: int) -> torch.Tensor:
    """Logits (rows, v) of every kind that reaches the sampler, some absurd: ordinary, huge,
    tiny, all equal, tied, mixed, with -inf for banned ids (always one allowed), the odd
    NaN (a broken model) and +inf."""
    out = torch.empty(rows, v)
    for r in range(rows):
        kind = rng.choice(["normal", "normal", "equal", "ties", "mixed"])
        if kind == "normal":
            row = torch.randn(v, generator=gen) * rng.choice([1e-40, 1e-7, 1.0, 30.0, 1e10, 1e30, 1e38])
        elif kind == "equal":
            row = torch.full((v,), rng.choice([0.0, 1.0, -1e38, 3e38]))
        elif kind == "ties":
            row = (torch.randn(v, generator=gen) * 2).round()
        else:
            choices = [3.4e38, -3.4e38, 1e-45, -1e-45, 0.0, 1e-30, 5.0, -5.0]
            row = torch.tensor([rng.choice(choices) for _ in range(v)])
        banned = rng.sample(range(v), rng.randrange(v))  # up to v - 1 of them
        row[banned] = -INF
        allowed = [i for i in range(v) if i not in banned]
        if rng.random() < 0.1 and len(allowed) > 1:
            row[allowed.pop()] = float("nan")
        if rng.random() < 0.05:
            row[rng.choice(allowed)] = INF
        out[r] = row
    return out


def allowed_of(logits: torch.Tensor) -> torch.Tensor:
    """(B, V) bool: what may be drawn at all: not banned (-inf), not NaN."""
    return ~(logits.isnan() | (logits == -INF))


def test_every_finite_setting_draws_an_allowed_character():
    """The property: for every temperature, top-k and top-p (the extremes included) and any
    logits, the draw is allowed; top_k keeps the k largest; top_k 1 and a top_p below 1/V are
    greedy; and so is temperature 0."""
    rng = random.Random(12)
    gen = torch.Generator().manual_seed(12)
    cases = 0
    for batch in range(4):
        v = [V, 2, 40, 97][batch]
        logits = random_logits(rng, gen, 6, v)
        allowed = allowed_of(logits)
        ranked = logits.nan_to_num(-INF, INF, -INF)  # NaN is no candidate
        best = ranked.amax(dim=-1, keepdim=True)
        greedy = sample_next(logits, 0.0)
        assert allowed.gather(1, greedy[:, None]).all()
        unique = (ranked == best).sum(-1) == 1
        for t in TEMPERATURES:
            for k in top_ks(v):
                for p in TOP_PS:
                    ids = sample_next(logits, t, k, p, torch.Generator().manual_seed(cases))
                    setting = (t, k, p)
                    picked = ranked.gather(1, ids[:, None])  # (B, 1)
                    assert allowed.gather(1, ids[:, None]).all(), (setting, logits, ids)
                    if 0 < k < v:
                        kth = ranked.sort(dim=-1, descending=True).values[:, k - 1 : k]
                        assert (picked >= kth).all(), (setting, logits, ids)
                    if t == 0 or k == 1 or p < 1 / v:
                        assert (picked == best).all(), (setting, logits, ids)
                        assert torch.equal(ids[unique], greedy[unique]), (setting, logits, ids)
                    cases += len(ids)
    assert cases == 24 * len(TEMPERATURES) * len(TOP_PS) * 7  # 16,464 draws


def counts(ids: torch.Tensor, v: int) -> list[int]:
    return torch.bincount(ids, minlength=v).tolist()


def assert_uniform(ids: torch.Tensor, support: list[int], v: int):
    """Roughly uniform over `support` and nothing outside it (5 standard deviations)."""
    c = counts(ids, v)
    n, m = len(ids), len(support)
    sigma = math.sqrt(n * (1 / m) * (1 - 1 / m))
    assert sum(c[i] for i in range(v) if i not in support) == 0, c
    for i in support:
        assert abs(c[i] - n / m) < 5 * sigma, (i, c)


@pytest.mark.parametrize("t", [1e10, 1e38, 3.4e38, 1e39, 1.7e308])
def test_a_huge_temperature_approaches_uniform_over_the_allowed(t):
    # The failure of issue 12: at 1e39, -inf / t was NaN and every draw the same character.
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(0)) * 5
    banned = [3, V - 1]  # V - 1 as <unk> is in a run's vocabulary
    logits[0, banned] = -INF
    draws = logits.expand(12000, V)
    allowed = [i for i in range(V) if i not in banned]
    assert_uniform(sample_next(draws, t, generator=torch.Generator().manual_seed(1)), allowed, V)
    # top-k still ranks the logits: the 4 largest, uniformly.
    top4 = logits[0].topk(4).indices.tolist()
    assert_uniform(sample_next(draws, t, 4, generator=torch.Generator().manual_seed(2)), top4, V)


@pytest.mark.parametrize("t", [1e-30, 1e-45, 1e-46, 1e-300])
def test_a_tiny_temperature_is_the_argmax_limit_with_ties_shared(t):
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(0))
    logits[0, [2, 7]] = 4.0  # two most likely, exactly tied: at any t > 0 each has half
    logits[0, V - 1] = -INF
    ids = sample_next(logits.expand(4000, V), t, generator=torch.Generator().manual_seed(3))
    assert_uniform(ids, [2, 7], V)


def test_huge_logits_at_a_small_temperature():
    # logits / t overflows float32 to inf for the two largest: (l - max) / t decides instead.
    logits = torch.tensor([[2.9e38, 3e38, -3e38, 1.0, -INF]])
    ids = sample_next(logits.expand(500, 5), 0.5, generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == {1}  # exp(-2e37) is 0: the largest, always
    ids = sample_next(logits.expand(4000, 5), 1e38, generator=torch.Generator().manual_seed(0))
    c = counts(ids, 5)  # probabilities exp((l - max) / 1e38): exp(-0.1), 1, exp(-6), exp(-3)
    assert c[4] == 0 and c[1] > c[0] > c[3] > c[2] > 0, c


def test_the_engine_s_float32_settings_at_the_edges():
    """The server builds float32 tensors itself: a temperature of 1e39 arrives as inf, a top_p
    of 1e-46 as 0. sample_rows takes both."""
    B = 6000
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(4)).expand(B, V).clone()
    logits[:, V - 1] = -INF
    t = torch.tensor([1e39] * B, dtype=torch.float32)
    assert math.isinf(float(t[0]))
    noise = torch.empty(B, V).exponential_(generator=torch.Generator().manual_seed(5))
    ids = sample_rows(logits, t, torch.zeros(B, dtype=torch.long), torch.ones(B), noise)
    assert_uniform(ids, list(range(V - 1)), V)
    p = torch.tensor([1e-46] * B, dtype=torch.float32)
    assert float(p[0]) == 0
    ids = sample_rows(logits, torch.ones(B), torch.zeros(B, dtype=torch.long), p, noise)
    assert set(ids.tolist()) == {int(logits[0].argmax())}  # the most likely is always kept


def test_a_zero_noise_never_draws_a_banned_id():
    # p / q with p = 0 and q = 0 is NaN, and argmax takes NaN: the draw must not.
    logits = torch.tensor([[1.0, -INF, 2.0, -INF]]).expand(3, 4)
    noise = torch.ones(3, 4)
    noise[:, 1] = 0.0
    noise[1, 3] = 0.0
    ids = sample_rows(logits, torch.tensor([1.0, 1.0, 0.7]), torch.zeros(3, dtype=torch.long), torch.ones(3), noise)
    assert set(ids.tolist()) <= {0, 2}


@pytest.mark.parametrize("t", [0.0, 1.0, 1e39])
def test_a_nan_logit_is_never_drawn(t):
    logits = torch.tensor([[0.5, float("nan"), 0.2, -INF, 0.1]]).expand(400, 5)
    ids = sample_next(logits, t, generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == ({0} if t == 0 else {0, 2, 4})  # and the others are drawn


def test_a_top_k_beyond_int64_is_off():
    logits = torch.randn(50, 20, generator=torch.Generator().manual_seed(0))
    off = sample_next(logits, 1.0, 0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample_next(logits, 1.0, 10**20, generator=torch.Generator().manual_seed(1)), off)


def base_sample_rows(logits, temperature, top_k, top_p, noise):
    """sample_rows as it was on main at 1ece5aa (before issue 12): the arithmetic every seed's
    text comes from. Where it held, the sampler must still draw exactly what it drew."""
    greedy = temperature == 0
    x = logits.float() / torch.where(greedy, 1.0, temperature)[:, None]
    use_k = (top_k > 0) & (top_k < logits.shape[1])
    if bool(use_k.any()):
        k_max = int(top_k[use_k].max())
        top = torch.topk(x, k_max, dim=-1).values
        kth = top.gather(1, (top_k.clamp(1, k_max) - 1)[:, None])
        x = x.masked_fill(use_k[:, None] & (x < kth), float("-inf"))
    use_p = top_p < 1.0
    if bool(use_p.any()):
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        drop = use_p[:, None] & (before >= top_p[:, None])
        x = x.scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    probs = torch.softmax(x, dim=-1)
    return torch.where(greedy, logits.argmax(dim=-1), (probs / noise).argmax(dim=-1))


def test_ordinary_settings_draw_exactly_what_they_always_drew():
    """Same seed, same text: the fixes touch only rows the old float32 arithmetic broke."""
    rng = random.Random(7)
    rows = 0
    for it in range(400):
        B, v = rng.randint(1, 16), rng.choice([5, 36, 66, 200])
        logits = torch.randn(B, v, generator=torch.Generator().manual_seed(it)) * 10 ** rng.uniform(-2, 2)
        if it % 3 == 0:
            logits = (logits * 2).round() / 2  # exact ties, which top-k and top-p must order as before
        logits[:, rng.randrange(v)] = -INF  # banned
        t = torch.tensor([0.0 if rng.random() < 0.1 else 10 ** rng.uniform(-2, 3) for _ in range(B)])
        k = torch.tensor([rng.choice([0, 1, 2, 5, 10, v - 1, v, v + 5]) for _ in range(B)])
        p = torch.tensor([rng.choice([1.0, 0.99, 0.9, 0.5, 1e-6, rng.random()]) for _ in range(B)])
        noise = torch.empty(B, v).exponential_(generator=torch.Generator().manual_seed(it))
        assert torch.equal(sample_rows(logits, t, k, p, noise), base_sample_rows(logits, t, k, p, noise))
        rows += B
    assert rows > 3000


def test_sample_at_float32_edges_end_to_end(capsys, tiny_run):
    """`charnn sample --temperature 1e39` (a traceback, then one repeated character, before)."""

    def sample(*flags: str) -> str:
        code = main(["sample", str(tiny_run), "--length", "200", "--seed", "5", "--prime", "R", *flags])
        out, err = capsys.readouterr()
        assert code == 0 and err == "", err
        return out

    hot = sample("--temperature", "1e39")
    text = hot[1:-1]  # after the prime, before the final newline
    assert len(text) == 200  # <unk> (decoded as nothing) never drawn
    assert len(set(text)) > 15  # near-uniform over the vocabulary, not one character
    assert sample("--temperature", "1.7e308") == hot  # both beyond float32: the uniform limit
    greedy = sample("--temperature", "0")
    for flags in (["--top-p", "1e-46"], ["--top-k", "1"], ["--temperature", "1e-30"],
                  ["--temperature", "1e-46"], ["--temperature", "1e39", "--top-p", "1e-45"]):
        assert sample(*flags) == greedy, flags
    assert sample("--top-k", str(10**20)) == sample("--top-k", "0")
