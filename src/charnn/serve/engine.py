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
threads; Rows (rows.py) owns the rows being generated. Outputs carry their characters' scores when
asked (logprobs.py); the primer scores an echoed prompt (max_tokens 0 ends there).

The engine knows ids, not the model: it is given a stepper (infer.steps.Stepper: `stepper(ids)`
primes, `stepper.step(ids, state)` steps), the text of each id and the ids never to sample.

Seeds: choice i of each prompt uses seed + i, as `charnn sample --num-samples` does. A
choice alone in the batch produces exactly the text `charnn.load(run).generate(...)` gives
for the same settings and seed. Beside other streams its text is the same too, except that
BLAS kernels may round a step (or a shared priming pass) differently at a different batch
size (differences of about 1e-8 in the logits), which changes a character only where two
candidates are tied within that margin.

Imports: torch, charnn.infer.sampling, charnn.models.lm (states), serve.jobs, serve.rows,
serve.logprobs.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence

import torch

from charnn.models.lm import select_state
from charnn.serve.jobs import Job, Output, QueueFull, Sampling
from charnn.serve.logprobs import prompt_scores
from charnn.serve.rows import Group, Rows

log = logging.getLogger("charnn.engine")

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
        self._batch = Rows(stepper, list(texts), banned_ids, end)
        self.max_batch, self.max_queue = max_batch, max_queue
        self._cond = threading.Condition()
        self._pending: collections.deque[Group] = collections.deque()
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
        groups = [Group(job, list(p), k * n, [seed + i for i in range(n)], sampling)
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

    def _take_pending(self) -> list[Group]:
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

    def _prime(self, groups: list[Group]) -> list[tuple]:
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
