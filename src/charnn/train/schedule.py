"""How long a run trains and at what learning rate: the step target, the stop, the schedule.

--max-steps and --epochs give the step target up front; a time budget (--max-time) gives
it after the first steps have been timed, so that the cosine schedule still ends on time.
Why a run stops is one of STOP_REASONS. Pure functions of the settings and the counters;
imports nothing of charnn but their types.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from charnn.train.config import TrainConfig
    from charnn.train.state import ResumeState

# Why a run stops, weakest first: when ranks see different reasons at the same step (a
# signal, a clock), all of them act on the strongest.
STOP_REASONS = ("", "steps", "epochs", "early stop", "time", "interrupted")


def lr_at(step: int, cfg: TrainConfig, total: int | None) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at `total` steps."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if not total or total <= cfg.warmup:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def planned_total(cfg: TrainConfig, steps_per_epoch: int) -> int | None:
    """The step target from --max-steps and --epochs; None = set by the time budget."""
    targets = []
    if cfg.max_steps:
        targets.append(cfg.max_steps)
    if cfg.epochs:
        targets.append(max(1, math.ceil(cfg.epochs * steps_per_epoch)))
    return min(targets) if targets else None


def steps_in_budget(cfg: TrainConfig, elapsed: float, step_time: float, val_chars: int) -> int:
    """The steps that fit in what is left of --max-time, evaluations included."""
    remaining = cfg.max_time - elapsed
    steps_left = remaining / step_time
    # An evaluation reads the validation split forward only, ~1/3 the cost of a step.
    chars_per_step = cfg.batch_size * cfg.seq_len
    eval_cost = val_chars / chars_per_step * step_time / 2.5
    if cfg.eval_every:
        evals = steps_left / cfg.eval_every
        steps_left = (remaining - evals * eval_cost) / step_time
    steps_left -= eval_cost / step_time  # the final evaluation
    return max(1, int(steps_left * 0.98))


def stop_reason(cfg: TrainConfig, s: ResumeState, seconds: float) -> str:
    """Why the run stops before its next step, "" = it goes on (signals are the trainer's)."""
    if s.total_steps is not None and s.step >= s.total_steps:
        return "epochs" if cfg.epochs and not cfg.max_steps else "steps"
    if cfg.max_time and seconds >= cfg.max_time:
        return "time"
    if cfg.patience and s.bad_evals >= cfg.patience:
        return "early stop"
    return ""


def fraction_done(cfg: TrainConfig, s: ResumeState, seconds: float) -> float:
    """How far the run is towards its step target or its time budget, whichever is nearer."""
    done = []
    if s.total_steps:
        done.append(s.step / s.total_steps)
    if cfg.max_time:
        done.append(seconds / cfg.max_time)
    return max(done) if done else 0.0
