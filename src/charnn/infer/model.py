"""A trained run with text in and text out: what `charnn.load(run_dir)` returns.

This is the edge where text meets ids: prompts are encoded here (with the unknown-character
policy), ids from sample.generate are decoded here, stop strings are applied here. The
CLI, the server and notebooks all go through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from charnn import checkpoint
from charnn.data.vocab import UNK, UnknownPolicy
from charnn.errors import CharnnError
from charnn.evaluate import EvalResult, evaluate_ids
from charnn.infer.sampling import StopFilter, generate, sampling_problems
from charnn.infer.steps import make_stepper


class CharModel:
    """A loaded run: `generate` / `stream` text, `evaluate` text."""

    def __init__(self, loaded: checkpoint.LoadedRun, backend: str = "auto", quantize: str = "none") -> None:
        self.run_dir = loaded.files.path
        self.model = loaded.model
        # An ONNX export made for these weights is cached in the run directory.
        cache = checkpoint.onnx_path(self.run_dir, quantize)
        self.stepper = make_stepper(loaded.model, backend, quantize, cache, loaded.info.get("sha256", ""))
        self.vocab = loaded.files.vocab
        self.config = loaded.files.model_config
        self.info = loaded.info
        # Special tokens are never generated as text.
        self.banned = [self.vocab.id_of(UNK)] if self.vocab.has(UNK) else []

    def prime_ids(self, prime: str, unknown: UnknownPolicy = "error") -> list[int]:
        """Ids to condition on. An empty prime starts after a newline (or the first character)."""
        ids = self.vocab.encode(prime, unknown, what="the prime text").tolist()
        if ids:
            return ids
        if prime:
            raise CharnnError("the prime text has no character in the vocabulary left to start from")
        return [self.vocab.id_of("\n") if self.vocab.has("\n") else 0]

    def stream(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = 0,
        stop: Sequence[str] = (),
        unknown: UnknownPolicy = "error",
    ) -> Iterator[str]:
        """Yield the continuation of `prime` piece by piece, as it is generated."""
        problems = sampling_problems(temperature, top_k, top_p)
        if length < 0:
            problems.append(f"--length must be >= 0, got {length}")
        if problems:
            raise CharnnError("; ".join(problems))
        ids = self.prime_ids(prime, unknown)
        stops = StopFilter(stop)
        for nxt in generate(self.stepper, [ids], length, temperature, top_k, top_p, seed, self.banned):
            out = stops.feed(self.vocab.decode(nxt.tolist()))
            if out:
                yield out
            if stops.stopped:
                return
        tail = stops.flush()
        if tail:
            yield tail

    def generate(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = 0,
        stop: Sequence[str] = (),
        unknown: UnknownPolicy = "error",
    ) -> str:
        """The continuation of `prime` (without the prime itself), `length` characters at most."""
        return "".join(self.stream(prime, length, temperature, top_k, top_p, seed, stop, unknown))

    def evaluate(
        self, text: str, protocol: str = "stateful", unknown: UnknownPolicy = "error"
    ) -> EvalResult:
        """Loss (nats/char), bits per char and perplexity of the model on `text`."""
        ids = self.vocab.encode(text, unknown, what="the evaluation text")
        return evaluate_ids(self.model, ids, protocol)


def load(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    quantize: str = "none",
) -> CharModel:
    """Load the best weights of a run directory for sampling and evaluation.

    `backend` and `quantize` choose the sampling path (inference.make_stepper): by default
    the fastest one that keeps the model's float32 numbers; quantize="int8" trades a little
    quality (see BENCHMARKS.md) for speed. Evaluation always uses the float32 model.
    """
    return CharModel(checkpoint.load_run(run_dir, device), backend, quantize)
