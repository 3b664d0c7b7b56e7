"""The loss-curve PNG of a run (needs the [plot] extra: matplotlib)."""

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
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
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
