"""The rows a server is generating: one stream per row of one recurrent batch.

Group is one prompt waiting to join (its n choices, primed together); Stream one choice being
generated, with its own settings, generator and stop filter; Rows the rows the engine thread
steps together: it admits primed groups, samples one id per row (sample_rows, each with its own
noise), turns ids into text and stop strings into endings, drops finished rows and steps the
rest. Only the engine thread (engine.py) touches a Rows.

Imports: torch, charnn.infer.sampling (sample_rows, StopFilter), charnn.models.lm (states),
serve.jobs, serve.logprobs.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import torch

from charnn.infer.sampling import StopFilter, sample_rows
from charnn.models.lm import cat_states, select_state
from charnn.serve.jobs import Job, Output, Sampling
from charnn.serve.logprobs import release, step_scores

log = logging.getLogger("charnn.engine")

# Each stream draws the Exp(1) noise of its next NOISE_BLOCK samples with one call on its own
# generator: the same numbers, in the same order, as NOISE_BLOCK one-step draws (CPU random
# kernels fill a tensor serially; tests/test_server_engine.py checks it), at 1/NOISE_BLOCK of
# the per-stream cost.
NOISE_BLOCK = 32
F32 = torch.finfo(torch.float32)


@dataclass(eq=False)  # compared by identity: the primed tensors have no truth value
class Group:
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


class Stream:
    __slots__ = ("job", "index", "generator", "sampling", "stops", "produced", "greedy", "scores")

    def __init__(self, job: Job, index: int, generator: torch.Generator, sampling: Sampling) -> None:
        self.job, self.index, self.generator, self.sampling = job, index, generator, sampling
        self.stops = StopFilter(sampling.stop)
        self.produced = 0  # characters sampled so far; the next one uses noise row produced % NOISE_BLOCK
        self.greedy = sampling.temperature == 0
        # Scores of characters sampled but not yet shown (held back with their text by a stop string).
        self.scores = collections.deque() if sampling.logprobs is not None else None


class Rows:
    """The streams being generated, one row each, touched only by the engine thread."""

    def __init__(self, stepper, texts: list[str], banned: torch.Tensor, end: int | None = None) -> None:
        self.stepper, self.texts, self.banned, self.end = stepper, texts, banned, end
        self.n_chars = sum(1 for t in texts if t)  # ids below it are characters, the rest special tokens
        self.device = stepper.device
        self.generated = 0  # characters sampled since start, all streams
        self.rows: list[Stream] = []
        self.logits: torch.Tensor | None = None  # (B, V) the next character's logits
        self.state = None  # (layers, B, H) tensors
        self.noise: torch.Tensor | None = None  # (B, NOISE_BLOCK, V) each stream's next draws
        self.settings: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def admit(self, groups: list[Group]) -> None:
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
                self.rows.append(Stream(g.job, g.first_index + i, gen, g.sampling))
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

    def fail_all(self, message: str, admitting: list[Group]) -> None:
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
