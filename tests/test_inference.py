"""The fast sampling paths equal the model's own step."""

import pytest
import torch

import charnn
from charnn.infer.onnx import onnx_available
from charnn.infer.steps import FusedStep, make_stepper, step_module
from charnn.models import ModelConfig, build_model
from charnn.models.lm import state_tensors


def lm(model, layers, input="embedding"):
    torch.manual_seed(0)
    cfg = ModelConfig(model=model, vocab_size=13, embed=5, hidden=8, layers=layers, input=input)
    return build_model(cfg).double().eval()


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("input", ["embedding", "onehot"])
def test_fused_step_equals_model_step(model, layers, input):
    m = lm(model, layers, input)
    fast = FusedStep(m)
    ids = torch.randint(0, 13, (4, 9))
    state = m.initial_state(4)
    for t in range(9):
        want, state_next = m.step(ids[:, t], state)
        got, *flat = fast(ids[:, t], *state_tensors(state))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        for a, b in zip(flat, state_tensors(state_next)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        state = state_next


def test_stepper_generates_what_the_model_generates(tiny_run):
    ref = charnn.load(tiny_run, backend="torch")
    # the reference: plain CharLM.step through sample.generate
    from charnn.infer.sampling import generate

    ids = ref.prime_ids("ROMEO")
    plain = [int(x) for x in generate(ref.model, [ids], 60, temperature=0.9, seed=3, banned=ref.banned)]
    fast = [int(x) for x in generate(ref.stepper, [ids], 60, temperature=0.9, seed=3, banned=ref.banned)]
    assert plain == fast


def test_generic_cores_fall_back_to_model_step():
    m = lm("lstm", 1)
    m.core.__class__ = type("Other", (torch.nn.Module,), {"forward": m.core.forward,
                                                         "initial_state": m.core.initial_state})
    assert not isinstance(step_module(m), FusedStep)


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_onnx_step_matches_torch(model):
    m = lm(model, 2).float()
    torch_step = make_stepper(m, "torch")
    onnx_step = make_stepper(m, "onnx")
    ids = torch.randint(0, 13, (3,))
    state = m.initial_state(3)
    for _ in range(5):
        a, sa = torch_step.step(ids, state)
        b, sb = onnx_step.step(ids, state)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        state, ids = sa, a.argmax(-1)


def copy_run(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".onnx"):
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
def test_export_cli_parity_int8_cost_and_auto_pickup(capsys, tiny_run, tmp_path):
    import re

    from charnn.cli import main

    run = copy_run(tiny_run, tmp_path / "run")
    assert charnn.load(run).stepper.backend == "torch"  # nothing exported yet
    assert main(["export", str(run)]) == 0
    out = capsys.readouterr().out
    diff = float(re.search(r"vs PyTorch over 64 steps: (\S+)", out).group(1))
    assert diff < 1e-4
    assert (run / "step.onnx").is_file()
    loaded = charnn.load(run)
    assert loaded.stepper.backend == "onnx"  # sample picks the export up
    greedy = charnn.load(run, backend="torch").generate("ROMEO", 40, temperature=0)
    assert loaded.generate("ROMEO", 40, temperature=0) == greedy

    assert main(["export", str(run), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    exported, reference = map(float, re.search(r"stepwise\): (\S+) bpc exported vs (\S+) bpc", out).groups())
    assert abs(exported - reference) < 0.05
    int8 = charnn.load(run, quantize="int8")
    assert int8.stepper.backend == "onnx" and int8.stepper.quantize == "int8"
    assert len(int8.generate("ROMEO", 30, seed=1)) == 30


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
def test_stale_or_broken_export_is_replaced(tiny_run, tmp_path):
    from charnn.infer.onnx import onnx_digest

    run = copy_run(tiny_run, tmp_path / "run")
    (run / "step.onnx").write_bytes(b"not an onnx model")
    m = charnn.load(run, backend="onnx")  # re-exported: the file did not match the weights
    assert onnx_digest((run / "step.onnx").read_bytes()) == m.info["sha256"]
    assert len(m.generate("R", 10)) == 10


def test_export_flags_are_the_settings_of_export_config():
    import argparse
    from dataclasses import fields

    from charnn.infer.export import ExportConfig
    from charnn.settings import help_of
    from test_sample import subcommand

    options = [a for a in subcommand("export")._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} == {f.name for f in fields(ExportConfig)}
    for a in options:
        assert a.default is argparse.SUPPRESS
        assert a.help == help_of(ExportConfig, a.dest)
