"""train(): the one library call behind `charnn train` and charnn.train().

Settings are resolved (config.py), the run is set up and trained (loop.py) inside a
torchrun session when there is one (distributed.py). Imports those three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from charnn.progress import format_duration
from charnn.train import auto
from charnn.train.config import TrainConfig, resolve
from charnn.train.distributed import session
from charnn.train.loop import Summary, Trainer


@dataclass
class Trained:
    """A finished (or stopped) training call, with what `charnn train` reports beyond the summary."""

    summary: Summary
    config: TrainConfig  # the settings the run used
    is_main: bool  # this process speaks for the run (the only one, or rank 0 under torchrun)


def run_training(
    settings: dict,
    *,
    resume: str | None = None,
    should_stop: Callable[[int], bool] | None = None,
    progress: bool = True,
) -> Trained:
    """Resolve the settings, set the run up and train it. Under torchrun every process calls
    this and they train one model together."""
    with session() as dist:
        model_config, cfg = dist.agree(lambda: resolve(settings, resume, dist.world_size))
        if cfg.preset == "auto" and resume is None:  # the model for this machine, timed here
            model_config, cfg = auto.settle(model_config, cfg, settings, dist)
        trainer = dist.agree(
            lambda: Trainer(model_config, cfg, resume=resume is not None, should_stop=should_stop,
                            progress=progress, dist=dist)
        )
        return Trained(trainer.run(), cfg, dist.is_main)


def train(
    *,
    resume: str | None = None,
    should_stop: Callable[[int], bool] | None = None,
    progress: bool = True,
    **settings,
) -> Summary:
    """Train a model; the same code as `charnn train`.

    Settings are the fields of ModelConfig and TrainConfig by name, e.g.
    `train(corpus=["input.txt"], model="gru", hidden=256, max_steps=1000, out="runs/x")`.
    `resume=RUN_DIR` continues a run (only stopping, logging and device settings may
    change); `init_from=RUN_DIR` starts a new run from that run's best weights (fine-tuning:
    `train(corpus=["mine.txt"], init_from="runs/default", max_time=60)`). `should_stop(step)` is asked before each step; True saves and stops the run as
    a signal would. Under torchrun every process calls this and they train one model
    together (distributed.py); each returns the same summary.
    """
    return run_training(settings, resume=resume, should_stop=should_stop, progress=progress).summary


def format_summary(s: Summary) -> str:
    val = f"{s.val_loss:.4f} nats/char ({s.val_bpc:.3f} bpc)" if s.val_loss is not None else "n/a"
    return (
        f"run {s.run_dir}: {s.step} steps ({s.stop_reason}), val loss {val}, "
        f"wall time {format_duration(s.wall_time)}, {s.chars_per_s:,.0f} chars/s, "
        f"{s.params:,} parameters"
    )
