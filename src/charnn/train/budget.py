"""A time budget (--max-time) as a step target that is estimated again as the run goes.

The cosine schedule needs the step it ends on; a time budget knows only seconds. Timing the
first steps once is not enough: they are slower (caches, the allocator, the first
evaluation not yet seen), a machine speeds up or slows down (other processes, turbo), and a
run aimed on its first 20 steps ended 8 minutes early in a 30-minute budget. So `Pace`
measures as the run goes, on the run's training clock (seconds summed over resumes):

- the step time, in intervals of about 1/CHECKS of the planned steps, leaving out the time
  spent evaluating and saving in them; the estimate is the median of the last RECENT
  intervals, so one interval hit by a pause does not move it, and two at a new speed do;
- the seconds of the last evaluation (with its metrics line and best weights) and of the
  last resume point written. Until an evaluation has run, one of its forward passes is
  timed when the first target is set (`probe`): the final evaluation can be a tenth of a
  short budget, and its speed against a training step's varies with the machine and dtype.

At the end of each interval the trainer asks for a new target (`target`): the steps that fit
in what is left of the budget once the evaluations and resume points on the way are paid
for, and the final evaluation and resume point kept back (`reserve`), so that the run, those
included, ends on its budget. The clock still stops a run that falls behind, at the budget
less that reserve (schedule.stop_reason). The learning rate stays continuous when the
target moves (schedule.lr_at continues the cosine from where it stood).

Its state is saved in the resume point (ResumeState.budget), the interval in progress
included, so a resumed run continues the same plan. Under torchrun every rank measures its
own, rank 0's target and probe are broadcast, and the steps at which a new target is due
follow from the agreed target alone, so all ranks agree on them.

`RunClock` is what the trainer (loop.py) holds: the training clock (replaceable, so tests
drive a run on an injected one), the pace, and the work done after each step. Imports
evaluate, schedule and distributed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from charnn.evaluate import CHUNK, evaluate_ids, stateful_passes
from charnn.train.distributed import Dist
from charnn.train.schedule import retargeted

if TYPE_CHECKING:
    import torch

    from charnn.train.config import TrainConfig
    from charnn.train.state import ResumeState

SKIP = 5  # the first steps of a run are not timed: they warm caches and the allocator up
FIRST = 20  # the first target once steps SKIP..FIRST are timed
CHECKS = 40  # new targets per run: every 1/40 of the planned steps, so the last is ~2.5 % before the end
MIN_INTERVAL = 10  # steps between two estimates at least
RECENT = 3  # intervals whose median step time is the estimate
MARGIN = 0.01  # of the seconds left, kept back for the noise of the estimate
# Until one is measured or probed, an evaluation is taken to cost this fraction of the
# training steps holding as many characters (a forward pass only, over fewer rows: 0.35-0.85).
EVAL_COST = 0.6


@dataclass
class Pace:
    """How fast the run goes, measured on the training clock; saved in the resume point."""

    step_times: list[float] = field(default_factory=list)  # seconds per step of the last intervals, newest last
    eval_seconds: float | None = None  # the last evaluation
    eval_probe: float | None = None  # an evaluation's seconds from one of its passes, before any ran
    save_seconds: float | None = None  # the last resume point
    next_check: int = FIRST  # the step after which the next estimate is due
    # The interval in progress: [its first step, the training clock then, seconds of
    # evaluations and saves since]; None before step SKIP.
    since: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Pace:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    # --- measuring ---------------------------------------------------------------------------
    def tick(self, step: int, seconds: float) -> bool:
        """After each step (`step` steps done, `seconds` on the training clock): whether an
        estimate is due now. Depends on the step and the agreed target only, as every rank must."""
        if self.since is None:
            if step >= SKIP:
                self.since = [step, seconds, 0.0]
            return False
        return step >= max(self.next_check, self.since[0] + SKIP)

    def spent(self, kind: str, seconds: float) -> None:
        """An evaluation ("eval") or a resume point ("save") took `seconds`; or the probe of
        an evaluation ("probe") took them (not counted as steps)."""
        if kind == "eval":
            self.eval_seconds = seconds
        elif kind == "save":
            self.save_seconds = seconds
        if self.since is not None:
            self.since[2] += seconds

    def measure(self, step: int, seconds: float) -> None:
        """Close the interval in progress: its step time joins the recent ones; the next starts."""
        first, start, other = self.since
        self.step_times = [*self.step_times, (seconds - start - other) / (step - first)][-RECENT:]
        self.since = [step, seconds, 0.0]

    def plan_next(self, step: int, total: int) -> None:
        """The next estimate comes 1/CHECKS of the planned steps later."""
        self.next_check = step + max(MIN_INTERVAL, math.ceil(total / CHECKS))

    # --- planning ----------------------------------------------------------------------------
    def step_time(self) -> float | None:
        return statistics.median(self.step_times) if self.step_times else None

    def eval_time(self, cfg: TrainConfig, val_chars: int) -> float:
        """Seconds of one evaluation: the last one, its probe, or a guess from the step time."""
        if self.eval_seconds is not None:
            return self.eval_seconds
        if self.eval_probe is not None:
            return self.eval_probe
        step_time = self.step_time()
        if not step_time or val_chars < 2:
            return 0.0
        return val_chars / (cfg.batch_size * cfg.seq_len) * step_time * EVAL_COST

    def reserve(self, cfg: TrainConfig, val_chars: int) -> float:
        """Seconds kept back at the end: the final evaluation and the final resume point."""
        return self.eval_time(cfg, val_chars) + (self.save_seconds or 0.0)

    def target(self, cfg: TrainConfig, step: int, seconds: float, val_chars: int) -> int:
        """The step to end on, `step` steps done and `seconds` of the budget gone."""
        step_time, eval_time, save_time = self.step_time(), self.eval_time(cfg, val_chars), self.save_seconds or 0.0

        def cost(n: int) -> float:
            """Seconds of n more steps with the evaluations and resume points on the way.
            An evaluation on the last step is the final one (in the reserve); a resume
            point there is written twice (periodic, then final)."""
            return (n * step_time + _multiples(cfg.eval_every, step, step + n - 1) * eval_time
                    + _multiples(cfg.save_every, step, step + n) * save_time)

        left = (cfg.max_time - seconds - self.reserve(cfg, val_chars)) * (1 - MARGIN)
        if left <= 0:
            return step
        # From the estimate with the evaluations and resume points spread over the steps, to
        # the exact count (they come at multiples of their period: near the end one weighs).
        spread = step_time + (eval_time / cfg.eval_every if cfg.eval_every else 0.0)
        spread += save_time / cfg.save_every if cfg.save_every else 0.0
        n = int(left / max(spread, 1e-9))
        while n > 0 and cost(n) > left:
            n -= 1
        while cost(n + 1) <= left:
            n += 1
        return step + n


class RunClock:
    """The trainer's time: seconds of training summed over resumes, on `now` (a test may set
    its own), and under --max-time the pace measured on them and the step target aimed from it."""

    def __init__(self, cfg: TrainConfig, dist: Dist, val_ids, follows_clock: bool) -> None:
        self.cfg, self.dist, self.val_ids = cfg, dist, val_ids
        self.follows_clock = follows_clock  # a time budget and no step limit: the target is ours
        self.now: Callable[[], float] = time.perf_counter
        self.started: float | None = None  # `now` when this session's training began
        self.pace = Pace()

    def seconds(self, s: ResumeState) -> float:
        """Seconds of training in all, earlier sessions of the run included."""
        return s.elapsed + (self.now() - self.started if self.started is not None else 0.0)

    def timed(self, kind: str, work: Callable, *args) -> None:
        """Do `work` (an evaluation, a resume point) and tell the pace how long it took."""
        t = self.now()
        work(*args)
        self.pace.spent(kind, self.now() - t)

    def reserve(self) -> float:
        """Seconds of the budget kept for the final evaluation and resume point."""
        return self.pace.reserve(self.cfg, len(self.val_ids)) if self.cfg.max_time else 0.0

    def after_step(self, s: ResumeState, model: torch.nn.Module) -> None:
        """After each step: when an estimate is due, measure the pace and aim the target again,
        the cosine continuous (schedule.retargeted). A collective when it is due."""
        pace = self.pace
        if not (self.cfg.max_time and pace.tick(s.step, self.seconds(s))):
            return
        pace.measure(s.step, self.seconds(s))
        if pace.eval_seconds is None and pace.eval_probe is None and len(self.val_ids) >= 2:
            self.timed("probe", self._probe, model)
        if self.follows_clock:
            target = pace.target(self.cfg, s.step, self.seconds(s), len(self.val_ids))
            target = self.dist.broadcast_int(target)  # rank 0's clock decides for all
            s.cosine_from = retargeted(s.step, self.cfg, s.total_steps, s.cosine_from)
            s.total_steps = target
        pace.plan_next(s.step, s.total_steps or s.step)

    def _probe(self, model: torch.nn.Module) -> None:
        """Time one of the evaluation's forward passes (rank 0 evaluates; all agree on it)."""
        rows, passes = stateful_passes(len(self.val_ids), self.cfg.eval_streams)
        seconds = None
        if self.dist.is_main:
            t = self.now()
            # rows x CHUNK characters, no warm-up: exactly one pass of the evaluation's shape
            evaluate_ids(model, self.val_ids[: rows * CHUNK + 1], "stateful", streams=rows, warmup=0)
            seconds = (self.now() - t) * passes
        self.pace.eval_probe = self.dist.broadcast_float(seconds)


def _multiples(every: int, a: int, b: int) -> int:
    """How many multiples of `every` lie in (a, b]; 0 when `every` is 0 (never)."""
    return max(0, b // every - a // every) if every else 0
