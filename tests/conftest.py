"""Shared fixtures: tiny corpora and tiny runs, so the whole suite stays fast and hermetic."""

from __future__ import annotations

import os

# Tiny models run fastest on one thread, and with two OpenMP threads on a busy 2-core machine
# each step can wait hundreds of milliseconds at a barrier. Subprocesses inherit this too.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Two voices, some punctuation, newlines and a few non-ASCII characters: a small vocabulary
# (~30) that still exercises Unicode handling everywhere.
TINY_TEXT = (
    "ROMEO: café au lait, naïve one?\n"
    "JULIET: über alles — and yet, no.\n"
) * 40

TINY_MODEL = {"model": "lstm", "hidden": 16, "embed": 8, "layers": 1}
TINY_TRAIN = {"batch_size": 4, "seq_len": 16, "eval_every": 10, "log_every": 5, "sample_chars": 0}


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained tiny run directory, shared read-only by the tests that only load it."""
    import charnn

    root = tmp_path_factory.mktemp("tiny_run")
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    out = root / "run"
    charnn.train(corpus=[str(corpus)], out=str(out), max_steps=30, progress=False,
                 **TINY_MODEL, **TINY_TRAIN)
    return out


def slowed(model, seconds: float):
    """Make every sampling step of a loaded model (charnn.load) take at least `seconds`, so
    that a test can act while a generation is still streaming."""
    import time

    step = model.stepper.step

    def slow(ids, state=None):
        time.sleep(seconds)
        return step(ids, state)

    model.stepper.step = slow
    return model
