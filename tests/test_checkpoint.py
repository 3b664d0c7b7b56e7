import json
import os

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
