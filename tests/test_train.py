"""Training: exact resume, kills at random moments, signals, the NaN guard, stopping rules."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import charnn
from charnn import checkpoint
from charnn.errors import CharnnError
from charnn.train.config import resolve
from charnn.train.loop import Trainer
from conftest import TINY_MODEL, TINY_TRAIN


def settings(corpus, out, **kw):
    return {"corpus": [str(corpus)], "out": str(out), **TINY_MODEL, **TINY_TRAIN, **kw}


def last_state(run):
    ck = checkpoint.load_checkpoint(run)
    return ck.model, ck.optimizer, ck.trainer


def assert_identical(run_a, run_b):
    ma, oa, ta = last_state(run_a)
    mb, ob, tb = last_state(run_b)
    assert ta["step"] == tb["step"]
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    for pid, st in oa["state"].items():
        for k, v in st.items():
            assert torch.equal(v, ob["state"][pid][k]) if isinstance(v, torch.Tensor) else v == ob["state"][pid][k]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "chars_per_s")} for r in rs]  # noqa: E731
    assert strip(checkpoint.read_metrics(run_a)) == strip(checkpoint.read_metrics(run_b))
    best_a, best_b = charnn.load(run_a), charnn.load(run_b)
    assert best_a.info == best_b.info
    for (ka, va), (kb, vb) in zip(best_a.model.state_dict().items(), best_b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize(
    "extra",
    [{}, {"batching": "windows"}, {"dropout": 0.3, "layers": 2, "model": "gru"},
     {"dtype": "bfloat16", "model": "rnn"}, {"reset_prob": 0.3}],
    ids=["streams", "windows", "dropout-gru", "bf16-rnn", "reset-prob"],
)
def test_resume_is_bit_identical(corpus_file, tmp_path, extra):
    N, k = 40, 17
    charnn.train(**settings(corpus_file, tmp_path / "a", max_steps=N, **extra), progress=False)
    s = charnn.train(**settings(corpus_file, tmp_path / "b", max_steps=N, **extra), progress=False,
                     should_stop=lambda step: step == k)
    assert s.stop_reason == "interrupted" and s.step == k
    s = charnn.train(resume=str(tmp_path / "b"), progress=False)
    assert s.step == N and s.stop_reason == "steps"
    assert_identical(tmp_path / "a", tmp_path / "b")


def test_killed_before_first_checkpoint_resumes_from_step_zero(corpus_file, tmp_path):
    charnn.train(**settings(corpus_file, tmp_path / "a", max_steps=25), progress=False)
    model_config, cfg = resolve(settings(corpus_file, tmp_path / "b", max_steps=25))
    Trainer(model_config, cfg, progress=False)  # creates the run directory, then "dies"
    assert not checkpoint.has_checkpoint(tmp_path / "b")
    s = charnn.train(resume=str(tmp_path / "b"), progress=False)
    assert s.step == 25
    assert_identical(tmp_path / "a", tmp_path / "b")


def test_resume_finished_run_and_extend(corpus_file, tmp_path):
    run = tmp_path / "r"
    charnn.train(**settings(corpus_file, run, max_steps=20), progress=False)
    s = charnn.train(resume=str(run), progress=False)
    assert s.stop_reason == "finished earlier" and s.step == 20
    s = charnn.train(resume=str(run), max_steps=30, progress=False)
    assert s.step == 30


def test_resume_refuses_architecture_changes(corpus_file, tmp_path):
    run = tmp_path / "r"
    charnn.train(**settings(corpus_file, run, max_steps=5), progress=False)
    with pytest.raises(CharnnError, match=r"cannot change --hidden \(the run has 16\).*--out"):
        charnn.train(resume=str(run), hidden=32, progress=False)
    with pytest.raises(CharnnError, match=r"--seq-len"):
        charnn.train(resume=str(run), seq_len=8, progress=False)


def test_nan_guard_stops_and_never_saves_non_finite(corpus_file, tmp_path, monkeypatch):
    import importlib

    train_module = importlib.import_module("charnn.train.loop")  # charnn.train is also the function

    calls = {"n": 0}
    real_loss = train_module.char_loss

    def poisoned(logits, targets, reduction="mean"):
        calls["n"] += 1
        loss = real_loss(logits, targets, reduction)
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(train_module, "char_loss", poisoned)
    run = tmp_path / "r"
    with pytest.raises(CharnnError, match=r"diverged at step 8: the loss is nan.*last checkpoint is intact.*--lr"):
        charnn.train(**settings(corpus_file, run, max_steps=50, save_every=5, eval_every=0), progress=False)
    ck = checkpoint.load_checkpoint(run)
    assert ck.trainer["step"] == 5
    assert all(torch.isfinite(t).all() for t in ck.model.values())


def test_early_stopping_and_epochs(corpus_file, tmp_path):
    s = charnn.train(**settings(corpus_file, tmp_path / "e", epochs=1.5), progress=False)
    model_config, cfg = resolve(settings(corpus_file, tmp_path / "x", epochs=1.5))
    assert s.stop_reason == "epochs"
    # lr tiny and huge patience check: patience 1 with a constant model stops at the 2nd eval
    s = charnn.train(**settings(corpus_file, tmp_path / "p", max_steps=500, lr=1e-9, warmup=0,
                                patience=1, eval_every=5), progress=False)
    assert s.stop_reason == "early stop" and s.step < 500


def test_time_budget(corpus_file, tmp_path):
    t = time.time()
    s = charnn.train(**settings(corpus_file, tmp_path / "t", max_time=3, eval_every=0), progress=False)
    assert time.time() - t < 15
    # The budget becomes a step target, calibrated on the first steps' speed: the run ends
    # on that target a little before the budget, or on the clock if the machine slowed down.
    assert s.stop_reason in ("time", "steps")
    assert s.wall_time <= 3 + 1.5
    if s.stop_reason == "time":
        assert s.wall_time >= 3
    else:  # a busy machine during calibration can make the estimate cautious
        assert s.wall_time >= 0.3 * 3


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "charnn", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def tiny_flags(corpus, out, steps):
    return [str(corpus), "--out", str(out), "--max-steps", str(steps), "--hidden", "48",
            "--layers", "2", "--embed", "8", "--batch-size", "4", "--seq-len", "16",
            "--eval-every", "10", "--log-every", "5", "--sample-chars", "0", "--quiet",
            "--dtype", "float32"]


@pytest.mark.slow
def test_sigint_saves_and_resume_matches(corpus_file, tmp_path):
    steps = 300
    straight = cli("train", *tiny_flags(corpus_file, tmp_path / "a", steps))
    p = cli("train", *tiny_flags(corpus_file, tmp_path / "b", steps))
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "resume with: charnn train --resume" in err
    step = checkpoint.load_checkpoint(tmp_path / "b").trainer["step"]
    assert 0 < step < steps
    r = cli("train", "--resume", str(tmp_path / "b"), "--quiet")
    out, err = r.communicate(timeout=120)
    assert r.returncode == 0, err
    straight.communicate(timeout=120)
    assert straight.returncode == 0
    assert_identical(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_sigkill_at_random_moments_always_resumes(corpus_file, tmp_path):
    """Kill -9 at random moments (saves happen every step, so many kills land mid-save).

    Each attempt waits until the run has logged a random number of metrics lines more (a few
    to 30 steps, however slow the machine), then kills it after a random delay below a step.
    """
    steps = 150
    flags = tiny_flags(corpus_file, tmp_path / "b", steps) + ["--save-every", "1"]
    straight = cli("train", *tiny_flags(corpus_file, tmp_path / "a", steps), "--save-every", "1")
    straight.communicate(timeout=300)
    metrics = tmp_path / "b" / "metrics.jsonl"

    def logged() -> int:
        return metrics.read_text().count("\n") if metrics.exists() else 0

    rng = random.Random(1234)
    kills = 0
    for _attempt in range(60):
        started = (tmp_path / "b" / "config.json").exists()
        target = logged() + rng.randint(1, 6)  # a line every 5 steps
        p = cli("train", *(["--resume", str(tmp_path / "b"), "--quiet"] if started else flags))
        deadline = time.time() + 120
        while p.poll() is None and logged() < target:
            assert time.time() < deadline, "no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.01))
        if p.poll() is None:
            p.kill()
            p.communicate()
            kills += 1
            continue
        out, err = p.communicate()
        assert p.returncode == 0, err
        break
    else:
        pytest.fail("the run never finished")
    assert kills >= 3
    assert json.loads((tmp_path / "b" / "config.json").read_text())["format"] == "charnn-run"
    assert_identical(tmp_path / "a", tmp_path / "b")


def test_train_and_prepare_flags_come_from_the_config_fields():
    """Every flag's default and help are written once, on its config field (charnn.settings)."""
    import argparse
    from dataclasses import fields

    from charnn.cli import build_parser
    from charnn.models import ModelConfig
    from charnn.settings import default_of, help_of, meta
    from charnn.train.config import TrainConfig

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    by_dest = {a.dest: a for a in commands["train"]._actions}
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            if f.name in ("vocab_size", "auto"):
                continue  # set from the vocabulary / by --preset auto's choice, not flags
            action = by_dest[f.name]
            assert action.default is argparse.SUPPRESS  # not given = the field's default (or the run's)
            expected = meta(f)["help"] if f.name == "preset" else help_of(cls, f.name)
            assert action.help == expected and meta(f)["help"], f.name
            if meta(f)["choices"] is not None:
                assert action.choices == list(meta(f)["choices"]), f.name
    prepare = commands["prepare"]
    args = prepare.parse_args(["--out", "x"])
    for name in ("encoding", "errors"):
        assert getattr(args, name) == default_of(TrainConfig, name)
        assert next(a for a in prepare._actions if a.dest == name).help == help_of(TrainConfig, name)


def test_the_resume_point_holds_exactly_the_resume_state(tiny_run):
    """ResumeState is both what is saved and what is restored; its keys are the file format."""
    from dataclasses import fields

    from charnn.train.state import ResumeState

    saved = checkpoint.load_checkpoint(tiny_run).trainer
    assert list(saved) == [f.name for f in fields(ResumeState)] == [
        "world_size", "scaler", "step", "total_steps", "elapsed", "best_val", "best_step", "bad_evals",
        "last_eval_step", "log_loss_sum", "log_loss_count", "last_train_loss", "finished", "stop_reason",
        "batches", "has_state", "cosine_from", "budget",
    ]  # runs saved by earlier versions resume: this list is their format (new fields go last, with defaults)
    assert ResumeState.from_dict(saved).to_dict() == saved
    assert ResumeState.from_dict({"step": 3}).world_size == 1  # a key it lacks takes its default


def test_a_final_evaluation_right_after_a_metrics_line_shows_the_last_train_loss(corpus_file, tmp_path, capsys):
    # 12 steps, a metrics line every 4, evaluations every 5: the final evaluation (step 12) comes
    # right after step 12's metrics line and has no steps of its own to average.
    charnn.train(**settings(corpus_file, tmp_path / "r", max_steps=12, log_every=4, eval_every=5))
    last = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step 12:")]
    assert last and "train loss nan" not in last[-1] and "train loss " in last[-1], last
