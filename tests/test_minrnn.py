"""minGRU / minLSTM: the scans equal the paper's step-by-step equations, chunks equal one pass,
long sequences with saturated gates stay finite and exact, gradients are right, and the cores
train, resume, sample and evaluate end to end."""

import pytest
import torch

import charnn
from charnn.errors import CharnnError
from charnn.models import ModelConfig, build_model, minrnn
from charnn.models.lm import state_tensors
from charnn.models.minrnn import MinRNN, g, scan_log, scan_loop
from conftest import TINY_TRAIN

SCANS = ["loop", "log"]
STACKS = {
    "plain": {},
    "residual": {"block": "residual", "expand": 1.5, "mlp": 2.0},
    "residual-conv": {"block": "residual", "expand": 1.0, "mlp": 0.0, "conv": 4},
}


def reference_scan(r, v, h0):
    """h_t = sigmoid(r_t) h_{t-1} + sigmoid(-r_t) g(v_t), one step at a time, in float64."""
    h, out = h0.double(), []
    for t in range(r.shape[0]):
        a = torch.sigmoid(r[t].double())
        h = a * h + (1 - a) * g(v[t].double())
        out.append(h)
    return torch.stack(out)


def paper_cell(kind, cell, x, h):
    """The paper's equations (Sections 3.1.2 and 3.2.2) written out, one step at a time."""
    S = cell.state_size
    W, b = cell.proj.weight, cell.proj.bias
    out = []
    for t in range(x.shape[0]):
        pre = x[t] @ W.T + b
        if kind == "gru":
            z, h_tilde = torch.sigmoid(pre[:, :S]), g(pre[:, S:])
            h = (1 - z) * h + z * h_tilde
        else:
            f, i, h_tilde = torch.sigmoid(pre[:, :S]), torch.sigmoid(pre[:, S : 2 * S]), g(pre[:, 2 * S :])
            h = f / (f + i) * h + i / (f + i) * h_tilde
        out.append(h)
    return torch.stack(out)


def core(kind, stack="plain", layers=2, input_size=5, hidden=6, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return MinRNN(kind, input_size, hidden, layers, dropout, **STACKS[stack]).double().eval()


# --- the scans ------------------------------------------------------------------------------
@pytest.mark.parametrize("scan", SCANS)
def test_scans_equal_the_step_by_step_recurrence(scan):
    torch.manual_seed(0)
    r, v = torch.randn(50, 3, 4, dtype=torch.float64) * 3, torch.randn(50, 3, 4, dtype=torch.float64) * 3
    h0 = torch.randn(3, 4, dtype=torch.float64)  # negative entries too: h0 is kept out of the logs
    got = minrnn.SCAN_FUNCTIONS[scan](r, v, h0)
    torch.testing.assert_close(got, reference_scan(r, v, h0), rtol=1e-12, atol=1e-12)


def test_log_scan_chunks_agree_with_one_chunk():
    torch.manual_seed(1)
    r, v, h0 = torch.randn(70, 2, 3).double(), torch.randn(70, 2, 3).double(), torch.randn(2, 3).double()
    torch.testing.assert_close(scan_log(r, v, h0, chunk=16), scan_log(r, v, h0, chunk=1000), rtol=1e-12, atol=1e-12)


def test_loop_scan_gradients_are_exact():
    torch.manual_seed(2)
    r = (torch.randn(9, 2, 3, dtype=torch.float64) * 2).requires_grad_()
    v = (torch.randn(9, 2, 3, dtype=torch.float64) * 2).requires_grad_()
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(scan_loop, (r, v, h0))
    # and equal to autograd through the log-space scan
    w = torch.randn(9, 2, 3, dtype=torch.float64)
    grads = [torch.autograd.grad((fn(r, v, h0) * w).sum(), (r, v, h0)) for fn in (scan_loop, scan_log)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scan", SCANS)
def test_long_sequence_with_saturated_gates_is_stable(scan):
    """T = 4096, float32, gates within 1e-13 of 0 and of 1 in long runs: finite and exact."""
    T, B, S = 4096, 2, 8
    torch.manual_seed(3)
    # keep-logits r: stretches of +-30 (a = 1 - 1e-13 or 1e-13), and some ordinary values
    r = torch.where(torch.rand(T, B, S) < 0.5, 30.0, -30.0)
    r[:, :, :2] = torch.randn(T, B, 2) * 4
    r[: T // 2, :, 2] = 30.0  # remembers for 2048 steps, then forgets
    r = r.requires_grad_()
    v = (torch.randn(T, B, S) * 3).requires_grad_()
    h0 = torch.randn(B, S)
    h = minrnn.SCAN_FUNCTIONS[scan](r, v, h0)
    assert torch.isfinite(h).all()
    ref = reference_scan(r.detach(), v.detach(), h0)
    # float32 in, float32 out: the loop is exact to rounding; the log-space scan loses a little
    # in the cancellation of its two big terms (bounded by chunking).
    tol = 1e-5 if scan == "loop" else 2e-3
    torch.testing.assert_close(h.double(), ref, rtol=tol, atol=tol)
    (h * torch.randn_like(h)).sum().backward()
    assert torch.isfinite(r.grad).all() and torch.isfinite(v.grad).all()
    assert r.grad.abs().sum() > 0 and v.grad.abs().sum() > 0


# --- the cores --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("scan", SCANS)
def test_plain_core_equals_the_papers_equations(kind, scan):
    m = core(kind)
    m.scan = scan
    x = torch.randn(3, 12, 5, dtype=torch.float64)
    y, h = m(x)
    expected = x.transpose(0, 1)  # (T, B, D)
    h0 = torch.zeros(3, 6, dtype=torch.float64)
    for cell in m.cells:
        expected = paper_cell(kind, cell, expected, h0)
    torch.testing.assert_close(y, expected.transpose(0, 1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h[-1], expected[-1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
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


@pytest.mark.parametrize("kind", ["gru", "lstm"])
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
    with pytest.raises(CharnnError, match="--conv only apply with --block residual"):
        build_model(ModelConfig(model="mingru", conv=4, vocab_size=5))
    with pytest.raises(CharnnError, match="--block must be one of plain, residual"):
        build_model(ModelConfig(model="mingru", block="dense", vocab_size=5))


def test_configs_saved_before_the_block_fields_still_load():
    old = {"model": "lstm", "vocab_size": 7, "embed": 8, "hidden": 16, "layers": 1, "dropout": 0.0,
           "input": "embedding"}
    cfg = ModelConfig.from_dict(old)
    assert cfg.block == "plain" and not cfg.problems()


def test_parameter_counts():
    # minGRU: one Linear(D, 2H) per layer; minLSTM: Linear(D, 3H) (Section 3.1.2, 3.2.2)
    assert sum(p.numel() for p in MinRNN("gru", 10, 20, 1, 0.0).parameters()) == 2 * 20 * (10 + 1)
    assert sum(p.numel() for p in MinRNN("lstm", 10, 20, 1, 0.0).parameters()) == 3 * 20 * (10 + 1)


# --- end to end -----------------------------------------------------------------------------
MIN_TINY = {"hidden": 16, "embed": 8, "layers": 2}


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [{"model": "mingru"},
     {"model": "minlstm", "block": "residual", "conv": 3, "mlp": 2.0, "dropout": 0.1}],
    ids=["mingru-plain", "minlstm-residual-conv"],
)
def test_train_resume_sample_eval(corpus_file, tmp_path, extra):
    from test_train import assert_identical

    kw = {"corpus": [str(corpus_file)], **MIN_TINY, **TINY_TRAIN, "lr": 3e-2, "warmup": 5, **extra}
    N, k = 30, 13
    a = charnn.train(out=str(tmp_path / "a"), max_steps=N, progress=False, **kw)
    assert a.val_loss is not None and a.val_loss < 3.1  # it learns (uniform: log(30) = 3.4)
    s = charnn.train(out=str(tmp_path / "b"), max_steps=N, progress=False, should_stop=lambda step: step == k, **kw)
    assert s.step == k
    charnn.train(resume=str(tmp_path / "b"), progress=False)
    assert_identical(tmp_path / "a", tmp_path / "b")

    model = charnn.load(tmp_path / "a")
    text = model.generate("ROMEO", length=40, seed=3)
    assert len(text) == 40 and text == model.generate("ROMEO", length=40, seed=3)
    stateful = model.evaluate(corpus_file.read_text(), protocol="stateful")
    windows = model.evaluate(corpus_file.read_text(), protocol="windows")
    assert 0 < stateful.loss < 3.0 and 0 < windows.loss < 3.0


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
