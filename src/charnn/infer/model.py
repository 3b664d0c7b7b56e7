"""A trained run with text in and text out: what `charnn.load(run_dir)` returns, and `charnn sample`.

This is the edge where text meets ids: prompts are encoded here (with the unknown-character
policy), ids from sampling.generate are decoded here, stop strings are applied here. The
CLI, the server and notebooks all go through it. Settings are checked once, where they enter
(`CharModel.stream`, `sample_run`); below that, everything takes checked settings. May import
errors, settings, data.vocab, checkpoint, evaluate and the rest of infer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from charnn import checkpoint
from charnn.data.documents import DocSpec
from charnn.data.novelty import HEADLINE, Novelty, where_found
from charnn.data.source import run_documents
from charnn.data.vocab import END, START, UNK, UnknownPolicy
from charnn.errors import CharnnError, check_all
from charnn.evaluate import EvalResult, evaluate_ids
from charnn.infer.evalrun import EvalConfig, score_text
from charnn.infer.novelty import RunNovelty, open_novelty
from charnn.infer.sampling import (
    SampleConfig,
    StopFilter,
    generate,
    generate_documents,
    seed_or_random,
)
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
                           "(charnn export; same numbers, faster), else torch; native = one LSTM stream "
                           "in a C kernel compiled on first use (needs a C compiler; faster)", choices=BACKENDS)
    quantize: str = setting("none", "int8 = dynamically quantised weights: faster, slightly lower quality",
                            choices=QUANTIZE)
    novelty: bool = setting(False, "say how much of each sample is copied from the training text: the "
                            f"longest shared substring and the share of {HEADLINE}-grams found there (on stderr, "
                            "or in the JSON lines); a documents run: how many documents are in the training set, "
                            "in the held-out set, or new")
    format: str = setting("text", "text = as generated (a documents run: one document per line, a line break "
                          "in one written \\n and a backslash \\\\); jsonl = one JSON object per sample "
                          "(text, seed, ...; novelty with --novelty)", choices=FORMATS)

    def problems(self) -> list[str]:
        return super().problems() + field_problems(self, ["num_samples", "backend", "quantize", "format"])


@dataclass
class Document:
    """One generated document of a documents run."""

    index: int  # its place among the documents asked for
    seed: int  # the seed it was drawn with (seed + index)
    text: str  # the prime, then what was generated
    ended: bool  # it drew <end>; False: cut at the length cap (or a stop string)
    finish: str  # "end", "length" or "stop"

    def line(self) -> str:
        """The text on one line: a backslash written \\\\, a line break \\n (\\r for a carriage return)."""
        return self.text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")

    def to_dict(self) -> dict:
        return {"index": self.index, "seed": self.seed, "text": self.text, "ended": self.ended,
                "finish": self.finish, "chars": len(self.text)}


class CharModel:
    """A loaded run: `generate` / `stream` text, `evaluate` and `score` text."""

    def __init__(
        self,
        loaded: checkpoint.LoadedRun,
        backend: str = SampleCommand.backend,
        quantize: str = SampleCommand.quantize,
    ) -> None:
        self.files = loaded.files  # the run directory as read once (novelty reads its corpus record)
        self.run_dir = loaded.files.path
        self.model = loaded.model
        # An ONNX export made for these weights is cached in the run directory.
        cache = checkpoint.onnx_path(self.run_dir, quantize)
        self.stepper = make_stepper(loaded.model, backend, quantize, cache, loaded.info.get("sha256", ""))
        self.vocab = loaded.files.vocab
        self.config = loaded.files.model_config
        self.info = loaded.info
        # A documents run (--documents) draws whole documents: from <start>, until <end>.
        self.documents = DocSpec.of(loaded.files.train)
        self.end = self.vocab.id_of(END) if self.documents is not None else None
        # Special tokens are never generated as text (but a document's <end>, which ends it).
        self.banned = [self.vocab.id_of(t) for t in (UNK, START) if self.vocab.has(t)]
        self._novelty: RunNovelty | None = None

    def prime_ids(self, prime: str, unknown: UnknownPolicy = SampleConfig.unknown) -> list[int]:
        """Ids to condition on. An empty prime starts after a newline (or the first character);
        a documents run's prime is the start of a document: <start> first."""
        ids = self.vocab.encode(prime, unknown, what="the prime text").tolist()
        if self.documents is not None:
            return [self.vocab.id_of(START), *ids]
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
            if self.end is not None and int(nxt) == self.end:  # the document is complete
                break
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
            self._novelty = open_novelty(self.files)
        return self._novelty.measure(text)

    def sample_documents(self, n: int = 1, prime: str = "", *args, **settings) -> list[Document]:
        """`n` complete documents of a documents run, each `prime` + what follows it up to <end>
        (or `length` characters, the cap), drawn together; document i with seed + i.

        The settings are those of `stream` (SampleConfig's)."""
        config = SampleConfig(*args, **settings)
        check_all(config.problems())
        seed = seed_or_random(config.seed)
        return sorted(self.iter_documents(n, prime, self.prime_ids(prime, config.unknown), config, seed),
                      key=lambda d: d.index)

    def iter_documents(self, n: int, prime: str, ids: list[int], config: SampleConfig, seed: int):
        """Documents as they finish (any order); `config` is checked, `ids` the prime's."""
        if self.documents is None:
            raise CharnnError(f"{self.run_dir} was not trained on documents (charnn train --documents); "
                              f"sample text from it without documents")
        for i, out, ended in generate_documents(self.stepper, ids, n, config.length, config.temperature,
                                                config.top_k, config.top_p, seed, self.banned, self.end):
            stops = StopFilter(config.stop)
            text = stops.feed(self.vocab.decode(out))
            text += stops.flush()
            finish = "stop" if stops.stopped else "end" if ended else "length"
            yield Document(i, seed + i, prime + text, ended and not stops.stopped, finish)

    def evaluate(
        self, text: str, protocol: str = EvalConfig.protocol, unknown: UnknownPolicy = EvalConfig.unknown
    ) -> EvalResult:
        """Loss (nats/char), bits per char and perplexity of the model on `text` (a documents
        run: the documents of `text`, cut as the run's corpus was, each scored on its own)."""
        check_all(field_problems(EvalConfig(protocol=protocol, unknown=unknown), ["protocol", "unknown"]))
        if self.documents is not None:
            return score_text(self.model, self.vocab, self.documents, text, protocol, unknown, "the evaluation text")
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
    # with --novelty on a documents run: its training and held-out documents, as sets
    document_sets: tuple[set[str], set[str]] | None = None

    def document_novelty(self, doc: Document) -> str:
        """Where a generated document is found verbatim: "train", "held_out" or "new" (makemore's
        in train / in test / new); the whole document, prime included, is compared."""
        return where_found(doc.text, *self.document_sets)

    def __iter__(self) -> Iterator[Iterator[str]]:
        for i in range(self.config.num_samples):
            yield self.model.stream_ids(self.prime, replace(self.config, seed=self.seed + i))

    def documents(self) -> Iterator[Document]:
        """A documents run's num_samples documents, drawn in one batch, each yielded in order as
        soon as it and those before it have finished."""
        done: dict[int, Document] = {}
        k = 0
        for doc in self.model.iter_documents(self.config.num_samples, self.config.prime, self.prime,
                                             self.config, self.seed):
            done[doc.index] = doc
            while k in done:
                yield done.pop(k)
                k += 1


def sample_run(run_dir: str | Path, config: SampleCommand) -> Samples:
    """`charnn sample`: the settings checked and the prime encoded once, before any text.

    Unknown prime characters are reported here, so nothing is printed before an error. With
    `config.novelty`, the run's training text is indexed here too (Samples.novelty); the
    novelty of a sample is that of its generated text, without the prime.
    """
    check_all(config.problems())
    model = CharModel(checkpoint.load_run(run_dir, config.device), config.backend, config.quantize)
    prime = model.prime_ids(config.prime, config.unknown)
    seed = seed_or_random(config.seed)
    if config.novelty and model.documents is not None:  # a changed corpus: said before any text
        train, held_out = run_documents(model.files)
        return Samples(model, prime, config, seed, document_sets=(set(train), set(held_out)))
    novelty = open_novelty(model.files) if config.novelty else None
    return Samples(model, prime, config, seed, novelty)
