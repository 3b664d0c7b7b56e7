import json
import os
import re

import pytest
import torch

import charnn
from charnn import checkpoint
from charnn.errors import CharnnError
from charnn.files import atomic_write


def copy_run(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write(p, b"old")
    atomic_write(p, b"new")
    assert p.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    atomic_write(p, b"old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(p, b"new")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_run_directory_has_no_pickles(tiny_run):
    names = {f.name for f in tiny_run.iterdir()}
    assert {"config.json", "vocab.json", "model.safetensors", "last.safetensors", "metrics.jsonl"} <= names
    for f in tiny_run.iterdir():
        assert not f.read_bytes().startswith(b"\x80")  # a pickle's protocol byte
        assert "PK" != f.read_bytes()[:2].decode("latin-1")  # torch.save's zip


def test_checkpoint_round_trip(tiny_run):
    ck = checkpoint.load_checkpoint(tiny_run)
    assert ck.trainer["step"] == 30
    assert "rng.torch" in ck.extra
    m = charnn.load(tiny_run)
    params = list(m.model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2]},
                             {"params": [p for p in params if p.dim() < 2]}])
    opt.load_state_dict(ck.optimizer)  # the optimizer state is a valid torch state_dict
    assert len(opt.state) == len(list(m.model.parameters()))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "vocab.json"])
def test_missing_file(tiny_run, tmp_path, name):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / name).unlink()
    with pytest.raises(CharnnError, match=r"missing|incomplete|cannot read|not a charnn run"):
        charnn.load(run)


def test_truncated_weights(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CharnnError, match="truncated or corrupt"):
        charnn.load(run)


def test_tampered_weights(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # flip a byte inside the last tensor
    (run / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CharnnError, match="fails its checksum"):
        charnn.load(run)


def test_tampered_config(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["hidden"] = 17
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CharnnError, match="does not match config.json"):
        charnn.load(run)
    (run / "config.json").write_text("{not json")
    with pytest.raises(CharnnError, match="cannot be read as JSON"):
        charnn.load(run)


def test_tampered_vocab(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    v = json.loads((run / "vocab.json").read_text())
    v["chars"][3] = "\u263a"
    v["chars"].sort()
    (run / "vocab.json").write_text(json.dumps(v))
    with pytest.raises(CharnnError, match="vocab.json does not match config.json"):
        charnn.load(run)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(CharnnError, match="does not exist"):
        charnn.load(tmp_path / "nothing")
    with pytest.raises(CharnnError, match="not a charnn run directory"):
        charnn.load(tmp_path)


# --- the integrity check covers the metadata (issue 12, class 2) ------------------------------
def _header(path):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return data, n


def _edit_header(path, old: bytes, new: bytes):
    """Change the header in place, keeping its length (the file stays well-formed)."""
    data, n = _header(path)
    assert len(old) == len(new) and data[8 : 8 + n].count(old) == 1, old
    path.write_bytes(data[:8] + data[8 : 8 + n].replace(old, new) + data[8 + n :])


@pytest.mark.parametrize("name, load", [("model.safetensors", charnn.load),
                                        ("last.safetensors", checkpoint.load_checkpoint)])
def test_changed_metadata_fails_the_checksum(tiny_run, tmp_path, name, load):
    run = copy_run(tiny_run, tmp_path / "run")
    _edit_header(run / name, b'\\"step\\": 30', b'\\"step\\": 99')  # a changed step is not believed
    with pytest.raises(CharnnError, match="fails its checksum"):
        load(run)


@pytest.mark.parametrize("name, load", [("model.safetensors", charnn.load),
                                        ("last.safetensors", checkpoint.load_checkpoint)])
def test_garbled_metadata_is_one_line(tiny_run, tmp_path, name, load):
    run = copy_run(tiny_run, tmp_path / "run")
    _edit_header(run / name, b'\\"step\\": 30', b'\\"step\\": 3{')  # no longer JSON
    with pytest.raises(CharnnError, match=f"{name} is truncated or corrupt"):
        load(run)


def test_files_written_before_the_checksum_still_load(tiny_run, tmp_path):
    """A run written by charnn 0.1.0: "sha256" over the tensors only, no "checksum", no "kind"."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    run = copy_run(tiny_run, tmp_path / "run")
    for name in ("model.safetensors", "last.safetensors"):
        data, n = _header(run / name)
        metadata = json.loads(data[8 : 8 + n])["__metadata__"]
        meta = json.loads(metadata.pop("meta"))
        meta.pop("kind", None)
        metadata.pop("checksum", None)
        metadata["meta"] = json.dumps(meta)
        (run / name).write_bytes(st_save(st_load(data), metadata=metadata))
    assert charnn.load(run).info == charnn.load(tiny_run).info
    assert checkpoint.load_checkpoint(run).trainer == checkpoint.load_checkpoint(tiny_run).trainer


# --- config.json is checked before anything is built (class 3) --------------------------------
def _set_config(run, edit):
    cfg = json.loads((run / "config.json").read_text())
    edit(cfg)
    (run / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"].update(dropout="x"), r"model\.dropout must be a number, got 'x'"),
    (lambda c: c.update(model="lstm"), r'"model" must be a JSON object of settings'),
    (lambda c: c["model"].update(hidden=[16]), r"model\.hidden must be an integer, got \[16\]"),
    (lambda c: c["model"].update(layers=True), r"model\.layers must be an integer, got True"),
    (lambda c: c["model"].update(vocab_size=str(c["model"]["vocab_size"])), r"model\.vocab_size must be an integer"),
    (lambda c: c["model"].update(hidden=10**9), r"model\.hidden is 1,000,000,000, more than any model"),
    (lambda c: c["model"].update(layers=10**6), r"model\.layers must be at most 1024|does not match config\.json|memory"),
    (lambda c: c["model"].update(hidden=4096), r"does not match config\.json \(it holds"),
    (lambda c: c["model"].update(block="residual"), r"model\.block residual needs model\.model mingru"),
    (lambda c: c.update(train="x"), r'"train" must be a JSON object'),
    (lambda c: c["train"].update(encoding=[16]), r"train\.encoding must be a string"),
])
def test_config_is_checked_before_building(tiny_run, tmp_path, monkeypatch, edit, message):
    run = copy_run(tiny_run, tmp_path / "run")
    _set_config(run, edit)
    monkeypatch.setattr(checkpoint, "build_model", lambda *a: pytest.fail("a model was built"))
    with pytest.raises(CharnnError, match=message) as e:
        checkpoint.load_run(run)
    assert "config.json" in str(e.value) and "--" not in str(e.value)  # the file's keys, not flags
    assert not re.search(r"has (\d+) tokens but .* expects \1\b", str(e.value))


# --- what a message says (class 7) ------------------------------------------------------------
def test_resume_point_copied_over_the_weights(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "model.safetensors").write_bytes((tiny_run / "last.safetensors").read_bytes())
    with pytest.raises(CharnnError, match="holds the resume point of a run, not its best weights") as e:
        charnn.load(run)
    assert "vocabulary" not in str(e.value)


def test_weights_copied_over_the_resume_point(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    (run / "last.safetensors").write_bytes((tiny_run / "model.safetensors").read_bytes())
    with pytest.raises(CharnnError, match="holds the best weights of a run, not its resume point"):
        checkpoint.load_checkpoint(run)


@pytest.mark.parametrize("chars, message", [
    (["b", "a"], "distinct and sorted"), (["ab"], "single code points"), ("abc", "must be a list of strings"),
    ([1, 2], "must be a list of strings"),
])
def test_vocab_errors_name_the_file(tiny_run, tmp_path, chars, message):
    run = copy_run(tiny_run, tmp_path / "run")
    v = json.loads((run / "vocab.json").read_text())
    v["chars"] = chars
    (run / "vocab.json").write_text(json.dumps(v))
    with pytest.raises(CharnnError, match=rf"{re.escape(str(run / 'vocab.json'))} is malformed \(.*{message}"):
        charnn.load(run)


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru", "rnn-scratch", "lstm-scratch", "gru-scratch",
                                   "mingru", "minlstm"])
def test_weight_count_without_building_is_exact(model):
    from charnn.models import ModelConfig, build_model

    options = [{}, {"input": "onehot"}]
    if model in ("mingru", "minlstm"):
        options += [{"block": "plain"}, {"expand": 1.5, "mlp": 0, "conv": 0}, {"conv": 3, "mlp": 3.0}]
    for extra in options:
        for layers in (1, 2, 3):
            config = ModelConfig(model=model, vocab_size=11, embed=5, hidden=6, layers=layers, **extra)
            real = sum(t.numel() for t in build_model(config).state_dict().values())
            assert config.parameter_count() == real, (extra, layers)
