"""The run directory's layout: what its files are called, and what a fault while writing one
leaves (one line: the file, the cause, what is intact, how to continue). Part of the
checkpoint package; it imports only errors and files.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from charnn.errors import CharnnError
from charnn.files import path_kind, reason

CONFIG = "config.json"
VOCAB = "vocab.json"
BEST = "model.safetensors"
LAST = "last.safetensors"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
NOVELTY_INDEX = "novelty.npy"  # a cache: the suffix array of the training ids (charnn sample --novelty)
NOVELTY_RECORD = "novelty.json"  # what it was built from; it is rebuilt when that does not match


def onnx_path(run_dir: str | Path, quantize: str = "none") -> Path:
    """Where `charnn export` puts the one-step ONNX model (and sampling caches it)."""
    return Path(run_dir) / ("step.onnx" if quantize == "none" else f"step-{quantize}.onnx")


def plot_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / PLOT


def novelty_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """Where the novelty index of a run is cached: (the suffix array, its record)."""
    return Path(run_dir) / NOVELTY_INDEX, Path(run_dir) / NOVELTY_RECORD


def _exists(path: Path) -> bool:
    try:
        return path_kind(path, follow=False) is not None
    except CharnnError:
        return True  # cannot be told: say nothing about it


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing `path` of a run becomes one line: the file, the cause, what is kept."""
    try:
        yield
    except OSError as e:
        kept = {LAST: "the previous resume point is intact", BEST: "the previous best weights are intact",
                METRICS: "the metrics log is as it was"}[path.name]
        if path.name != METRICS and not _exists(path):
            kept = "nothing was written"
        raise CharnnError(f"cannot write {path}: {reason(e)}; {kept}: once that is fixed, continue with "
                          f"charnn train --resume {path.parent}") from None
