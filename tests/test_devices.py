"""Devices and precision: --device, --dtype, float16 gradient scaling, checkpoints on any device.

The GPU tests skip cleanly on a machine without CUDA (this project's CI); the float16
gradient-scaling path, which GPUs take, is also exercised on CPU with the vanilla RNN,
the one core oneDNN runs in float16.
"""

import importlib
import json
import math
import subprocess

import pytest
import torch

import charnn
from charnn import checkpoint
from charnn.errors import CharnnError
from charnn.train.config import resolve
from conftest import TINY_MODEL, TINY_TRAIN
from test_train import assert_identical

config_module = importlib.import_module("charnn.train.config")  # charnn.train is also the function
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


def settings(corpus, out, **kw):
    return {"corpus": [str(corpus)], "out": str(out), **TINY_MODEL, **TINY_TRAIN, **kw}


def test_float16_needs_a_gpu(corpus_file, tmp_path):
    with pytest.raises(CharnnError, match="--dtype float16 needs a GPU.*bfloat16 or float32"):
        resolve(settings(corpus_file, tmp_path / "r", dtype="float16", device="cpu"))


def test_float16_gradient_scaling_resumes_exactly(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "check_dtype", lambda dtype, device: None)
    # Start the loss scale at 2**24 so that the first steps' float16 gradients overflow:
    # the scaler must skip them (not report divergence) and halve the scale each time.
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, **kw: real(device, init_scale=2.0**24, **kw))
    kw = {"model": "rnn", "dtype": "float16", "device": "cpu", "max_steps": 30}
    charnn.train(**settings(corpus_file, tmp_path / "a", **kw), progress=False)
    # Interrupted while the scale is still coming down: the resume point must carry it.
    charnn.train(**settings(corpus_file, tmp_path / "b", **kw), progress=False, should_stop=lambda s: s == 3)
    mid = checkpoint.load_checkpoint(tmp_path / "b").trainer["scaler"]
    assert mid["scale"] < 2.0**24
    charnn.train(resume=str(tmp_path / "b"), progress=False)
    assert_identical(tmp_path / "a", tmp_path / "b")
    end = checkpoint.load_checkpoint(tmp_path / "a").trainer["scaler"]
    assert end == checkpoint.load_checkpoint(tmp_path / "b").trainer["scaler"]
    assert 0 < end["scale"] < mid["scale"]
    assert checkpoint.read_metrics(tmp_path / "a")[-1]["train_loss"] < math.log(36)  # it learned


def test_float32_runs_have_no_scaler_state(tiny_run):
    assert checkpoint.load_checkpoint(tiny_run).trainer["scaler"] == {}


def test_resume_on_a_missing_gpu_says_so(tiny_run, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import shutil

    run = tmp_path / "gpu-run"
    shutil.copytree(tiny_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["device"] = "cuda"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CharnnError, match="no CUDA GPU is available here; use --device cpu"):
        charnn.train(resume=str(run), max_steps=40, progress=False)
    s = charnn.train(resume=str(run), max_steps=40, device="cpu", progress=False)
    assert s.step == 40


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_trains_on_gpu_and_loads_on_any_device(corpus_file, tmp_path, dtype):
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    run = tmp_path / dtype
    s = charnn.train(**settings(corpus_file, run, device="cuda", dtype=dtype, max_steps=60), progress=False)
    assert s.val_loss is not None and math.isfinite(s.val_loss) and s.val_loss < math.log(36)
    ck = checkpoint.load_checkpoint(run)
    assert "rng.cuda" in ck.extra and all(t.device.type == "cpu" for t in ck.model.values())
    assert (ck.trainer["scaler"] != {}) == (dtype == "float16")
    on_cpu, on_gpu = charnn.load(run, device="cpu"), charnn.load(run, device="cuda")
    assert next(on_gpu.model.parameters()).is_cuda and not next(on_cpu.model.parameters()).is_cuda
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    torch.testing.assert_close(on_gpu.model(ids.cuda())[0].cpu(), on_cpu.model(ids)[0], rtol=1e-4, atol=1e-4)
    assert len(on_gpu.generate("ROMEO", length=20, seed=1)) == 20


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_resume_continues_the_run(corpus_file, tmp_path, dtype):
    """On a GPU some kernels (the embedding's backward) add with atomics, so a resumed run
    matches the uninterrupted one closely rather than bit for bit; the counters, the data
    position and the loss scale carry over exactly."""
    kw = {"device": "cuda", "dtype": dtype, "max_steps": 40}
    charnn.train(**settings(corpus_file, tmp_path / "a", **kw), progress=False)
    charnn.train(**settings(corpus_file, tmp_path / "b", **kw), progress=False, should_stop=lambda s: s == 17)
    charnn.train(resume=str(tmp_path / "b"), progress=False)
    a, b = checkpoint.load_checkpoint(tmp_path / "a"), checkpoint.load_checkpoint(tmp_path / "b")
    assert a.trainer["step"] == b.trainer["step"] == 40
    assert a.trainer["batches"] == b.trainer["batches"] and a.trainer["scaler"] == b.trainer["scaler"]
    for k in a.model:
        torch.testing.assert_close(b.model[k], a.model[k], rtol=1e-3, atol=1e-3)
    # And a GPU run resumes on the CPU.
    if dtype == "float32":
        s = charnn.train(resume=str(tmp_path / "a"), device="cpu", max_steps=45, progress=False)
        assert s.step == 45


@needs_two_gpus
@pytest.mark.slow
def test_two_gpus_with_nccl_match_one_gpu(corpus_file, tmp_path):
    from test_distributed import TORCHRUN, flags

    args = flags(corpus_file, tmp_path / "two")  # 40 steps, global batch 4, float32
    p = subprocess.run([*TORCHRUN, "-m", "charnn", "train", *args, "--device", "cuda"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    charnn.train(**settings(corpus_file, tmp_path / "one", device="cuda", dtype="float32", max_steps=40),
                 progress=False)
    m1, m2 = checkpoint.read_metrics(tmp_path / "one"), checkpoint.read_metrics(tmp_path / "two")
    assert [r["step"] for r in m1] == [r["step"] for r in m2]
    for a, b in zip(m1, m2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
    assert checkpoint.load_checkpoint(tmp_path / "two").trainer["world_size"] == 2


def test_memory_limit_reads_the_machine_and_a_container_limit(tmp_path, monkeypatch):
    import charnn.devices as devices
    from charnn.devices import format_bytes, memory_limit

    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("max\n")
    v1.write_text(f"{2**62}\n")  # cgroup v1's "no limit"
    monkeypatch.setattr(devices, "CGROUP_LIMITS", (str(v2), str(v1)))
    physical, name = memory_limit("cpu")
    assert physical > 2**26 and name == "this machine's memory"
    v2.write_text(f"{physical // 2}\n")
    assert memory_limit("cpu") == (physical // 2, "this container's memory limit")
    assert [format_bytes(n) for n in (0, 1023, 1536, 2**30, 3 * 2**50, 2**70)] == [
        "0 bytes", "1,023 bytes", "1.5 KB", "1.0 GB", "3.0 PB", "1,048,576.0 PB"]


@needs_cuda
def test_memory_limit_of_a_gpu_is_its_own():
    from charnn.devices import memory_limit

    total, name = memory_limit("cuda:0")
    assert total == torch.cuda.get_device_properties(0).total_memory and name == "the memory of cuda:0"
