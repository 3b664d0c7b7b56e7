"""--backend native: one LSTM stream's step in C equals the torch step, builds once, fails in one line."""

import contextlib
import io
import os
import shutil
import subprocess

import pytest
import torch

import charnn
from charnn import cli
from charnn.errors import CharnnError
from charnn.infer import native
from charnn.infer.sampling import generate
from charnn.infer.steps import FusedStep, make_stepper
from charnn.models import ModelConfig, build_model

HAVE_CC = bool(os.environ.get("CC") or any(shutil.which(c) for c in ("cc", "gcc", "clang")))
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    """One kernel build for the module, in a cache of its own (not the user's ~/.cache)."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("xdg")
        mp.setenv("XDG_CACHE_HOME", str(root))
        yield root / "charnn" / "native"


def lstm(layers, hidden=37, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(model="lstm", layers=layers, hidden=hidden, embed=5, vocab_size=13)).eval()


def steps(stepper, lm, n=20):
    """n steps from a random state, each fed the argmax of the last: the logits and states seen."""
    torch.manual_seed(1)
    state = tuple(torch.randn_like(t) for t in lm.initial_state(1))
    ids, seen = torch.tensor([4]), []
    with torch.inference_mode():
        for _ in range(n):
            logits, state = stepper.step(ids, state)
            seen.append((logits, *state))
            ids = logits.argmax(-1)
    return seen


@needs_cc
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_native_step_equals_torch_step(layers):
    lm = lstm(layers)
    for want, got in zip(steps(make_stepper(lm, "torch"), lm), steps(make_stepper(lm, "native"), lm)):
        for a, b in zip(want, got):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)  # float32 sums in another order


@needs_cc
def test_threads_do_not_change_the_numbers():
    lm = lstm(2, hidden=41)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = steps(make_stepper(lm, "native"), lm)
        torch.set_num_threads(2)
        two = steps(make_stepper(lm, "native"), lm)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for x, y in zip(one, two) for a, b in zip(x, y))


@needs_cc
def test_batches_go_to_the_torch_step():
    lm = lstm(2)
    fast, plain = make_stepper(lm, "native"), make_stepper(lm, "torch")
    state = tuple(torch.randn_like(t) for t in lm.initial_state(3))
    ids = torch.tensor([1, 5, 7])
    with torch.inference_mode():
        a, sa = fast.step(ids, state)
        b, sb = plain.step(ids, state)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(sa, sb))


@needs_cc
def test_a_seed_samples_the_same_text_as_torch(tiny_run):
    ref = charnn.load(tiny_run, backend="torch")
    fast = charnn.load(tiny_run, backend="native")
    ids = ref.prime_ids("ROMEO")
    want = [int(x) for x in generate(ref.stepper, [ids], 200, temperature=0.9, seed=3, banned=ref.banned)]
    got = [int(x) for x in generate(fast.stepper, [ids], 200, temperature=0.9, seed=3, banned=ref.banned)]
    assert got == want


@needs_cc
def test_the_kernel_is_built_once_and_atomically(cache, monkeypatch):
    native.build()  # built (by an earlier test, or now)
    compiles = []
    real = subprocess.run

    def run(args, **kw):
        if "-shared" in args:
            compiles.append(args)
        return real(args, **kw)

    monkeypatch.setattr(native.subprocess, "run", run)
    path = native.build()
    assert compiles == [] and path.parent == cache and path.suffix == ".so"
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind


def test_no_compiler_is_one_line(tiny_run, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = cli.main(["sample", str(tiny_run), "--backend", "native", "--length", "5", "--seed", "1"])
    assert rc == 2 and len(err.getvalue().splitlines()) == 1, err.getvalue()
    assert "C compiler" in err.getvalue() and "--backend torch" in err.getvalue()


def test_a_failing_compiler_is_one_clear_error_and_leaves_nothing(monkeypatch, tmp_path):
    cc = tmp_path / "broken-cc"
    cc.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo broken 1.0; exit 0; fi\n"
                  "echo 'fatal: out of cheese' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CC", str(cc))
    with pytest.raises(CharnnError, match="could not build the kernel \\(fatal: out of cheese\\)"):
        native.build()
    assert list((tmp_path / "xdg" / "charnn" / "native").iterdir()) == []


@pytest.mark.parametrize("model, quantize", [("gru", "none"), ("rnn", "none"), ("gru", "int8")])
def test_what_native_does_not_run_is_refused(model, quantize):
    lm = build_model(ModelConfig(model=model, layers=1, hidden=8, embed=5, vocab_size=13)).eval()
    with pytest.raises(CharnnError, match="--backend native runs one LSTM stream on the CPU"):
        make_stepper(lm, "native", quantize)


def int8_linear(lin):
    """What the native int8 kernel computes for `lin`: int8 rows (quantize_rows) against the
    input quantised to integers with one scale (its largest |x| becomes 127), summed exactly."""
    q, scale = native.quantize_rows(lin.weight.detach())

    def forward(x):
        sx = x.abs().amax(dim=-1, keepdim=True) / 127
        sx = torch.where(sx > 0, sx, torch.ones_like(sx))
        acc = (torch.round(x / sx).double() @ q.double().T).float()  # integers: exact
        out = acc * (sx * scale)
        return out + lin.bias if lin.bias is not None else out

    return forward


@needs_cc
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_native_int8_is_integer_products_of_quantised_rows_and_inputs(layers):
    """--backend native --quantize int8: every matrix in int8 rows with one scale each, every
    layer's input quantised on the fly, the products exact integer sums (AVX-512 VNNI where
    the CPU has it, plain C elsewhere: the same numbers)."""
    lm = lstm(layers, hidden=70)  # rows of 70 and 140: whole 64-byte blocks and a tail
    fast = make_stepper(lm, "native", "int8")
    ref = FusedStep(lm)
    for lin in [ref.first, *ref.deeper, ref.head]:
        lin.forward = int8_linear(lin)

    class Reference:
        def step(self, ids, state):
            logits, h, c = ref(ids, *state)
            return logits, (h, c)

    for want, got in zip(steps(Reference(), lm), steps(fast, lm)):
        for a, b in zip(want, got):
            torch.testing.assert_close(b, a, rtol=0, atol=2e-6)


def test_quantize_rows_is_symmetric_per_row():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.01]])
    q, scale = native.quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert q.abs().amax(dim=1).tolist() == [127, 0, 127]  # the largest |w| of a row is 127; a zero row stays 0
    assert torch.all((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7)


@needs_cc
@pytest.mark.parametrize("temperature", [0.9, 1e-40, float("inf")])
def test_chunked_generation_draws_what_the_torch_loop_draws(tiny_run, temperature):
    """One stream with nothing cut draws CHUNK characters per C call (sample_steps); the ids are
    the torch loop's, at an ordinary temperature, at one so small that float32 cannot carry
    logits / t (every row falls back to sample_rows with its own noise row), and at inf."""
    from charnn.infer import sampling

    ref = charnn.load(tiny_run, backend="torch")
    fast = charnn.load(tiny_run, backend="native")
    assert fast.stepper.sample_steps is not None and getattr(ref.stepper, "sample_steps", None) is None
    ids = ref.prime_ids("ROMEO")
    n = 2 * sampling.CHUNK + 7  # whole chunks and a part
    want = [int(x) for x in generate(ref.stepper, [ids], n, temperature=temperature, seed=5, banned=ref.banned)]
    got = [int(x) for x in generate(fast.stepper, [ids], n, temperature=temperature, seed=5, banned=ref.banned)]
    assert got == want and len(got) == n
    assert not set(got) & set(ref.banned)


@needs_cc
def test_sample_steps_draws_then_steps_and_stops_where_float32_cannot_carry():
    lm = lstm(2)
    native_step, plain = make_stepper(lm, "native")._native, make_stepper(lm, "torch")
    state = tuple(torch.randn_like(t) for t in lm.initial_state(1))
    noise = torch.empty(4, 13).exponential_(generator=torch.Generator().manual_seed(0))
    banned = torch.ones(13, dtype=torch.uint8)
    banned[12] = 0  # only id 12 may be drawn
    ids, logits, (h, c) = native_step.sample_steps(torch.zeros(1, 13), state, noise, 1.0, banned)
    assert ids.tolist() == [12] * 4
    want, want_state = None, state
    with torch.inference_mode():
        for _ in range(4):
            want, want_state = plain.step(torch.tensor([12]), want_state)
    torch.testing.assert_close(logits, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(h, want_state[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(c, want_state[1], rtol=0, atol=1e-6)

    last = torch.zeros(1, 13)
    last[0, 3] = float("nan")  # sample_next would hand this row to sample_rows: so does the kernel
    ids, logits, (h, c) = native_step.sample_steps(last, state, noise, 1.0, torch.zeros(13, dtype=torch.uint8))
    assert ids.numel() == 0
    assert torch.equal(logits.isnan(), last.isnan()) and torch.equal(logits.nan_to_num(), last.nan_to_num())
    assert torch.equal(h, state[0]) and torch.equal(c, state[1])


@needs_cc
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_the_plainest_build_computes_the_same_step(quantize, monkeypatch, tmp_path):
    """Where the compiler has no OpenMP and no -march=native (the last flag set build() tries),
    the kernel runs on one thread with generic code: the same step, to float32 rounding."""
    lm = lstm(2, hidden=70)
    want = steps(make_stepper(lm, "native", quantize), lm)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "FLAG_SETS", ([],))
    plain = make_stepper(lm, "native", quantize)
    assert native.build().parent == tmp_path / "charnn" / "native"
    for a, b in zip(want, steps(plain, lm)):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=0, atol=2e-6)
