import pytest
import torch

import charnn
from charnn.errors import CharnnError
from charnn.infer.sampling import StopFilter, generate, sample_next


def test_temperature_zero_and_top_k_one_are_greedy():
    logits = torch.randn(8, 30)
    g = torch.Generator().manual_seed(0)
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits, 0.0), greedy)
    assert torch.equal(sample_next(logits, 1.0, top_k=1, generator=g), greedy)
    assert torch.equal(sample_next(logits, 5.0, top_p=1e-6, generator=g), greedy)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    probs = torch.softmax(logits[0], -1)  # 0.64, 0.24, 0.09, ...: top-p 0.8 keeps 2
    assert probs[0] < 0.8 < probs[0] + probs[1]
    assert set(sample_next(logits, 1.0, top_p=0.8, generator=g).tolist()) == {0, 1}


def test_same_seed_same_text(tiny_run):
    m = charnn.load(tiny_run)
    a = m.generate("ROMEO", length=80, temperature=1.0, seed=7)
    b = m.generate("ROMEO", length=80, temperature=1.0, seed=7)
    c = m.generate("ROMEO", length=80, temperature=1.0, seed=8)
    assert a == b and len(a) == 80
    assert a != c


def test_top_k_one_equals_greedy_end_to_end(tiny_run):
    m = charnn.load(tiny_run)
    assert m.generate("JULIET", 60, temperature=0) == m.generate("JULIET", 60, top_k=1, seed=3)


def test_generate_primes_in_one_pass_and_matches_stepwise(tiny_run):
    m = charnn.load(tiny_run)
    ids = m.prime_ids("ROMEO: ")
    steps = list(generate(m.model, [ids], 20, temperature=0))
    # Greedy decoding by hand, feeding the whole sequence every time.
    seq = list(ids)
    for _ in range(20):
        logits, _ = m.model(torch.tensor([seq]))
        logits[0, -1, m.banned] = float("-inf")
        seq.append(int(logits[0, -1].argmax()))
    assert [int(s) for s in steps] == seq[len(ids):]


def test_unknown_prime_characters(tiny_run):
    m = charnn.load(tiny_run)
    with pytest.raises(CharnnError, match="prime text has 1 character.*'Z'"):
        m.generate("ROMEZ", 5)
    assert len(m.generate("ROMEZ", 5, unknown="skip")) == 5
    assert len(m.generate("ROMEZ", 5, unknown="replace")) == 5


def test_bad_sampling_values_reported_together(tiny_run):
    m = charnn.load(tiny_run)
    with pytest.raises(CharnnError, match=r"--temperature must be >= 0.*--top-k must be >= 0.*--top-p must be in \(0, 1\]"):
        m.generate("R", 5, temperature=-1, top_k=-2, top_p=1.5)


@pytest.mark.parametrize(
    "pieces, stops, expected",
    [(["hel", "lo wo", "rld"], ["o w"], "hell"),
     (["a", "b", "c"], ["x"], "abc"),
     (["ab", "c"], ["bc", "c"], "a"),
     (["a", "\n", "\n", "b"], ["\n\n"], "a")],
)
def test_stop_filter(pieces, stops, expected):
    f = StopFilter(stops)
    out = "".join(f.feed(p) for p in pieces) + f.flush()
    assert out == expected


def test_stop_string_in_generation(tiny_run):
    m = charnn.load(tiny_run)
    full = m.generate("R", 200, temperature=0)
    stop = full[5:7]
    cut = m.generate("R", 200, temperature=0, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_sample_next_draws_what_torch_multinomial_draws():
    # sample_next draws by argmax(p / q), q ~ Exp(1): torch.multinomial's own algorithm for one
    # sample, so seeds give the same characters as a plain multinomial sampler would.
    logits = torch.randn(5, 40)
    for seed in range(20):
        ours = sample_next(logits, 0.7, generator=torch.Generator().manual_seed(seed))
        probs = torch.softmax(logits / 0.7, dim=-1)
        theirs = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(-1)
        assert torch.equal(ours, theirs)
