"""How long a run trains and at what learning rate: the step target, the stop, the schedule.

--max-steps and --epochs give the step target up front; a time budget (--max-time) gives
it after the first steps have been timed, and moves it as the run goes (budget.py), so that
the cosine schedule still ends on time. Why a run stops is one of STOP_REASONS. Pure
functions of the settings and the counters; imports nothing of charnn but their types.
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


def lr_at(step: int, cfg: TrainConfig, total: int | None, since: list | None = None) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at `total` steps."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if not total or total <= cfg.warmup:
        return cfg.lr
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * _progress(step, cfg, total, since)))


# Moving the target of a cosine without care makes the rate jump: at step s of a target
# moved from T1 to T2, (s - warmup) / (T - warmup) jumps from s/T1 to s/T2 (halfway, a target
# 20 % further puts the rate back up by 13 % of its range). So the schedule is
# read as progress along the cosine, 0 at the end of the warmup and 1 at the target, and a
# moved target keeps the progress reached (`since` = [step, progress]): what is left of the
# curve is spread evenly over the steps left. The rate is continuous whatever the target
# does (only its slope changes), and it still reaches its floor on the last step. With a
# target that never moves (`since` None = [warmup, 0]), this is the plain cosine.
def _progress(step: int, cfg: TrainConfig, total: int, since: list | None) -> float:
    start, done = since or (cfg.warmup, 0.0)
    return min(1.0, done + (1.0 - done) * (step - start) / max(1, total - start))


def retargeted(step: int, cfg: TrainConfig, total: int | None, since: list | None) -> list | None:
    """The `since` of a target moved after `step` steps: where the cosine stands now."""
    if step <= cfg.warmup:
        return None  # the cosine has not started
    done = _progress(step, cfg, total, since) if total and total > cfg.warmup else 0.0
    return [step, done]


def planned_total(cfg: TrainConfig, steps_per_epoch: int) -> int | None:
    """The step target from --max-steps and --epochs; None = set by the time budget."""
    targets = []
    if cfg.max_steps:
        targets.append(cfg.max_steps)
    if cfg.epochs:
        targets.append(max(1, math.ceil(cfg.epochs * steps_per_epoch)))
    return min(targets) if targets else None


def stop_reason(cfg: TrainConfig, s: ResumeState, seconds: float, reserve: float = 0.0) -> str:
    """Why the run stops before its next step, "" = it goes on (signals are the trainer's).
    `reserve`: seconds of the budget kept for the final evaluation and resume point."""
    if s.total_steps is not None and s.step >= s.total_steps:
        return "epochs" if cfg.epochs and not cfg.max_steps else "steps"
    if cfg.max_time and seconds + reserve >= cfg.max_time:
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
