"""The loss-curve PNG of a run (needs the [plot] extra: matplotlib). Imports checkpoint and files.

The curve is drawn after everything of value is saved: it never fails a run. Records of
metrics.jsonl that are not numbers (a hand-edited file) are left out of it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from charnn import checkpoint
from charnn.files import atomic_write


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw_loss_curve(run_dir: str | Path) -> str | None:
    """Draw loss.png; a note for the user when it could not be drawn, None when it was."""
    try:
        if plot_run(run_dir) is None:
            return "loss curve not drawn: matplotlib is missing (pip install 'charnn[plot]')"
    except OSError as e:
        return f"loss curve not drawn: cannot write {checkpoint.plot_path(run_dir)}: {e.strerror or e}"
    return None


def _points(records: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of the records that hold both as finite numbers."""
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    return [(r["step"], r[key]) for r in records if number(r.get("step")) and number(r.get(key))]


def plot_run(run_dir: str | Path) -> Path | None:
    """Draw train and validation loss (nats/char) against step into the run's loss.png.

    Returns the path, or None when matplotlib is not installed.
    """
    if not matplotlib_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = checkpoint.read_metrics(run_dir)
    train, val = _points(records, "train_loss"), _points(records, "val_loss")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), label="validation", color="tab:orange", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / char)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
        ys = [y for _, y in train + val if math.isfinite(y)]
        if ys:  # the first steps (~ln V) would flatten the interesting part
            ax.set_ylim(min(ys) * 0.95, min(max(ys), min(ys) * 2.2))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = checkpoint.plot_path(run_dir)
    atomic_write(path, buf.getvalue())
    return path
