"""A time budget ends on time: the step target is aimed again as the run goes (train/budget.py).

The trainer runs on an injected clock that each step, evaluation and resume point moves
forward by a set amount, so the tests are exact and not timed: the step time changes
part-way through the budget and the run must still end on it, final evaluation and resume
point included, with its cosine schedule at the end and never jumping.
"""

import math

import pytest

from charnn import checkpoint
from charnn.evaluate import evaluate_ids
from charnn.train import budget, setup
from charnn.train.budget import Pace
from charnn.train.config import resolve
from charnn.train.loop import Trainer
from charnn.train.schedule import lr_at, retargeted
from conftest import TINY_MODEL, TINY_TRAIN
from test_train import assert_identical

BUDGET = 100.0  # seconds on the injected clock
EVAL_S, SAVE_S = 2.0, 0.5


class Clocked:
    """A Trainer whose clock moves only when it works: `step_time(budget fraction)` per step,
    EVAL_S per evaluation of the whole validation split (in proportion for a part of it),
    SAVE_S per resume point. Records the learning rate of every step."""

    def __init__(self, trainer: Trainer, step_time, monkeypatch) -> None:
        self.t = 1000.0  # any origin: the trainer reads differences
        self.trainer, self.lrs = trainer, []
        trainer.budget.now = lambda: self.t
        step, save = trainer.train_step, trainer.save
        val = len(trainer.val_ids)

        def timed_step():
            loss = step()
            self.lrs.append(trainer.optimizer.param_groups[0]["lr"])
            self.t += step_time(trainer.budget.seconds(trainer.state) / BUDGET)
            return loss

        def timed_evaluate_ids(model, ids, *args, **kw):
            self.t += EVAL_S * (len(ids) - 1) / (val - 1)
            return evaluate_ids(model, ids, *args, **kw)

        def timed_save():
            save()
            self.t += SAVE_S

        trainer.train_step, trainer.save = timed_step, timed_save
        monkeypatch.setattr(budget, "evaluate_ids", timed_evaluate_ids)
        monkeypatch.setattr(setup, "evaluate_ids", timed_evaluate_ids)  # the periodic and final evaluations

    def run(self):
        start = self.t
        summary = self.trainer.run()
        return summary, self.t - start


def trainer(corpus, out, resume=False, should_stop=None, **kw):
    if resume:
        model_config, cfg = resolve({}, resume=str(out))
    else:
        model_config, cfg = resolve({"corpus": [str(corpus)], "out": str(out), **TINY_MODEL, **TINY_TRAIN,
                                     "max_time": BUDGET, "eval_every": 50, **kw})
    return Trainer(model_config, cfg, resume=resume, should_stop=should_stop, progress=False)


def changes_at_40_percent(factor: float, base: float = 0.2):
    return lambda fraction: base if fraction < 0.4 else base * factor


@pytest.mark.parametrize("factor", [2.0, 0.5, 1.0], ids=["slower", "faster", "steady"])
def test_a_budget_ends_on_time_when_the_step_time_changes(corpus_file, tmp_path, monkeypatch, factor):
    t = trainer(corpus_file, tmp_path / "r")
    clocked = Clocked(t, changes_at_40_percent(factor), monkeypatch)
    s, used = clocked.run()
    # The whole run, its final evaluation and resume point included, takes its budget within
    # 2 % (the one resume point, at the end, is not known before it is written).
    assert abs(used - BUDGET) <= 0.02 * BUDGET, used
    # It stopped on its step target, not on the clock: the cosine ran to its end.
    assert s.stop_reason == "steps" and t.state.total_steps == s.step == len(clocked.lrs)
    cfg = t.cfg
    floor = cfg.lr * cfg.min_lr_ratio
    assert (clocked.lrs[-1] - floor) / (cfg.lr - floor) < 1e-3
    # The rate never jumps back up when the target moves, and never falls faster than a few
    # times the steepest step of a plain cosine over as many steps.
    after = clocked.lrs[cfg.warmup:]
    drops = [a - b for a, b in zip(after, after[1:])]
    assert min(drops) >= 0
    steepest = (cfg.lr - floor) * math.pi / 2 / (len(clocked.lrs) - cfg.warmup)
    assert max(drops) < 4 * steepest
    # The target moved as the run went, the later ones by less.
    assert t.budget.pace.step_times[-1] == pytest.approx(0.2 * factor)


def test_the_final_evaluation_is_planned_for_before_any_has_run(corpus_file, tmp_path, monkeypatch):
    """With no evaluation on the way (--eval-every 0), the one at the end is foreseen from one
    of its passes, timed when the first target is set."""
    t = trainer(corpus_file, tmp_path / "r", eval_every=0)
    s, used = Clocked(t, changes_at_40_percent(2.0), monkeypatch).run()
    assert t.budget.pace.eval_probe == pytest.approx(EVAL_S) and t.budget.pace.eval_seconds is None
    assert abs(used - BUDGET) <= 0.02 * BUDGET and s.stop_reason == "steps"


def test_without_re_estimating_the_first_target_would_miss(corpus_file, tmp_path, monkeypatch):
    """The old way (one target from steps 5..20) on the same clock ends far from the budget."""
    t = trainer(corpus_file, tmp_path / "r")
    t.budget.pace.plan_next = lambda step, total: setattr(t.budget.pace, "next_check", 10**9)  # never again
    s, used = Clocked(t, changes_at_40_percent(0.5), monkeypatch).run()
    assert used < 0.9 * BUDGET and s.stop_reason == "steps"


def test_a_slowdown_the_target_cannot_follow_is_stopped_by_the_clock(corpus_file, tmp_path, monkeypatch):
    """At 90 % of the budget the steps become 20 times slower, too late for the estimates to
    follow: the clock stops the run, leaving room for the final evaluation, and the budget is
    overrun by at most the one slow step under way (and the final resume point)."""
    t = trainer(corpus_file, tmp_path / "r")
    s, used = Clocked(t, lambda f: 0.2 if f < 0.9 else 4.0, monkeypatch).run()
    assert s.stop_reason == "time" and s.step < t.state.total_steps
    assert used <= BUDGET + 4.0 + SAVE_S


def test_a_resumed_budget_continues_the_same_plan(corpus_file, tmp_path, monkeypatch):
    """Interrupted between two estimates and resumed, a run makes the same plan and the same
    model as the run that went straight through (the pace is in the resume point)."""
    step_time = changes_at_40_percent(2.0)
    t = trainer(corpus_file, tmp_path / "a")
    checks, measure = [], t.budget.pace.measure
    t.budget.pace.measure = lambda step, seconds: (checks.append(step), measure(step, seconds))
    straight = Clocked(t, step_time, monkeypatch)
    s, _ = straight.run()
    k = checks[len(checks) // 2] + 3  # after the change of speed, inside an interval
    first = Clocked(trainer(corpus_file, tmp_path / "b", should_stop=lambda step: step == k), step_time, monkeypatch)
    assert first.run()[0].stop_reason == "interrupted"
    saved = checkpoint.load_checkpoint(tmp_path / "b").trainer
    assert saved["budget"]["since"][0] == k - 3 and k < saved["total_steps"]
    resumed = Clocked(trainer(corpus_file, tmp_path / "b", resume=True), step_time, monkeypatch)
    r, _ = resumed.run()
    assert r.step == s.step and r.stop_reason == "steps"
    assert first.lrs + resumed.lrs == straight.lrs
    assert_identical(tmp_path / "a", tmp_path / "b")


def test_periodic_resume_points_are_paid_for(corpus_file, tmp_path, monkeypatch):
    t = trainer(corpus_file, tmp_path / "r", save_every=25)
    s, used = Clocked(t, changes_at_40_percent(1.0), monkeypatch).run()
    assert t.budget.pace.save_seconds == SAVE_S
    assert abs(used - BUDGET) <= 0.02 * BUDGET and s.stop_reason == "steps"


def test_a_moved_target_keeps_the_learning_rate_continuous():
    from charnn.train.config import TrainConfig

    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup=10)
    assert retargeted(5, cfg, 100, None) is None  # still warming up: nothing to keep
    assert retargeted(30, cfg, None, None) == [30, 0.0]  # before the first target: the peak rate
    since = retargeted(40, cfg, 100, None)
    assert since == [40, pytest.approx(30 / 90)]
    for new_total in (50, 80, 400):
        assert lr_at(40, cfg, new_total, since) == pytest.approx(lr_at(40, cfg, 100))
        assert lr_at(new_total, cfg, new_total, since) == pytest.approx(0.1)
    # A target that never moved is the plain cosine.
    assert lr_at(55, cfg, 100, None) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr_at(55, cfg, 100, [10, 0.0]) == lr_at(55, cfg, 100, None)


def test_the_pace_is_median_of_recent_intervals_and_survives_a_pause():
    pace = Pace()
    seconds = 0.0
    for step in range(1, 200):
        seconds += 30.0 if step == 60 else 0.1  # one 30-second pause
        if pace.tick(step, seconds):
            pace.measure(step, seconds)
            pace.plan_next(step, 400)
            assert pace.step_time() == pytest.approx(0.1)
    assert len(pace.step_times) == 3 and Pace.from_dict(pace.to_dict()) == pace


def test_an_old_resume_point_without_a_plan_resumes(corpus_file, tmp_path, monkeypatch):
    """A resume point saved before the plan was kept: its target is aimed again as it goes."""
    run = tmp_path / "r"
    first = Clocked(trainer(corpus_file, run, should_stop=lambda step: step == 100), changes_at_40_percent(1.0), monkeypatch)
    first.run()
    ck = checkpoint.load_checkpoint(run)
    old = {k: v for k, v in ck.trainer.items() if k not in ("cosine_from", "budget")}
    import torch

    from charnn.train.state import ResumeState

    assert ResumeState.from_dict(old).budget == {}
    resumed = trainer(corpus_file, run, resume=True)
    resumed.state = ResumeState.from_dict(old)
    resumed.budget.pace = Pace()
    s, used = Clocked(resumed, changes_at_40_percent(1.0), monkeypatch).run()
    assert s.stop_reason == "steps" and torch.isfinite(torch.tensor(resumed.state.elapsed))
