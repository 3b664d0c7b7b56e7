"""A trained run with text in and text out: what `charnn.load(run_dir)` returns, and `charnn sample`.

This is the edge where text meets ids: prompts are encoded here (with the unknown-character
policy), ids from sampling.generate are decoded here, stop strings are applied here. The
CLI, the server and notebooks all go through it. Settings are checked once, where they enter
(`CharModel.stream`, `sample_run`); below that, everything takes checked settings. May import
errors, settings, data.vocab, checkpoint, evaluate and the rest of infer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from charnn import checkpoint
from charnn.data.novelty import HEADLINE, Novelty
from charnn.data.vocab import UNK, UnknownPolicy
from charnn.errors import CharnnError, check_all
from charnn.evaluate import EvalResult, evaluate_ids
from charnn.infer.evalrun import EvalConfig
from charnn.infer.novelty import RunNovelty, open_novelty
from charnn.infer.sampling import SampleConfig, StopFilter, generate
from charnn.infer.score import ScoreConfig, Totals, score_chunks
from charnn.infer.scorepage import rows
from charnn.infer.steps import BACKENDS, QUANTIZE, make_stepper
from charnn.settings import field_problems, setting

FORMATS = ("text", "jsonl")

@dataclass
class SampleCommand(SampleConfig):
    """`charnn sample`: how text is drawn (SampleConfig), and what to load, where to start and
    how many samples. Without a seed the command draws one and says which."""

    seed: int | None = setting(None, "random seed; the same seed gives the same text",
                               shown="random, printed on stderr")
    prime: str = setting("", "text to start from; it is printed first", shown="none")
    num_samples: int = setting(1, "samples to generate, sample i with seed + i", positive=True)
    device: str = setting("cpu", "torch device")
    backend: str = setting("auto", "sampling engine: auto = ONNX Runtime when the run has an export "
                           "(charnn export; same numbers, faster), else torch", choices=BACKENDS)
    quantize: str = setting("none", "int8 = dynamically quantised weights: faster, slightly lower quality",
                            choices=QUANTIZE)
    novelty: bool = setting(False, "say how much of each sample is copied from the training text: the "
                            f"longest shared substring and the share of {HEADLINE}-grams found there (on stderr, "
                            "or in the JSON lines)")
    format: str = setting("text", "text = the samples as they are generated; jsonl = one JSON object per "
                          "sample (sample, seed, prime, text, and novelty with --novelty)", choices=FORMATS)

    def problems(self) -> list[str]:
        return super().problems() + field_problems(self, ["num_samples", "backend", "quantize", "format"])


class CharModel:
    """A loaded run: `generate` / `stream` text, `evaluate` and `score` text."""

    def __init__(
        self,
        loaded: checkpoint.LoadedRun,
        backend: str = SampleCommand.backend,
        quantize: str = SampleCommand.quantize,
    ) -> None:
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
        self._novelty: RunNovelty | None = None

    def prime_ids(self, prime: str, unknown: UnknownPolicy = SampleConfig.unknown) -> list[int]:
        """Ids to condition on. An empty prime starts after a newline (or the first character)."""
        ids = self.vocab.encode(prime, unknown, what="the prime text").tolist()
        if ids:
            return ids
        if prime:
            raise CharnnError("the prime text has no character in the vocabulary left to start from")
        return [self.vocab.id_of("\n") if self.vocab.has("\n") else 0]

    def stream(self, prime: str = "", *args, **settings) -> Iterator[str]:
        """Yield the continuation of `prime` piece by piece, as it is generated.

        The settings are SampleConfig's, with its defaults, by name or in its order after the
        prime: length, temperature, top_k, top_p, seed, stop, unknown.
        """
        config = SampleConfig(*args, **settings)
        check_all(config.problems())
        return self.stream_ids(self.prime_ids(prime, config.unknown), config)

    def generate(self, prime: str = "", *args, **settings) -> str:
        """The continuation of `prime` (without the prime itself), `length` characters at most.

        The settings are those of `stream` (SampleConfig's).
        """
        return "".join(self.stream(prime, *args, **settings))

    def stream_ids(self, ids: list[int], config: SampleConfig) -> Iterator[str]:
        """The continuation of the prime ids `ids` as text pieces; `config` is already checked."""
        stops = StopFilter(config.stop)
        for nxt in generate(self.stepper, [ids], config.length, config.temperature, config.top_k, config.top_p,
                            config.seed, self.banned):
            out = stops.feed(self.vocab.decode(nxt.tolist()))
            if out:
                yield out
            if stops.stopped:
                return
        tail = stops.flush()
        if tail:
            yield tail

    def novelty(self, text: str) -> Novelty:
        """How much of `text` is copied from the run's training text (charnn.novelty); the
        training text is indexed on the first call (and cached in the run directory)."""
        if self._novelty is None:
            self._novelty = open_novelty(self.run_dir)
        return self._novelty.measure(text)

    def evaluate(
        self, text: str, protocol: str = EvalConfig.protocol, unknown: UnknownPolicy = EvalConfig.unknown
    ) -> EvalResult:
        """Loss (nats/char), bits per char and perplexity of the model on `text`."""
        check_all(field_problems(EvalConfig(protocol=protocol, unknown=unknown), ["protocol", "unknown"]))
        ids = self.vocab.encode(text, unknown, what="the evaluation text")
        return evaluate_ids(self.model, ids, protocol)

    def score(self, text: str, top: int = ScoreConfig.top, unknown: UnknownPolicy = ScoreConfig.unknown) -> dict:
        """Every character of `text` scored: the document `charnn score --json` prints, without
        "run" and "text" (the totals, and "positions": one dict per character)."""
        check_all(field_problems(ScoreConfig(top=top, unknown=unknown), ["top", "unknown"]))
        totals = Totals()
        positions = [row for w in score_chunks(self.model, self.vocab, [text], top, unknown, totals)
                     for row in rows(w, self.vocab)]
        return {"positions": positions, **totals.to_dict()}


def load(
    run_dir: str | Path,
    device: str | torch.device = SampleCommand.device,
    backend: str = SampleCommand.backend,
    quantize: str = SampleCommand.quantize,
) -> CharModel:
    """Load the best weights of a run directory for sampling and evaluation.

    `backend` and `quantize` choose the sampling path (steps.make_stepper): by default the
    fastest one that keeps the model's float32 numbers; quantize="int8" trades a little
    quality (see BENCHMARKS.md) for speed. Evaluation always uses the float32 model.
    """
    check_all(field_problems(SampleCommand(backend=backend, quantize=quantize), ["backend", "quantize"]))
    return CharModel(checkpoint.load_run(run_dir, device), backend, quantize)


# --- charnn sample ----------------------------------------------------------------------------
@dataclass
class Samples:
    """What `sample_run` returns: the seed it used, and each sample's pieces as they come."""

    model: CharModel
    prime: list[int]  # the prime's ids, encoded once for every sample
    config: SampleCommand
    seed: int
    novelty: RunNovelty | None = None  # with --novelty: the training text, indexed

    def __iter__(self) -> Iterator[Iterator[str]]:
        for i in range(self.config.num_samples):
            yield self.model.stream_ids(self.prime, replace(self.config, seed=self.seed + i))


def sample_run(run_dir: str | Path, config: SampleCommand) -> Samples:
    """`charnn sample`: the settings checked and the prime encoded once, before any text.

    Unknown prime characters are reported here, so nothing is printed before an error. With
    `config.novelty`, the run's training text is indexed here too (Samples.novelty); the
    novelty of a sample is that of its generated text, without the prime.
    """
    check_all(config.problems())
    model = CharModel(checkpoint.load_run(run_dir, config.device), config.backend, config.quantize)
    prime = model.prime_ids(config.prime, config.unknown)
    seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    novelty = open_novelty(model.run_dir) if config.novelty else None  # a changed corpus: said before any text
    return Samples(model, prime, config, seed, novelty)
