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


def test_eval_flags_are_the_settings_of_eval_config():
    import argparse
    from dataclasses import fields

    from charnn.infer.evalrun import EvalConfig
    from charnn.settings import help_of
    from test_sample import subcommand

    options = [a for a in subcommand("eval")._actions if a.option_strings and a.dest not in ("help", "json")]
    assert {a.dest for a in options} == {f.name for f in fields(EvalConfig)}
    for a in options:
        assert a.default is argparse.SUPPRESS
        assert a.help == help_of(EvalConfig, a.dest)


@pytest.mark.parametrize("text", [False, True])
def test_eval_reads_the_run_once_and_builds_no_sampler(capsys, tiny_run, tmp_path, monkeypatch, text):
    import json

    from charnn import checkpoint
    from charnn.cli import main
    from charnn.infer import steps

    reads = []
    read_run = checkpoint.read_run
    monkeypatch.setattr(checkpoint, "read_run", lambda run_dir: reads.append(run_dir) or read_run(run_dir))
    monkeypatch.setattr(steps, "make_stepper", lambda *a, **k: pytest.fail("eval built a sampling stepper"))
    argv = ["eval", str(tiny_run), "--json"]
    if text:
        (tmp_path / "t.txt").write_text("ROMEO: naïve one?\n" * 3)
        argv += ["--text", str(tmp_path / "t.txt")]
    assert main(argv) == 0
    assert len(reads) == 1
    assert json.loads(capsys.readouterr().out)["text"] == (str(tmp_path / "t.txt") if text else "validation split")
