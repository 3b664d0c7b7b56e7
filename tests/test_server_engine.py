"""The continuous-batching engine behind charnn serve, without HTTP, and the helpers it relies on:
sample.sample_rows (batched sample_next), models.lm.select_state / cat_states, block noise."""

from __future__ import annotations

import random
import time

import pytest
import torch

import charnn
from charnn.infer.sampling import sample_next, sample_rows
from charnn.models import CORES, ModelConfig, build_model
from charnn.models.lm import cat_states, select_state, state_tensors
from charnn.serve.engine import Engine
from charnn.serve.jobs import QueueFull, Sampling
from charnn.serve.rows import NOISE_BLOCK


def run(job, seconds: float = 30.0) -> tuple[list[str], list[str]]:
    """Block until every choice of `job` finished: (texts, finish reasons)."""
    texts, finish = [""] * job.choices, [None] * job.choices
    deadline = time.monotonic() + seconds
    while None in finish:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.002)
        for o in job.take():
            texts[o.index] += o.text
            finish[o.index] = o.finish or finish[o.index]
    return texts, finish


def engine_of(model, max_batch: int, max_queue: int) -> Engine:
    """The engine of a loaded run, as charnn serve builds it: its stepper, id -> text, banned ids."""
    texts = [model.vocab.decode([i]) for i in range(model.vocab.size)]
    return Engine(model.stepper, texts, model.banned, max_batch=max_batch, max_queue=max_queue)


@pytest.fixture(scope="module")
def model(tiny_run):
    return charnn.load(tiny_run)


@pytest.fixture
def engine(model):
    e = engine_of(model, max_batch=16, max_queue=64).start()
    yield e
    e.close()


# --- the pieces ---------------------------------------------------------------------------------
def test_sample_rows_is_sample_next_row_by_row():
    rng = random.Random(0)
    for _ in range(60):
        B, V = rng.randint(1, 24), rng.randint(5, 60)
        logits = torch.randn(B, V) * rng.choice([0.5, 3.0])
        logits[:, :2] = float("-inf")  # banned ids, as the engine masks them
        t = [rng.choice([0.0, 0.4, 1.0, 1.7]) for _ in range(B)]
        k = [rng.choice([0, 1, 3, V - 1, V, V + 5]) for _ in range(B)]
        p = [rng.choice([1.0, 0.95, 0.5, 1e-6]) for _ in range(B)]
        seeds = [rng.randrange(2**40) for _ in range(B)]
        noise = torch.cat([torch.empty(1, V).exponential_(generator=torch.Generator().manual_seed(s))
                           for s in seeds])
        got = sample_rows(logits, torch.tensor(t), torch.tensor(k), torch.tensor(p), noise)
        for i in range(B):
            want = sample_next(logits[i:i + 1], t[i], k[i], p[i], torch.Generator().manual_seed(seeds[i]))
            assert int(got[i]) == int(want), (t[i], k[i], p[i])


@pytest.mark.parametrize("V", [7, 66, 300])
def test_a_block_of_noise_is_the_same_draws_as_one_per_step(V):
    """What NOISE_BLOCK relies on: one (N, V) draw = N (1, V) draws from the same generator."""
    step = torch.Generator().manual_seed(3)
    block = torch.Generator().manual_seed(3)
    one_by_one = torch.cat([torch.empty(1, V).exponential_(generator=step) for _ in range(NOISE_BLOCK)])
    target = torch.ones(4, NOISE_BLOCK, V)
    target[2].exponential_(generator=block)  # in place, as the engine refills one row's block
    assert torch.equal(target[2], one_by_one)
    assert torch.equal(torch.empty(1, V).exponential_(generator=step),
                       torch.empty(1, V).exponential_(generator=block))  # and they stay in step


@pytest.mark.parametrize("core", sorted(CORES))
def test_select_and_cat_states(core):
    m = build_model(ModelConfig(model=core, vocab_size=9, embed=4, hidden=6, layers=2)).eval()
    ids = torch.randint(0, 9, (5, 7))
    _, state = m(ids)
    a = select_state(state, torch.tensor([0, 3]))
    b = select_state(state, torch.tensor([4, 4, 1]))
    both = cat_states([a, b])
    want = select_state(state, torch.tensor([0, 3, 4, 4, 1]))
    for x, y in zip(state_tensors(both), state_tensors(want)):
        assert x.shape[1] == 5 and torch.equal(x, y)
    for x, y in zip(state_tensors(b), state_tensors(state)):
        assert torch.equal(x[:, 0], y[:, 4]) and torch.equal(x[:, 1], y[:, 4])


# --- the engine ---------------------------------------------------------------------------------
def test_a_request_alone_is_the_librarys_text(engine, model):
    s = Sampling(max_tokens=120, temperature=0.9, top_k=6, top_p=0.95)
    texts, finish = run(engine.submit([model.prime_ids("ROMEO")], 3, s, seed=11))
    assert texts == [model.generate("ROMEO", 120, 0.9, 6, 0.95, seed=11 + i) for i in range(3)]
    assert finish == ["length"] * 3
    greedy = Sampling(max_tokens=200, temperature=0.0, stop=("\n",))
    texts, finish = run(engine.submit([model.prime_ids("")], 1, greedy, seed=0))
    assert texts == [model.generate("", 200, temperature=0, stop=["\n"])]
    assert finish == ["stop" if len(texts[0]) < 200 else "length"]


def test_streams_joining_and_leaving_keep_their_own_text(engine, model):
    """Jobs of different lengths, settings and prompts share the batch; each gets its own text."""
    specs = [("JULIET", 40 + 25 * k, [0.0, 0.5, 1.0, 1.4][k % 4], [0, 3][k % 2], [1.0, 0.9][k // 4 % 2])
             for k in range(10)]
    jobs = []
    for k, (prompt, n_chars, t, top_k, top_p) in enumerate(specs):
        jobs.append(engine.submit([model.prime_ids(prompt[: 2 + k % 5])], 2,
                                  Sampling(n_chars, t, top_k, top_p), seed=100 + k))
        time.sleep(0.002 * (k % 3))  # join at different steps
    for k, job in enumerate(jobs):
        prompt, n_chars, t, top_k, top_p = specs[k]
        texts, _ = run(job)
        assert texts == [model.generate(prompt[: 2 + k % 5], n_chars, t, top_k, top_p, seed=100 + k + i)
                         for i in range(2)], specs[k]
    assert engine.active == 0 and engine.queued == 0


def test_cancel_frees_the_rows(engine, model):
    job = engine.submit([model.prime_ids("RO")], 4, Sampling(max_tokens=100_000), seed=0)
    while engine.active < 4:
        time.sleep(0.001)
    job.cancel()
    deadline = time.monotonic() + 5
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.001)
    assert engine.active == 0 and engine.generated < 4 * 100_000


def test_queue_bound_and_zero_tokens(model):
    e = engine_of(model, max_batch=2, max_queue=3)  # not started: everything stays queued
    try:
        e.submit([model.prime_ids("R")], 2, Sampling(10), seed=0)
        e.submit([model.prime_ids("R")], 3, Sampling(10), seed=0)
        with pytest.raises(QueueFull):
            e.submit([model.prime_ids("R")], 1, Sampling(10), seed=0)
        assert e.queued == 5
        texts, finish = run(e.submit([model.prime_ids("R")], 2, Sampling(0), seed=0))
        assert texts == ["", ""] and finish == ["length", "length"]  # no room needed for nothing
    finally:
        e.close()


def test_a_cancelled_job_leaves_the_queue_at_once(model):
    e = engine_of(model, max_batch=2, max_queue=3)  # not started: everything stays queued
    try:
        first = e.submit([model.prime_ids("R")], 3, Sampling(10), seed=0)
        e.submit([model.prime_ids("R")], 2, Sampling(10), seed=0)
        first.cancel()  # its client left: it no longer waits, nor counts against the bound
        assert e.queued == 2
        e.submit([model.prime_ids("R")], 3, Sampling(10), seed=0)
        assert e.queued == 5
    finally:
        e.close()


def test_close_finishes_open_jobs_with_an_error(model):
    e = engine_of(model, max_batch=2, max_queue=8)
    job = e.submit([model.prime_ids("R")], 2, Sampling(10), seed=0)
    e.close()
    texts, finish = run(job)
    assert finish == ["error", "error"] and "shutting down" in job.error


def test_a_failing_step_fails_its_jobs_and_the_engine_goes_on(tiny_run, model):
    broken = charnn.load(tiny_run)
    step, calls = broken.stepper.step, []

    def flaky(ids, state=None):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return step(ids, state)

    broken.stepper.step = flaky
    e = engine_of(broken, max_batch=4, max_queue=4).start()
    try:
        job = e.submit([model.prime_ids("R")], 2, Sampling(50), seed=1)
        texts, finish = run(job)
        assert finish == ["error", "error"] and "RuntimeError: boom" in job.error
        texts, finish = run(e.submit([model.prime_ids("R")], 1, Sampling(30), seed=1))
        assert finish == ["length"] and texts == [model.generate("R", 30, seed=1)]
    finally:
        e.close()
