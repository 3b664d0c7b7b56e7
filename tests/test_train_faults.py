"""Training under faults and hostile input (issue 12): nothing lost, nothing crashes.

- A resume never destroys what a run holds: a run that lost its resume point but trained
  before is refused with one line, every file left as it was.
- Sizes that cannot fit (--hidden 10^9, --layers 10^6, a huge batch) are one line at once,
  before anything is read or built; wrong types through the Python API are one line.
- A write that fails part-way through training (a full disk) is one line; the previous resume
  point is intact and resumes to a bit-identical result. A loss curve that cannot be drawn
  costs nothing.
"""

import errno
import importlib
import json
import os
import subprocess
import sys
import time

import pytest

import charnn
from charnn import checkpoint
from charnn.errors import CharnnError
from conftest import TINY_MODEL, TINY_TRAIN
from test_train import assert_identical

train_config = importlib.import_module("charnn.train.config")  # charnn.train is also the function


def settings(corpus, out, **kw):
    return {"corpus": [str(corpus)], "out": str(out), **TINY_MODEL, **TINY_TRAIN, **kw}


def snapshot(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- resume without a resume point ------------------------------------------------------------
@pytest.mark.parametrize("lost", [["last.safetensors"], ["last.safetensors", "model.safetensors"]],
                         ids=["resume-point", "resume-point-and-weights"])
def test_resume_without_resume_point_keeps_what_the_run_holds(corpus_file, tmp_path, lost):
    run = tmp_path / "r"
    charnn.train(**settings(corpus_file, run, max_steps=20), progress=False)
    for name in lost:
        (run / name).unlink()
    before = snapshot(run)
    with pytest.raises(CharnnError) as e:
        charnn.train(resume=str(run), max_steps=30, progress=False)
    message = one_line(e)
    assert f"{run} has no resume point (last.safetensors is missing)" in message
    assert "metrics lines (metrics.jsonl)" in message and "--out" in message
    assert ("trained weights (model.safetensors)" in message) == ("model.safetensors" not in lost)
    assert snapshot(run) == before  # nothing rewritten, nothing added


def test_resume_without_resume_point_from_the_command_line(corpus_file, tmp_path):
    run = tmp_path / "r"
    charnn.train(**settings(corpus_file, run, max_steps=10), progress=False)
    (run / "last.safetensors").unlink()
    before = snapshot(run)
    r = subprocess.run([sys.executable, "-m", "charnn", "train", "--resume", str(run), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "has no resume point" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(run) == before


def test_resume_checks_the_settings_it_is_given_and_the_saved_ones(corpus_file, tmp_path):
    run = tmp_path / "r"
    charnn.train(**settings(corpus_file, run, max_steps=10), progress=False)
    before = snapshot(run)
    with pytest.raises(CharnnError, match=r"^--log-every must be a positive integer, got 0$"):
        charnn.train(resume=str(run), max_steps=20, log_every=0, progress=False)
    with pytest.raises(CharnnError, match=r"--threads must be in \[0, 1024\]"):
        charnn.train(resume=str(run), max_steps=20, threads=10**8, progress=False)
    assert snapshot(run) == before
    config = json.loads((run / "config.json").read_text())
    config["train"]["batch_size"] = "x"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CharnnError) as e:
        charnn.train(resume=str(run), max_steps=20, progress=False)
    assert one_line(e).startswith(f"{run / 'config.json'} holds invalid training settings "
                                  f"(batch_size must be a positive integer, got x)")


# --- sizes and types --------------------------------------------------------------------------
@pytest.mark.parametrize("kw,message", [
    ({"hidden": 10**9}, r"^--hidden 1000000000 needs at least [\d,.]+ PB of memory to train .* more than "
                        r"(this machine's memory|this container's memory limit) \([\d,.]+ [KMGT]B\); lower --hidden$"),
    ({"embed": 10**11}, r"^--embed 100000000000 needs at least .*; lower --embed$"),
    ({"input": "onehot", "hidden": 10**7}, r"^--hidden 10000000 needs at least .*; lower --hidden$"),
    ({"model": "mingru", "hidden": 10**6, "mlp": 64.0}, r"^--hidden 1000000 needs at least .*; lower --hidden$"),
    ({"batch_size": 10**6, "seq_len": 10**6}, r"^--batch-size 1000000 x --seq-len 1000000 needs at least .*"
                                              r"lower --batch-size or --seq-len$"),
    ({"layers": 2000}, r"^--layers must be at most 1024, got 2000$"),
    ({"model": "mingru", "conv": 10**5}, r"^--conv must be at most 256, got 100000$"),
    ({"threads": 10**8}, r"^--threads must be in \[0, 1024\], got 100000000$"),
    ({"seed": -1}, r"^--seed must be in \[0, 9223372036854775808\), got -1$"),
    ({"seed": 10**20}, r"^--seed must be in \[0, 9223372036854775808\), got 100000000000000000000$"),
])
def test_absurd_sizes_are_one_line_before_anything_is_built(corpus_file, tmp_path, kw, message):
    run = tmp_path / "r"
    t = time.perf_counter()
    with pytest.raises(CharnnError, match=message):
        charnn.train(**{**settings(corpus_file, run, max_steps=2), **kw}, progress=False)
    assert time.perf_counter() - t < 10
    assert not run.exists()


def test_absurd_sizes_from_the_command_line(corpus_file, tmp_path):
    for flags in (["--hidden", "1000000000"], ["--layers", "1000000", "--hidden", "1"]):
        r = subprocess.run([sys.executable, "-m", "charnn", "train", str(corpus_file), "--out", str(tmp_path / "r"),
                            "--max-steps", "2", "--quiet", *flags], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"charnn: error: {flags[0]} ")
        assert not (tmp_path / "r").exists()


def test_the_memory_check_names_what_to_lower(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setattr(train_config, "memory_limit", lambda device: (200_000, "this machine's memory"))
    charnn.train(**settings(corpus_file, tmp_path / "ok", max_steps=1), progress=False)  # ~80 KB: fits
    with pytest.raises(CharnnError, match=r"^--hidden 128 needs at least 1.\d MB .*\(195.3 KB\); lower --hidden$"):
        charnn.train(**settings(corpus_file, tmp_path / "h", max_steps=1, hidden=128), progress=False)
    with pytest.raises(CharnnError, match=r"^--batch-size 256 x --seq-len 16 needs .*--seq-len$"):
        charnn.train(**settings(corpus_file, tmp_path / "b", max_steps=1, batch_size=256), progress=False)
    # A vocabulary too large for one-hot input is caught once the corpus is read, before the build.
    monkeypatch.setattr(train_config, "memory_limit", lambda device: (60_000, "this machine's memory"))
    with pytest.raises(CharnnError, match="needs at least"):
        charnn.train(**settings(corpus_file, tmp_path / "v", max_steps=1, input="onehot", hidden=32,
                                batch_size=1, seq_len=1), progress=False)
    assert not any((tmp_path / n).exists() for n in ("h", "b", "v"))
    # A resumed run cannot change its sizes: the message names its config.json instead of flags.
    monkeypatch.setattr(train_config, "memory_limit", lambda device: (50_000, "this machine's memory"))
    before = snapshot(tmp_path / "ok")
    with pytest.raises(CharnnError, match=rf"^the run {tmp_path / 'ok'} \(hidden 16 in its config.json\) needs at "
                                          rf"least .*; resume it on a machine with more memory$"):
        charnn.train(resume=str(tmp_path / "ok"), max_steps=2, progress=False)
    assert snapshot(tmp_path / "ok") == before


@pytest.mark.parametrize("kw,message", [
    ({"seed": "x"}, "--seed must be in [0, 9223372036854775808), got x"),
    ({"seed": 1.5}, "--seed must be in [0, 9223372036854775808), got 1.5"),
    ({"seed": True}, "--seed must be in [0, 9223372036854775808), got True"),
    ({"hidden": True}, "--hidden must be a positive integer, got True"),
    ({"out": 5}, "--out must be a string, got 5"),
    ({"encoding": None}, "--encoding must be a string, got None"),
    ({"corpus": "corpus.txt"}, "corpus must be a list of strings, got 'corpus.txt'"),
    ({"corpus": [5]}, "corpus must be a list of strings, got [5]"),
    ({"model": ["lstm"]}, "--model must be one of rnn, lstm, gru, rnn-scratch, lstm-scratch, gru-scratch, "
                          "mingru, minlstm, got ['lstm']"),
    ({"conv": True, "model": "mingru"}, "--conv must be 0 (off) or a kernel size >= 2, got True"),
])
def test_wrong_types_through_the_api_are_one_line(corpus_file, tmp_path, kw, message):
    with pytest.raises(CharnnError) as e:
        charnn.train(**{**settings(corpus_file, tmp_path / "r", max_steps=2), **kw}, progress=False)
    assert one_line(e) == message


# --- write errors -----------------------------------------------------------------------------
N, FAIL_FROM = 40, 25  # saves every 10 steps: the resume point of step 20 is the last one before the fault
FAULTY = dict(max_steps=N, save_every=10, eval_every=10, log_every=5)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    from conftest import TINY_TEXT

    root = tmp_path_factory.mktemp("straight")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    charnn.train(**settings(corpus, root / "a", **FAULTY), progress=False)
    return root / "a"


def full_disk(monkeypatch, name: str, step_of) -> dict:
    """Make checkpoint.`name` fail with ENOSPC from the first call at step FAIL_FROM on, after
    keeping a copy of the resume point as it was at that moment."""
    real, seen = getattr(checkpoint, name), {}

    def failing(run_dir, *args):
        if step_of(args) >= FAIL_FROM:
            last = run_dir / "last.safetensors"
            seen["last"] = last.read_bytes() if last.exists() else None
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(run_dir, *args)

    monkeypatch.setattr(checkpoint, name, failing)
    return seen


@pytest.mark.parametrize("name,file,step_of", [
    ("append_metrics", "metrics.jsonl", lambda args: args[0]["step"]),
    ("save_weights", "model.safetensors", lambda args: args[2]["step"]),
    ("save_checkpoint", "last.safetensors", lambda args: args[3]["step"]),
], ids=["metrics", "best-weights", "resume-point"])
def test_a_full_disk_stops_with_one_line_and_resumes_exactly(corpus_file, tmp_path, monkeypatch, straight_run,
                                                             name, file, step_of):
    run = tmp_path / "b"
    seen = full_disk(monkeypatch, name, step_of)
    with pytest.raises(CharnnError) as e:
        charnn.train(**settings(corpus_file, run, **FAULTY), progress=False)
    message = one_line(e)
    assert message.startswith(f"cannot write {run / file}: No space left on device; training stopped at step ")
    assert message.endswith(f"the resume point of step 20 is intact: once that is fixed, continue with "
                            f"charnn train --resume {run}")
    assert (run / "last.safetensors").read_bytes() == seen["last"]
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    s = charnn.train(resume=str(run), progress=False)
    assert s.step == N and s.stop_reason == "steps"
    assert_identical(straight_run, run)


def test_a_fault_before_the_first_resume_point_says_so(corpus_file, tmp_path, monkeypatch):
    run = tmp_path / "b"
    full_disk(monkeypatch, "append_metrics", lambda args: args[0]["step"] + FAIL_FROM)
    with pytest.raises(CharnnError) as e:
        charnn.train(**settings(corpus_file, run, max_steps=N), progress=False)
    assert one_line(e).endswith("training stopped at step 5, before its first resume point: once that is "
                                "fixed, start a new run with --out (--save-every N writes a resume point "
                                "every N steps)")


def test_a_loss_curve_that_cannot_be_written_costs_nothing(corpus_file, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    plot = importlib.import_module("charnn.train.plot")

    def failing(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(plot, "atomic_write", failing)
    run = tmp_path / "r"
    s = charnn.train(**settings(corpus_file, run, max_steps=20), progress=True)
    assert s.step == 20 and s.stop_reason == "steps"
    assert f"loss curve not drawn: cannot write {run / 'loss.png'}: No space left on device" in capsys.readouterr().err
    assert not (run / "loss.png").exists()
    assert checkpoint.load_checkpoint(run).trainer["step"] == 20 and charnn.load(run).info["step"] > 0


def test_the_loss_curve_skips_records_that_are_not_numbers(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    import shutil

    from charnn.train.plot import plot_run

    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": "x", "train_loss": 1.0}\n{"step": 40, "train_loss": "nan", "val_loss": null}\n[1]\n')
    assert plot_run(run) == run / "loss.png"
