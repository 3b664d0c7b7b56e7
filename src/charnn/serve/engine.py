"""Continuous batching: every stream a server is generating shares one recurrent step.

An RNN step for 32 streams costs little more than for one (the weights are read once per
step either way), so an engine keeps all the streams of a model in one batch and steps
them together, letting streams join and leave between steps:

    submit ──► pending groups (bounded) ──► primer thread: prime each prompt in one pass, as
                                            sampling.generate does (prompts of equal length
                                            waiting together share the pass), beside the
                                            engine thread, so the batch never waits for it
           ──► admit (engine thread, between steps, in order): fan each primed state and
               last logits out to the prompt's n rows
    loop:  sample one id per row, each with its own settings and its own generator's
           noise (sample_rows) ──► text, stop strings ──► the job's outputs
           ──► drop finished and cancelled rows ──► stepper.step(ids (B,), state) for the rest

A job (jobs.py) is one request's choices: the engine thread fills it, the caller takes what
is ready. Cancelling a job (the client went away, or its time ran out) takes its groups out
of the queue at once and drops its rows at the next step. Engine owns the queue and the two
threads; _Batch owns the rows being generated. Outputs carry their characters' scores when
asked (logprobs.py); the primer scores an echoed prompt (max_tokens 0 ends there).

The engine knows ids, not the model: it is given a stepper (infer.steps.Stepper: `stepper(ids)`
primes, `stepper.step(ids, state)` steps), the text of each id and the ids never to sample.

Seeds: choice i of each prompt uses seed + i, as `charnn sample --num-samples` does. A
choice alone in the batch produces exactly the text `charnn.load(run).generate(...)` gives
for the same settings and seed. Beside other streams its text is the same too, except that
BLAS kernels may round a step (or a shared priming pass) differently at a different batch
size (differences of about 1e-8 in the logits), which changes a character only where two
candidates are tied within that margin.

Imports: torch, charnn.infer.sampling (sample_rows, StopFilter), charnn.models.lm (states),
serve.jobs, serve.logprobs.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from charnn.infer.sampling import StopFilter, sample_rows
from charnn.models.lm import cat_states, select_state
from charnn.serve.jobs import Job, Output, QueueFull, Sampling
from charnn.serve.logprobs import prompt_scores, release, step_scores

log = logging.getLogger("charnn.engine")

# Each stream draws the Exp(1) noise of its next NOISE_BLOCK samples with one call on its own
# generator: the same numbers, in the same order, as NOISE_BLOCK one-step draws (CPU random
# kernels fill a tensor serially; tests/test_server_engine.py checks it), at 1/NOISE_BLOCK of
# the per-stream cost.
NOISE_BLOCK = 32
F32 = torch.finfo(torch.float32)


@dataclass(eq=False)  # compared by identity: the primed tensors have no truth value
class _Group:
    """n choices of one prompt, waiting to be admitted together (they share one priming)."""

    job: Job
    prompt: list[int]
    first_index: int
    seeds: list[int]
    sampling: Sampling
    priming: bool = False  # taken by the primer thread
    primed: tuple | None = None  # (logits (1, V) after the prompt, its state with batch 1)

    @property
    def indices(self) -> range:
        """The job's choice indices of this group."""
        return range(self.first_index, self.first_index + len(self.seeds))


class _Stream:
    __slots__ = ("job", "index", "generator", "sampling", "stops", "produced", "greedy", "scores")

    def __init__(self, job: Job, index: int, generator: torch.Generator, sampling: Sampling) -> None:
        self.job, self.index, self.generator, self.sampling = job, index, generator, sampling
        self.stops = StopFilter(sampling.stop)
        self.produced = 0  # characters sampled so far; the next one uses noise row produced % NOISE_BLOCK
        self.greedy = sampling.temperature == 0
        # Scores of characters sampled but not yet shown (held back with their text by a stop string).
        self.scores = collections.deque() if sampling.logprobs is not None else None


class _Batch:
    """The streams being generated, one row each, touched only by the engine thread."""

    def __init__(self, stepper, texts: list[str], banned: torch.Tensor, end: int | None = None) -> None:
        self.stepper, self.texts, self.banned, self.end = stepper, texts, banned, end
        self.n_chars = sum(1 for t in texts if t)  # ids below it are characters, the rest special tokens
        self.device = stepper.device
        self.generated = 0  # characters sampled since start, all streams
        self.rows: list[_Stream] = []
        self.logits: torch.Tensor | None = None  # (B, V) the next character's logits
        self.state = None  # (layers, B, H) tensors
        self.noise: torch.Tensor | None = None  # (B, NOISE_BLOCK, V) each stream's next draws
        self.settings: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def admit(self, groups: list[_Group]) -> None:
        """Add the rows of primed groups to the batch: each prompt's state and last logits fanned
        out to its n choices, each choice with its own seeded generator."""
        for g in groups:
            logits, state = g.primed
            fan = torch.zeros(len(g.seeds), dtype=torch.long, device=self.device)
            logits = logits.index_select(0, fan)  # (n, V)
            state = select_state(state, fan)  # (layers, n, H)
            noise = torch.ones((len(fan), NOISE_BLOCK, logits.shape[-1]), device=self.device)
            for i, seed in enumerate(g.seeds):
                gen = torch.Generator(device=self.device)
                gen.manual_seed(seed)
                self.rows.append(_Stream(g.job, g.first_index + i, gen, g.sampling))
            if self.logits is None:
                self.logits, self.state, self.noise = logits, state, noise
            else:
                self.logits = torch.cat([self.logits, logits])
                self.state = cat_states([self.state, state])
                self.noise = torch.cat([self.noise, noise])
        self.settings = None

    def step(self) -> None:
        """Sample one character per row, hand out the text, drop finished rows, step the rest."""
        rows = self.rows
        if self.settings is None:
            # Sampled in float32: a larger temperature would round to inf (and a banned id's
            # -inf / inf to NaN), a top_p below its smallest number to 0 (dropping every
            # candidate). float32's largest temperature is as flat as any larger one, its smallest
            # top_p keeps only the most likely character, as any smaller one does.
            self.settings = (
                torch.tensor([min(r.sampling.temperature, F32.max) for r in rows], dtype=torch.float32,
                             device=self.device),
                torch.tensor([r.sampling.top_k for r in rows], dtype=torch.long, device=self.device),
                torch.tensor([max(r.sampling.top_p, F32.tiny) for r in rows], dtype=torch.float32,
                             device=self.device),
            )
        logits = self.logits
        if len(self.banned):
            logits = logits.index_fill(-1, self.banned, float("-inf"))
        for b, r in enumerate(rows):
            if r.produced % NOISE_BLOCK == 0 and not r.greedy:  # refill: the next NOISE_BLOCK draws
                self.noise[b].exponential_(generator=r.generator)
        at = torch.tensor([r.produced % NOISE_BLOCK for r in rows], device=self.device)
        noise = self.noise[torch.arange(len(rows), device=self.device), at]  # (B, V)
        nxt = sample_rows(logits, *self.settings, noise)  # (B,)
        self.generated += len(rows)
        wanted = {b: r.sampling.logprobs for b, r in enumerate(rows) if r.scores is not None}
        for b, score in step_scores(self.logits, nxt, wanted, self.n_chars):  # self.logits: before the ban
            rows[b].scores.append(score)

        keep: list[int] = []
        outputs: dict[Job, list[Output]] = {}
        for b, (r, i) in enumerate(zip(rows, nxt.tolist())):
            if r.job.cancelled:
                continue
            r.produced += 1
            r.job.generated += 1
            text = r.stops.feed(self.texts[i]) if r.sampling.stop else self.texts[i]
            finish = None
            if r.stops.stopped:
                finish = "stop"
            elif i == self.end:  # a documents run's <end>: the document is complete
                text += r.stops.flush()
                finish = "stop"
            elif r.produced >= r.sampling.max_tokens:
                text += r.stops.flush()
                finish = "length"
            scores = release(r.scores, len(text), self.texts) if r.scores is not None else None
            if text or finish:
                outputs.setdefault(r.job, []).append(Output(r.index, text, finish, scores))
            if finish is None:
                keep.append(b)
        for job, items in outputs.items():
            job.put(items)

        if not keep:
            self.clear()
            return
        if len(keep) < len(rows):
            idx = torch.tensor(keep, dtype=torch.long, device=self.device)
            nxt, self.state = nxt.index_select(0, idx), select_state(self.state, idx)
            self.noise = self.noise.index_select(0, idx)
            self.rows = [rows[b] for b in keep]
            self.settings = None
        self.logits, self.state = self.stepper.step(nxt, self.state)  # (B, V)

    def clear(self) -> None:
        self.rows, self.logits, self.state, self.noise, self.settings = [], None, None, None, None

    def fail_all(self, message: str, admitting: list[_Group]) -> None:
        """Finish every stream in the batch (and those being admitted) with an error."""
        open_by_job: dict[Job, list[int]] = {}
        for r in self.rows:
            open_by_job.setdefault(r.job, []).append(r.index)
        for g in admitting:
            indices = open_by_job.setdefault(g.job, [])
            for i in g.indices:
                if i not in indices:
                    indices.append(i)
        for job, indices in open_by_job.items():
            job.fail(message, indices)
        self.clear()


class Engine:
    """One model's batch of streams, stepped by one background thread."""

    def __init__(
        self, stepper, texts: Sequence[str], banned: Sequence[int] = (), max_batch: int = 64, max_queue: int = 256,
        end: int | None = None,
    ) -> None:
        """`stepper`: `stepper(ids (B, P))` primes (the model's fused forward pass) and
        `stepper.step(ids (B,), state)` steps (infer.steps.Stepper, a loaded run's `.stepper`);
        `texts[i]`: the text of id i; `banned`: ids never sampled (special tokens); `end`: the id
        that completes a stream (a documents run's <end>: finish_reason "stop"), None = none."""
        self.stepper = stepper
        self.device = stepper.device
        banned_ids = torch.as_tensor(list(banned), dtype=torch.long, device=self.device)
        self._batch = _Batch(stepper, list(texts), banned_ids, end)
        self.max_batch, self.max_queue = max_batch, max_queue
        self._cond = threading.Condition()
        self._pending: collections.deque[_Group] = collections.deque()
        self._queued = 0  # streams in _pending
        self._active = 0  # streams in the batch (mirrors len(self._batch.rows) for other threads)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._primer: threading.Thread | None = None

    # --- the caller's side ----------------------------------------------------------------
    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def generated(self) -> int:
        """Characters sampled since start, all streams."""
        return self._batch.generated

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="charnn-engine", daemon=True)
            self._thread.start()
            self._primer = threading.Thread(target=self._prime_loop, name="charnn-primer", daemon=True)
            self._primer.start()
        return self

    def close(self) -> None:
        """Stop the thread; jobs still open finish with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in (self._thread, self._primer):
            if thread is not None:
                thread.join()
        for g in self._pending:
            g.job.fail("the server is shutting down", g.indices)
        self._pending.clear()
        self._queued = 0

    def submit(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        sampling: Sampling,
        seed: int,
        on_ready: Callable[[], None] | None = None,
    ) -> Job:
        """Queue len(prompts) x n choices; choice p * n + i continues prompt p with seed + i.

        Raises QueueFull when the batch and the queue together have no room for them.
        """
        job = Job(len(prompts) * n, sum(len(p) for p in prompts), on_ready)
        if sampling.max_tokens == 0 and not sampling.score_prompt:
            job.put([Output(i, "", "length") for i in range(job.choices)])
            return job
        groups = [_Group(job, list(p), k * n, [seed + i for i in range(n)], sampling)
                  for k, p in enumerate(prompts)]
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._active + self._queued + job.choices > self.max_batch + self.max_queue:
                raise QueueFull(f"{self._active} streams running and {self._queued} waiting")
            self._pending.extend(groups)
            self._queued += job.choices
            job.on_cancel = self._withdraw
            self._cond.notify_all()  # the primer thread (and the engine thread, if it waits)
        return job

    def _withdraw(self, job: Job) -> None:
        """A cancelled job's groups leave the queue at once: a client that left while waiting
        no longer counts (in /health, or against --max-queue for the next request)."""
        with self._cond:
            kept = [g for g in self._pending if g.job is not job]
            if len(kept) < len(self._pending):
                self._pending = collections.deque(kept)
                self._queued = sum(len(g.seeds) for g in kept)
                self._cond.notify_all()  # the engine thread: the next group may be ready to join

    # --- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        batch = self._batch
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._closed or batch.rows or (self._pending and self._pending[0].primed)):
                        self._cond.wait()
                    if self._closed:
                        break
                    admit = self._take_pending()
                try:
                    if admit:
                        batch.admit(admit)
                    if batch.rows:
                        batch.step()
                except Exception as e:  # a bug or out of memory: fail the jobs, keep serving
                    log.exception("generation failed")
                    batch.fail_all(f"generation failed: {type(e).__name__}: {e}", admit)
                with self._cond:
                    self._active = len(batch.rows)
            batch.fail_all("the server is shutting down", [])

    def _take_pending(self) -> list[_Group]:
        """The primed groups at the head of the queue that fit in the batch, in order."""
        admit, free = [], self.max_batch - len(self._batch.rows)
        while self._pending and self._pending[0].primed and len(self._pending[0].seeds) <= free:
            g = self._pending.popleft()
            self._queued -= len(g.seeds)
            if not g.job.cancelled:
                admit.append(g)
                free -= len(g.seeds)
                self._active += len(g.seeds)  # counted as running from now on, not as waiting
        return admit

    # --- the primer thread ----------------------------------------------------------------
    def _prime_loop(self) -> None:
        """Prime waiting prompts beside the engine thread, so the batch never stalls on them.

        With one torch thread each (charnn serve --threads 1) the priming pass and the batch's
        steps run on two cores at once; the numbers are those of priming in the engine thread.
        """
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._closed or any(not g.priming for g in self._pending)):
                        self._cond.wait()
                    if self._closed:
                        break
                    todo = [g for g in self._pending if not g.priming]
                    for g in todo:
                        g.priming = True
                todo = [g for g in todo if not g.job.cancelled]
                try:
                    primed = self._prime(todo)
                except Exception as e:  # a bug or out of memory: fail these jobs, keep serving
                    log.exception("priming failed")
                    with self._cond:
                        for g in todo:
                            if g in self._pending:
                                self._pending.remove(g)
                                self._queued -= len(g.seeds)
                    for g in todo:
                        g.job.fail(f"generation failed: {type(e).__name__}: {e}", g.indices)
                    continue
                with self._cond:
                    for g, (logits, state, scores) in zip(todo, primed):
                        if scores is not None:  # before any generated text: the engine has not seen g
                            g.job.put([Output(i, "", None if g.sampling.max_tokens else "length", scores, True)
                                       for i in g.indices])
                        if g.sampling.max_tokens:
                            g.primed = (logits, state)
                        elif g in self._pending:  # only the prompt was to be scored: done (if not withdrawn)
                            self._pending.remove(g)
                            self._queued -= len(g.seeds)
                    self._cond.notify_all()

    def _prime(self, groups: list[_Group]) -> list[tuple]:
        """Each group's logits after its prompt, the state there and (if asked) the prompt's
        scores, one pass per prompt length.

        As sampling.generate does it: prompts of the same length that are waiting together share
        the pass (a lone prompt is primed alone, B=1).
        """
        by_length: dict[int, list[int]] = {}
        for k, g in enumerate(groups):
            by_length.setdefault(len(g.prompt), []).append(k)
        out: list[tuple] = [None] * len(groups)
        for ks in by_length.values():
            ids = torch.tensor([groups[k].prompt for k in ks], dtype=torch.long, device=self.device)  # (k, P)
            logits, state = self.stepper(ids)  # (k, P, V)
            for row, k in enumerate(ks):
                pick = torch.tensor([row], device=self.device)
                g = groups[k]
                scores = (prompt_scores(logits[row], g.prompt, g.sampling.logprobs, self._batch.n_chars)
                          if g.sampling.score_prompt else None)
                out[k] = (logits[row : row + 1, -1], select_state(state, pick), scores)
        return out
