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


def subcommand(name):
    import argparse

    from charnn.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_sample_flags_are_the_settings_of_sample_command():
    import argparse
    from dataclasses import fields

    from charnn.infer.model import SampleCommand
    from charnn.settings import help_of

    options = [a for a in subcommand("sample")._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} == {f.name for f in fields(SampleCommand)}
    for a in options:
        # No default of its own: a flag not given leaves SampleCommand's default.
        assert a.default is argparse.SUPPRESS
        assert a.help == help_of(SampleCommand, a.dest)


def test_api_defaults_are_sample_config_defaults(tiny_run):
    import inspect

    from charnn.infer.sampling import SampleConfig
    from charnn.settings import defaults

    d = defaults(SampleConfig)
    for fn in (generate, sample_next):
        for name, p in inspect.signature(fn).parameters.items():
            if name in d and p.default is not p.empty:  # generate's length is required
                assert p.default == d[name], (fn.__name__, name)
    m = charnn.load(tiny_run)
    # Positionally in SampleConfig's order, as before: length, temperature, top_k, top_p, seed.
    assert m.generate("R", 30) == m.generate("R", 30, d["temperature"], d["top_k"], d["top_p"], d["seed"])
    assert m.generate("R", 30, 0.9, 5, 0.9, 4) == m.generate("R", length=30, temperature=0.9, top_k=5,
                                                           top_p=0.9, seed=4)


def test_sample_command_checks_once_and_encodes_the_prime_once(capsys, tiny_run, monkeypatch):
    from charnn.cli import main
    from charnn.data.vocab import Vocab
    from charnn.infer.model import SampleCommand

    calls = {"encode": 0, "problems": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Vocab, "encode", counted("encode", Vocab.encode))
    monkeypatch.setattr(SampleCommand, "problems", counted("problems", SampleCommand.problems))
    argv = ["sample", str(tiny_run), "--prime", "RO", "--length", "20", "--seed", "1", "--num-samples", "3",
            "--stop", "zz", "--stop", "yy"]
    assert main(argv) == 0
    assert calls == {"encode": 1, "problems": 1}
    out = capsys.readouterr().out
    assert out.count("RO") >= 3 and out.count("-" * 40) == 2
