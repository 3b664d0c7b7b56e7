"""minGRU / minLSTM: the scans equal the paper's step-by-step equations, chunks equal one pass,
long sequences with saturated gates stay finite and exact, gradients are right, and the cores
train, resume, sample and evaluate end to end."""

import math

import pytest
import torch

import charnn
from charnn.errors import CharnnError
from charnn.models import ModelConfig, build_model, minrnn, minscan
from charnn.models.lm import state_tensors
from charnn.models.minrnn import KINDS, MinRNN, g, scan_log, scan_loop
from conftest import TINY_TRAIN

SCANS = ["loop", "log"]
STACKS = {
    "plain": {"block": "plain"},
    "residual": {"block": "residual", "expand": 1.5, "mlp": 2.0},
    "residual-conv": {"block": "residual", "expand": 1.0, "mlp": 0.0, "conv": 4},
}


def paper_steps(kind, pre, h0):
    """The paper's equations (Sections 3.1 and 3.2), one step at a time, in float64.

    pre (B, T, n*S) is the output of the layer's one Linear: [k, v] for minGRU,
    [k_f, k_i, v] for minLSTM.
    """
    pre, h = pre.double(), h0.double()
    S = h.shape[-1]
    out = []
    for t in range(pre.shape[1]):
        p = pre[:, t]
        if kind == "gru":
            z, h_tilde = torch.sigmoid(p[:, :S]), g(p[:, S:])
            h = (1 - z) * h + z * h_tilde
        else:
            f, i, h_tilde = torch.sigmoid(p[:, :S]), torch.sigmoid(p[:, S : 2 * S]), g(p[:, 2 * S :])
            h = f / (f + i) * h + i / (f + i) * h_tilde
        out.append(h)
    return torch.stack(out, 1)


def random_pre(kind, B, T, S, scale=3.0, dtype=torch.float64):
    return torch.randn(B, T, (2 if kind == "gru" else 3) * S, dtype=dtype) * scale


def core(kind, stack="plain", layers=2, input_size=5, hidden=6, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return MinRNN(kind, input_size, hidden, layers, dropout, **STACKS[stack]).double().eval()


# --- the scans ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scan", SCANS)
def test_scans_equal_the_papers_step_by_step_equations(kind, scan):
    torch.manual_seed(0)
    pre = random_pre(kind, 3, 50, 4)
    h0 = torch.randn(3, 4, dtype=torch.float64)  # negative entries too: h0 is kept out of the logs
    got = minrnn.SCAN_FUNCTIONS[scan](kind, pre, h0)
    torch.testing.assert_close(got, paper_steps(kind, pre, h0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_scan_chunking_does_not_change_the_result(kind, monkeypatch):
    torch.manual_seed(1)
    pre, h0 = random_pre(kind, 2, 70, 3, 1.0).requires_grad_(), torch.randn(2, 3).double()
    w = torch.randn(2, 70, 3, dtype=torch.float64)
    torch.testing.assert_close(scan_log(kind, pre, h0, chunk=16), scan_log(kind, pre, h0, chunk=1000),
                               rtol=1e-12, atol=1e-12)
    results = []
    for elements in (6, 6 * 7, 10**6):  # 1 step, 7 steps (70 = 10 chunks), all 70 steps per chunk
        monkeypatch.setattr(minscan, "CHUNK_ELEMENTS", elements)
        h = scan_loop(kind, pre, h0)
        results.append((h, *torch.autograd.grad((h * w).sum(), pre)))
    for other in results[1:]:
        for x, y in zip(results[0], other):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_loop_scan_gradients_are_exact(kind, monkeypatch):
    monkeypatch.setattr(minscan, "CHUNK_ELEMENTS", 6 * 4)  # several chunks: the carry between them
    torch.manual_seed(2)
    pre = random_pre(kind, 2, 9, 3, 2.0).requires_grad_()
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, h: scan_loop(kind, p, h), (pre, h0))
    # and equal to autograd through the log-space scan
    w = torch.randn(2, 9, 3, dtype=torch.float64)
    grads = [torch.autograd.grad((fn(kind, pre, h0) * w).sum(), (pre, h0)) for fn in (scan_loop, scan_log)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scan", SCANS)
def test_long_sequence_with_saturated_gates_is_stable(kind, scan):
    """T = 4096 in float32 with gates saturated at 0 and 1 for long runs: finite and exact."""
    T, B, S = 4096, 2, 8
    torch.manual_seed(3)
    n = 2 if kind == "gru" else 3
    pre = torch.randn(B, T, n * S) * 3
    gates = pre[..., : (n - 1) * S]  # z (minGRU) or f, i (minLSTM) pre-activations
    gates[:, :, S // 4 :] = torch.where(torch.rand(B, T, (n - 1) * S - S // 4) < 0.5, 40.0, -40.0)
    gates[:, : T // 2, S - 1] = -40.0  # update gate (minGRU) / forget gate shut for 2048 steps
    if kind == "lstm":
        gates[:, : T // 2, 2 * S - 1] = -40.0  # both gates shut (f' = i' = 1/2 by the normalisation)
        gates[:, : T // 2, S - 2] = 40.0  # forget open, input shut: remember
        gates[:, : T // 2, 2 * S - 2] = -40.0
    pre = pre.requires_grad_()
    h0 = torch.randn(B, S)
    h = minrnn.SCAN_FUNCTIONS[scan](kind, pre, h0)
    assert h.dtype == torch.float32 and torch.isfinite(h).all()
    ref = paper_steps(kind, pre.detach(), h0)
    # the loop is exact to rounding; the log-space scan loses a little in the cancellation
    # of its two big terms (bounded by chunking)
    tol = 1e-5 if scan == "loop" else 2e-3
    torch.testing.assert_close(h.double(), ref, rtol=tol, atol=tol)
    (h * torch.randn_like(h)).sum().backward()
    assert torch.isfinite(pre.grad).all() and pre.grad.abs().sum() > 0


def test_causal_conv_gradients_are_exact():
    from charnn.models.minrnn import _DepthwiseConv

    torch.manual_seed(4)
    xp = torch.randn(2, 10, 3, dtype=torch.float64, requires_grad=True)  # K - 1 + T = 3 + 7
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_DepthwiseConv.apply, (xp, w, b))
    y = _DepthwiseConv.apply(xp, w, b)  # against the definition: y_t = b + sum_k w_k x_{t+k}
    expected = torch.stack([b + sum(w[:, k] * xp[:, t + k] for k in range(4)) for t in range(7)], 1)
    torch.testing.assert_close(y, expected)


# --- the cores --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scan", SCANS)
def test_plain_core_equals_the_papers_equations(kind, scan):
    m = core(kind)
    m.scan = scan
    x = torch.randn(3, 12, 5, dtype=torch.float64)
    y, h = m(x)
    expected = x
    h0 = torch.zeros(3, 6, dtype=torch.float64)
    for cell in m.cells:
        expected = paper_steps(kind, cell.proj(expected), h0)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h[-1], expected[:, -1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("scan", SCANS)
def test_parallel_pass_equals_stepping_and_chunks(kind, stack, scan):
    m = core(kind, stack)
    m.scan = scan
    x = torch.randn(2, 17, 5, dtype=torch.float64)
    whole, s_whole = m(x)
    # one step at a time (the sampling path)
    state, steps = None, []
    for t in range(17):
        y, state = m(x[:, t : t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-10, atol=1e-12)
    # two chunks with the carried state (TBPTT windows)
    a, s = m(x[:, :6])
    b, s = m(x[:, 6:], s)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-10, atol=1e-12)
    for p, q in zip(state_tensors(s), state_tensors(s_whole)):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    for p, q in zip(state_tensors(state), state_tensors(s_whole)):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stack", list(STACKS))
def test_state_layout_and_dtype(stack):
    m = core("gru", stack, layers=3, hidden=8)
    state = m.initial_state(4)
    for t in state_tensors(state):
        assert t.shape[:2] == (3, 4) and t.dtype == torch.float64 and not t.any()
    _, new = m(torch.randn(4, 5, 5, dtype=torch.float64), state)
    assert [t.shape for t in state_tensors(new)] == [t.shape for t in state_tensors(state)]
    h = state_tensors(state)[0]
    assert h.shape[2] == m.state_size == {"plain": 8, "residual": 12, "residual-conv": 8}[stack]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stack", list(STACKS))
def test_gradients_finite_and_reach_every_parameter(kind, stack):
    m = core(kind, stack).float().train()
    x = torch.randn(2, 40, 5)
    y, _ = m(x, m.initial_state(2))
    (y**2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("stack", ["plain", "residual-conv"])
def test_bfloat16_autocast_keeps_the_scan_in_float32(stack):
    m = core("lstm", stack, hidden=16).float()
    x = torch.randn(2, 30, 5)
    y32, s32 = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, s16 = m(x)
    for t in state_tensors(s16):
        assert t.dtype == torch.float32
    # bfloat16 has 8 bits of mantissa: the projections are rounded, the recurrence is not
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.05)
    torch.testing.assert_close(state_tensors(s16)[0], state_tensors(s32)[0], rtol=0.05, atol=0.05)


# --- configuration --------------------------------------------------------------------------
def test_bad_block_settings_are_reported_together():
    cfg = ModelConfig(model="lstm", block="residual", conv=1, mlp=-1, expand=0, vocab_size=5)
    with pytest.raises(CharnnError) as e:
        build_model(cfg)
    msg = str(e.value)
    for part in ("--block residual needs --model mingru or minlstm", "--expand must be",
                 "--mlp must be", "--conv must be 0 (off) or a kernel size >= 2"):
        assert part in msg
    with pytest.raises(CharnnError, match="--conv only applies to --model mingru or minlstm with --block residual"):
        build_model(ModelConfig(model="mingru", block="plain", conv=2, vocab_size=5))
    with pytest.raises(CharnnError, match=r"--mlp, --conv only apply to .* \(got --model gru, --block plain\)"):
        build_model(ModelConfig(model="gru", mlp=1.0, conv=0, vocab_size=5))


def test_auto_block_is_residual_for_min_cores_only():
    assert ModelConfig(model="mingru").block == "residual"
    assert ModelConfig(model="minlstm").block == "residual"
    assert ModelConfig(model="lstm").block == "plain"
    assert ModelConfig(model="mingru", block="plain").block == "plain"
    cfg = ModelConfig(model="mingru", vocab_size=5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg  # saved resolved
    with pytest.raises(CharnnError, match="--block must be one of plain, residual"):
        build_model(ModelConfig(model="mingru", block="dense", vocab_size=5))


def test_configs_saved_before_the_block_fields_still_load():
    old = {"model": "lstm", "vocab_size": 7, "embed": 8, "hidden": 16, "layers": 1, "dropout": 0.0,
           "input": "embedding"}
    cfg = ModelConfig.from_dict(old)
    assert cfg.block == "plain" and not cfg.problems() and build_model(cfg).core.rnn.hidden_size == 16


def test_parameter_counts():
    # minGRU: one Linear(D, 2H) per layer; minLSTM: Linear(D, 3H) (Sections 3.1, 3.2)
    assert sum(p.numel() for p in MinRNN("gru", 10, 20, 1, 0.0, block="plain").parameters()) == 2 * 20 * (10 + 1)
    assert sum(p.numel() for p in MinRNN("lstm", 10, 20, 1, 0.0, block="plain").parameters()) == 3 * 20 * (10 + 1)


def test_core_defaults_are_the_configs():
    """CORES["mingru"](...) without options builds what ModelConfig(model="mingru") describes."""
    import inspect

    cfg = ModelConfig(model="mingru")
    params = inspect.signature(MinRNN).parameters
    assert {k: params[k].default for k in cfg.block_options()} == cfg.block_options()


# --- end to end -----------------------------------------------------------------------------
MIN_TINY = {"hidden": 16, "embed": 8, "layers": 2}


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [{"model": "mingru", "block": "plain"},
     {"model": "minlstm", "block": "residual", "conv": 3, "mlp": 2.0, "dropout": 0.1}],
    ids=["mingru-plain", "minlstm-residual-conv"],
)
def test_train_resume_sample_eval(corpus_file, tmp_path, extra):
    from test_train import assert_identical

    kw = {"corpus": [str(corpus_file)], **MIN_TINY, **TINY_TRAIN, "lr": 3e-2, "warmup": 5, **extra}
    N, k = 30, 13
    a = charnn.train(out=str(tmp_path / "a"), max_steps=N, progress=False, **kw)
    uniform = math.log(len(charnn.load(tmp_path / "a").vocab))  # the loss of knowing nothing
    assert a.val_loss is not None and a.val_loss < uniform - 0.2  # it learns
    s = charnn.train(out=str(tmp_path / "b"), max_steps=N, progress=False, should_stop=lambda step: step == k, **kw)
    assert s.step == k
    charnn.train(resume=str(tmp_path / "b"), progress=False)
    assert_identical(tmp_path / "a", tmp_path / "b")

    model = charnn.load(tmp_path / "a")
    text = model.generate("ROMEO", length=40, seed=3)
    assert len(text) == 40 and text == model.generate("ROMEO", length=40, seed=3)
    stateful = model.evaluate(corpus_file.read_text(), protocol="stateful")
    windows = model.evaluate(corpus_file.read_text(), protocol="windows")
    assert 0 < stateful.loss < uniform - 0.2 and 0 < windows.loss < uniform - 0.2


def test_cli_accepts_the_block_flags(tmp_path, corpus_file, capsys):
    from charnn.cli import main

    code = main(["train", str(corpus_file), "--out", str(tmp_path / "r"), "--model", "mingru",
                 "--block", "residual", "--expand", "1.5", "--mlp", "2", "--conv", "4",
                 "--hidden", "16", "--embed", "8", "--layers", "1", "--max-steps", "3",
                 "--batch-size", "4", "--seq-len", "16", "--quiet", "--sample-chars", "0"])
    assert code == 0, capsys.readouterr().err
    cfg = charnn.load(tmp_path / "r").config
    assert (cfg.model, cfg.block, cfg.expand, cfg.mlp, cfg.conv) == ("mingru", "residual", 1.5, 2.0, 4)
    code = main(["train", str(corpus_file), "--out", str(tmp_path / "s"), "--model", "gru", "--block", "residual"])
    err = capsys.readouterr().err
    assert code == 2 and "--block residual needs --model mingru or minlstm" in err
