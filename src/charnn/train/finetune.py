"""Fine-tuning: `charnn train NEW_TEXT --init-from RUN` starts a new run from RUN's best weights.

What it takes from RUN (the parent) and what it does not:

- the architecture: the model settings of RUN's config.json. A model flag that disagrees with
  them is one line of error (`parent_model`); --dropout alone may change, as it shapes no weight;
- the weights: RUN's model.safetensors, moved into the new run's vocabulary (`start_from`);
- nothing else: the optimizer and the schedule start afresh, with fine-tuning's own default
  --lr and --warmup (config.py says which and why), and every training flag applies as to a
  run from scratch. RUN is only read, never written.

The vocabulary (--vocab, data/vocab.py's fine_tune_vocab): "extend" (the default) adds the
corpus's new characters as new rows of the input and output layers, initialised so that
the parent's predictions start unchanged (models/resize.py); "keep" reads the corpus in the
parent's vocabulary, its other characters per --unknown (error, skip, replace).

The new run records its parent (path, SHA-256 of its weights file, step) in config.json, and
its first resume point, written before the first step, holds the weights it starts from: a
resumed fine-tuned run never reads the parent again. Only a run killed before that first
write (between creating config.json and it) goes back to the parent, after checking that
its weights file is the one recorded.

Imports checkpoint, data and models; nothing of the loop (loop.py calls this module).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch

from charnn import checkpoint
from charnn.data.source import OpenedCorpus
from charnn.data.vocab import Vocab, fine_tune_vocab, positions_in
from charnn.errors import CharnnError
from charnn.models import CharLM, ModelConfig
from charnn.models.resize import remap_vocab
from charnn.settings import default_of

if TYPE_CHECKING:
    from charnn.train.config import TrainConfig

# Model settings a fine-tuned run may set for itself: they shape no weight.
FREE_MODEL_SETTINGS = ("dropout",)


@dataclass
class Parent:
    """The run a fine-tuned run starts from, loaded."""

    model: CharLM  # with its best weights
    vocab: Vocab
    record: dict  # what the new run keeps of it: path, sha256 (of model.safetensors), step


def parent_model(run: str, given: dict) -> ModelConfig:
    """The model settings of a run fine-tuned from `run`: the parent's, but for the free ones
    `given` sets; any other model setting given must be the parent's (one line if not)."""
    parent = _read(run).model_config
    merged = ModelConfig(**{**asdict(parent), **given})  # "auto" resolves as it would in the parent
    conflicts = [k for k in given if k not in FREE_MODEL_SETTINGS and getattr(merged, k) != getattr(parent, k)]
    if conflicts:
        shown = ", ".join(f"--{k.replace('_', '-')} {given[k]}" for k in conflicts)
        has = ", ".join(f"{k} {getattr(parent, k)}" for k in conflicts)
        raise CharnnError(f"{shown} conflicts with the --init-from run {run} ({has}): a fine-tuned model "
                          f"keeps its parent's architecture; drop the flag, or train from scratch without "
                          f"--init-from")
    return replace(parent, **{k: getattr(merged, k) for k in FREE_MODEL_SETTINGS})


def _read(run: str) -> checkpoint.RunFiles:
    try:
        return checkpoint.read_run(run)
    except CharnnError as e:
        raise CharnnError(f"--init-from {run}: {e}") from None


def parent_of(cfg: TrainConfig, run: checkpoint.RunFiles | None) -> Parent | None:
    """The parent a run starts from: a new fine-tuned run's, or a resumed fine-tuned `run`'s if it
    died before its first resume point; None for every other run."""
    if not cfg.init_from or (run is not None and checkpoint.has_checkpoint(run.path)):
        return None
    return open_parent(cfg, run)


def open_parent(cfg: TrainConfig, run: checkpoint.RunFiles | None) -> Parent:
    """The parent of a new fine-tuned run (`run` None), or of `run`, restarted from step 0
    because it died before its first resume point: then the parent must be unchanged."""
    path = cfg.init_from
    if run is not None:
        if not run.parent or not isinstance(run.parent.get("path"), str):
            raise CharnnError(f"{run.path / checkpoint.CONFIG} has no parent record for its --init-from "
                              f"{cfg.init_from}; start a new run with --out")
        path = run.parent["path"]
    loaded, record = checkpoint.load_parent(path)
    if run is not None and record["sha256"] != run.parent.get("sha256"):
        raise CharnnError(f"{run.path} stopped before its first resume point and its parent {path} has changed "
                          f"since (model.safetensors has another SHA-256); restore the parent, or start a "
                          f"new run with --out")
    return Parent(loaded.model, loaded.files.vocab, record)


def fine_tune_corpus(corpus: OpenedCorpus, parent: Parent, cfg: TrainConfig) -> OpenedCorpus:
    """The new corpus read in the fine-tuned run's vocabulary (--vocab, --unknown)."""
    vocab = fine_tune_vocab(parent.vocab, corpus.vocab.chars, cfg.vocab, needed_specials=corpus.vocab.specials)
    text = corpus.text
    if corpus.train_docs is not None:  # a documents corpus: the characters of all its documents
        text = "".join(corpus.train_docs.texts) + "".join(corpus.val_docs.texts)
    if cfg.unknown == "error" and text is not None and vocab.unknown_chars(text):
        try:  # Vocab.encode's message names the characters and the --unknown fixes
            vocab.encode(text, "error", what="the corpus")
        except CharnnError as e:
            raise CharnnError(f"{e}, or --vocab extend (add them to the model)") from None
    return corpus.in_vocab(vocab, cfg.unknown)


def start_from(model: CharLM, parent: Parent, vocab: Vocab) -> None:
    """Load the parent's weights into `model` (built for `vocab`), moved to their new ids."""
    state = parent.model.state_dict()
    if vocab != parent.vocab:
        state = remap_vocab(state, positions_in(parent.vocab, vocab), model)
    with torch.no_grad():
        model.load_state_dict(state)


def describe(parent: Parent, vocab: Vocab) -> str:
    """What a fine-tuned run starts from, in one line for the log."""
    added = sorted(set(vocab.chars) - set(parent.vocab.chars)) + [s for s in vocab.specials
                                                                   if s not in parent.vocab.specials]
    shown = " ".join(c if c.isprintable() and not c.isspace() else repr(c) for c in added[:30])
    shown += " ..." if len(added) > 30 else ""
    grown = f"{len(parent.vocab)} -> {len(vocab)} tokens, new: {shown}" if added else f"{len(vocab)} tokens, kept"
    return (f"fine-tuning from {parent.record['path']} (step {parent.record['step']}); "
            f"vocabulary {grown}")


def check_settings(cfg: TrainConfig) -> list[str]:
    """The fine-tuning flags' own problems: --vocab and --unknown only with --init-from, and
    --unknown only with --vocab keep (extend has a place for every character)."""
    cls = type(cfg)
    if not cfg.init_from:
        given = [f"--{n} {getattr(cfg, n)}" for n in ("vocab", "unknown") if getattr(cfg, n) != default_of(cls, n)]
        if given:
            return [f"{' and '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --init-from RUN "
                    f"(fine-tuning); drop {'it' if len(given) == 1 else 'them'}"]
    elif cfg.vocab == "extend" and cfg.unknown != default_of(cls, "unknown"):
        return [f"--unknown {cfg.unknown} applies to --vocab keep (--vocab extend adds every character of the "
                f"corpus); add --vocab keep, or drop --unknown"]
    return []
