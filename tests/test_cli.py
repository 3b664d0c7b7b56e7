"""The command line end to end, and every user error: one line on stderr, exit status 2."""

import json
import subprocess
import sys

import pytest

from charnn.cli import main
from conftest import TINY_TEXT

TINY = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "10", "--log-every", "5", "--quiet"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *patterns):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("charnn: error: ")
    assert "Traceback" not in err
    for p in patterns:
        assert p in lines[0], (p, lines[0])


def test_train_sample_eval_end_to_end(capsys, corpus_file, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", corpus_file, "--out", out_dir, "--max-steps", 30,
                         "--sample-chars", 40, *TINY)
    assert code == 0, err
    assert "30 steps (steps), val loss" in out and "--- sample" in out
    for name in ("config.json", "vocab.json", "model.safetensors", "last.safetensors", "metrics.jsonl"):
        assert (out_dir / name).is_file()
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "val_loss" in m] == [10, 20, 30]

    code, out, _ = run(capsys, "sample", out_dir, "--prime", "ROMEO", "--length", 50, "--seed", 1)
    assert code == 0 and out.startswith("ROMEO") and len(out) == len("ROMEO") + 50 + 1
    code, again, _ = run(capsys, "sample", out_dir, "--prime", "ROMEO", "--length", 50, "--seed", 1)
    assert again == out
    code, two, _ = run(capsys, "sample", out_dir, "--num-samples", 2, "--length", 20, "--seed", 1,
                       "--temperature", 0.5, "--top-k", 5, "--top-p", 0.9)
    assert code == 0 and two.count("-" * 40) == 1
    code, stopped, _ = run(capsys, "sample", out_dir, "--prime", "R", "--length", 300,
                           "--temperature", 0, "--stop", "\n")
    assert code == 0 and "\n" not in stopped.rstrip("\n")

    code, out, _ = run(capsys, "eval", out_dir, "--json")
    result = json.loads(out)
    assert code == 0 and {"loss", "bpc", "perplexity", "chars", "protocol"} <= set(result)
    assert result["protocol"] == "stateful" and result["chars"] == len(TINY_TEXT) - int(len(TINY_TEXT) * 0.9) - 1
    code, out, _ = run(capsys, "eval", out_dir, "--protocol", "windows", "--text", corpus_file)
    assert code == 0 and "windows protocol" in out and "bits/char" in out


def test_python_dash_m_and_console_script():
    r = subprocess.run([sys.executable, "-m", "charnn", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "sample" in r.stdout and "eval" in r.stdout
    r = subprocess.run([sys.executable, "-m", "charnn", "train", "--help"], capture_output=True, text=True)
    # With no stopping flag a run trains 150 s (DEFAULT_BUDGET_S); the help says so.
    assert "--max-time" in r.stdout
    assert "(default: 150 when neither --max-steps nor --epochs is given, else 0)" in " ".join(r.stdout.split())


@pytest.mark.parametrize(
    "argv, patterns",
    [
        (["--hidden", "0"], ["--hidden must be a positive integer, got 0"]),
        (["--layers", "-1", "--embed", "0"], ["--layers must be a positive", "--embed must be a positive"]),
        (["--seq-len", "0", "--batch-size", "-2"], ["--batch-size must be", "--seq-len must be"]),
        (["--lr", "0"], ["--lr must be > 0"]),
        (["--dropout", "1"], ["--dropout must be in [0, 1)"]),
        (["--val-fraction", "1"], ["--val-fraction must be in [0, 1)"]),
        (["--max-time", "-5"], ["--max-time must be >= 0"]),
        (["--hidden", "abc"], ["--hidden", "invalid int value: 'abc'"]),
        (["--model", "transformer"], ["--model", "invalid choice"]),
        (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    ],
)
def test_train_flag_errors(capsys, corpus_file, tmp_path, argv, patterns):
    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", corpus_file, "--out", out_dir, *argv)
    assert_user_error(code, err, *patterns)
    assert not out_dir.exists()  # nothing written half-way


def test_corpus_errors(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", tmp_path / "missing.txt", "--out", out_dir)
    assert_user_error(code, err, "missing.txt does not exist")
    (tmp_path / "empty.txt").write_text("")
    code, _, err = run(capsys, "train", tmp_path / "empty.txt", "--out", out_dir)
    assert_user_error(code, err, "empty")
    (tmp_path / "bad.txt").write_bytes(b"abc\xff\xfedef")
    code, _, err = run(capsys, "train", tmp_path / "bad.txt", "--out", out_dir)
    assert_user_error(code, err, "bad.txt is not valid utf-8 at byte offset 3", "--encoding", "--errors")
    (tmp_path / "short.txt").write_text("just a few characters")
    code, _, err = run(capsys, "train", tmp_path / "short.txt", "--out", out_dir)
    assert_user_error(code, err, "too few for one batch", "lower --batch-size or --seq-len")
    assert not out_dir.exists()


def test_unreadable_corpus(capsys, corpus_file, tmp_path, monkeypatch):
    from pathlib import Path

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    code, _, err = run(capsys, "train", corpus_file, "--out", tmp_path / "run")
    assert_user_error(code, err, "cannot read corpus file", "Permission denied")


def test_out_already_holds_a_run(capsys, tiny_run):
    code, _, err = run(capsys, "train", "--out", tiny_run, "--max-steps", "1")
    assert_user_error(code, err, "already holds a run", f"--resume {tiny_run}")


@pytest.mark.parametrize(
    "argv, patterns",
    [
        (["--temperature", "-1"], ["--temperature must be >= 0"]),
        (["--top-p", "0"], ["--top-p must be in (0, 1]"]),
        (["--top-p", "1.5", "--top-k", "-1"], ["--top-k must be >= 0", "--top-p must be in (0, 1]"]),
        (["--length", "-1"], ["--length must be >= 0"]),
        (["--num-samples", "0"], ["--num-samples must be a positive"]),
        (["--prime", "ROMEO ZZZ"], ["prime text", "'Z'", "--unknown skip"]),
    ],
)
def test_sample_errors(capsys, tiny_run, argv, patterns):
    code, out, err = run(capsys, "sample", tiny_run, *argv)
    assert_user_error(code, err, *patterns)
    assert out == ""


def test_eval_errors(capsys, tiny_run, tmp_path):
    f = tmp_path / "other.txt"
    f.write_text("ROMEO: ZQX")
    code, _, err = run(capsys, "eval", tiny_run, "--text", f)
    assert_user_error(code, err, "evaluation text", "'Q'", "'X'", "'Z'", "--unknown")
    code, out, _ = run(capsys, "eval", tiny_run, "--text", f, "--unknown", "skip", "--json")
    assert code == 0 and json.loads(out)["chars"] == len("ROMEO: ") - 1
    code, _, err = run(capsys, "eval", tiny_run, "--text", f, "--protocol", "windows", "--unknown", "skip")
    assert_user_error(code, err, "too few for one 256-character window")


def corrupt_copy(src, dst, how):
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    how(dst)
    return dst


@pytest.mark.parametrize(
    "how, pattern",
    [
        (lambda d: (d / "model.safetensors").unlink(), "missing"),
        (lambda d: (d / "config.json").unlink(), "not a charnn run directory"),
        (lambda d: (d / "vocab.json").unlink(), "cannot read"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
         "truncated or corrupt"),
        (lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:-1] + b"\x00"), "fails its checksum"),
        (lambda d: (d / "config.json").write_text("{"), "cannot be read as JSON"),
    ],
    ids=["no-weights", "no-config", "no-vocab", "truncated", "tampered", "bad-config"],
)
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_broken_run_directories(capsys, tiny_run, tmp_path, how, pattern, command):
    run_dir = corrupt_copy(tiny_run, tmp_path / "broken", how)
    code, _, err = run(capsys, command, run_dir)
    assert_user_error(code, err, pattern)


def test_missing_run_directory(capsys, tmp_path):
    code, _, err = run(capsys, "sample", tmp_path / "nope")
    assert_user_error(code, err, "does not exist", "charnn train --out")


def test_resume_errors(capsys, tiny_run, tmp_path):
    code, _, err = run(capsys, "train", "--resume", tiny_run, "--hidden", "64", "--model", "gru")
    assert_user_error(code, err, "cannot change", "--hidden (the run has 16)", "--model (the run has 'lstm')")
    code, _, err = run(capsys, "train", "--resume", tmp_path / "nope")
    assert_user_error(code, err, "does not exist")


def test_resume_finished_run_exits_zero(capsys, tiny_run):
    code, out, _ = run(capsys, "train", "--resume", tiny_run)
    assert code == 0 and "already finished at step 30" in out


def test_presets(capsys, corpus_file, tmp_path):
    code, out, _ = run(capsys, "train", "--list-presets")
    assert code == 0 and "quick" in out and "--max-time 30.0" in out
    code, _, err = run(capsys, "train", "--preset", "nope")
    assert_user_error(code, err, "--preset must be one of", "'nope'")
    # A preset sets defaults; explicit flags still win.
    from charnn.train.config import resolve

    model, cfg = resolve({"preset": "quick", "hidden": 32, "corpus": [str(corpus_file)], "out": str(tmp_path / "r")})
    assert model.hidden == 32 and model.layers == 1 and cfg.max_time == 30.0 and cfg.preset == "quick"
