"""The trainer's writes to its run directory, and what a failed one leaves.

Rank 0 alone writes (distributed.py); when a write fails (a full disk, a permission taken
away), every rank stops at that same point with one line that names the file and the cause
and says what the run still holds: the resume point on disk is never touched by a failed
write (checkpoint.py writes atomically), so the line tells the step it can resume from.
Imports checkpoint, files, errors and distributed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from charnn import checkpoint
from charnn.errors import CharnnError
from charnn.files import remove_temporaries
from charnn.train.distributed import Dist


class RunWriter:
    """Rank 0's writes of one run directory, each agreed on by every rank."""

    def __init__(self, dist: Dist, run_dir: Path) -> None:
        self.dist, self.run_dir = dist, run_dir
        self.saved_step: int | None = None  # the step of the resume point on disk; None = none yet

    def write(self, name: str, step: int, write: Callable[[], None]) -> None:
        """Rank 0 writes the run's file `name` at `step`; a failure stops every rank here.
        A collective (Dist.agree): every rank calls it at the same point."""

        def attempt() -> None:
            if not self.dist.is_main:
                return
            try:
                write()
            except OSError as e:  # the write itself: name the run's file, not a temporary sibling
                raise CharnnError(f"cannot write {self.run_dir / name}: {e.strerror or e}; "
                                  f"{self.what_is_left(step)}") from None
            except CharnnError as e:  # checkpoint.py's own line for it
                raise CharnnError(f"{e}; {self.what_is_left(step)}") from None

        self.dist.agree(attempt)

    def resume_point(self, step: int, write: Callable[[], None]) -> None:
        self.write(checkpoint.LAST, step, write)
        self.saved_step = step

    def what_is_left(self, step: int) -> str:
        if self.saved_step is None:
            return (f"training stopped at step {step}, before its first resume point: once that is fixed, "
                    f"start a new run with --out (--save-every N writes a resume point every N steps)")
        return (f"training stopped at step {step}; the resume point of step {self.saved_step} is intact: "
                f"once that is fixed, continue with charnn train --resume {self.run_dir}")

    # --- on resuming (rank 0, inside the trainer's set-up: no collective) -----------------
    def clean_up(self) -> None:
        """Delete the temporaries a kill in the middle of a write left behind."""
        try:
            remove_temporaries(self.run_dir)
        except OSError as e:
            raise CharnnError(f"cannot clean up {self.run_dir}: {e.strerror or e}") from None

    def resumed_at(self, step: int) -> None:
        """Drop the metrics lines written after the resume point of `step`."""
        self.saved_step = step
        if not self.dist.is_main:
            return
        try:
            checkpoint.truncate_metrics(self.run_dir, step)
        except OSError as e:
            raise CharnnError(f"cannot rewrite {self.run_dir / checkpoint.METRICS}: {e.strerror or e}; "
                              f"the resume point of step {step} is intact: once that is fixed, resume again") from None
