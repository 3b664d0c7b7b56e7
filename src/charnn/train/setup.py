"""Setting a run up: its corpus and batches, the model, the optimizer, mixed precision, and
how its validation split is scored.

Each function is local to one process (no collective call), so the trainer can build
everything inside Dist.agree and every rank fails together. Imports data, models,
checkpoint, evaluate and devices.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from charnn import checkpoint
from charnn.data.batching import make_batches
from charnn.data.docbatches import DocumentBatches
from charnn.data.documents import DocSpec
from charnn.data.source import OpenedCorpus, open_corpus, same_split
from charnn.data.vocab import Vocab
from charnn.devices import DTYPES
from charnn.errors import CharnnError
from charnn.evaluate import EvalResult, evaluate_documents, evaluate_ids
from charnn.models import CharLM, ModelConfig, build_model
from charnn.train import finetune
from charnn.train.config import TrainConfig, check_memory
from charnn.train.distributed import Dist


def check_batch_split(batch_size: int, world: int) -> None:
    if batch_size % world:
        raise CharnnError(
            f"--batch-size {batch_size} is the global batch and must split evenly over "
            f"the {world} processes; use a multiple of {world}"
        )


def training_corpus(cfg: TrainConfig, run: checkpoint.RunFiles | None,
                    parent: finetune.Parent | None = None) -> OpenedCorpus:
    """The run's corpus; a resumed run's must be the one it recorded, read in its vocabulary;
    a new fine-tuned run's is read in the vocabulary made from its `parent`'s."""
    corpus = open_corpus(cfg.corpus, cfg.encoding, cfg.errors, cfg.transliterate, cfg.val_fraction,
                         vocab=None if run is None else run.vocab, documents=DocSpec.of(asdict(cfg)),
                         unknown=cfg.unknown)
    if run is None and parent is not None:
        corpus = finetune.fine_tune_corpus(corpus, parent, cfg)
    if run is not None:
        now, then = corpus.record, run.data
        if not same_split(then, now):
            raise CharnnError(
                f"the corpus ({', '.join(now['sources'])}) changed since the run started "
                f"({then.get('chars')} characters then, {now['chars']} now); restore it, "
                f"or start a new run with --out"
            )
        if corpus.vocab != run.vocab:
            raise CharnnError(f"{now['prepared']} has another vocabulary than the run {run.path}")
    return corpus


def training_batches(cfg: TrainConfig, corpus: OpenedCorpus, dist: Dist):
    """The batch iterator of this rank: the documents layout for a documents corpus, else
    --batching's; rank r reads its share of every global batch of --batch-size."""
    world = dist.world_size
    if corpus.train_docs is not None:
        return DocumentBatches(corpus.train_docs, cfg.batch_size // world, cfg.seq_len, cfg.seed, dist.rank, world)
    return make_batches(cfg.batching, corpus.train_ids, cfg.batch_size // world, cfg.seq_len,
                        cfg.seed, dist.rank, world, reset_prob=cfg.reset_prob)


def validation_loss(model: CharLM, val_ids, val_docs, streams: int) -> EvalResult:
    """The validation split scored: a documents corpus document by document, text in one
    stateful pass of `streams` warmed-up segments."""
    if val_docs is not None:
        return evaluate_documents(model, val_docs)
    return evaluate_ids(model, val_ids, "stateful", streams=streams)


def seeded_model(model_config: ModelConfig, cfg: TrainConfig, dist: Dist, device: torch.device,
                 parent: finetune.Parent | None = None, vocab: Vocab | None = None) -> CharLM:
    """The model a run starts from: seeded weights, or a fine-tuned run's `parent`'s moved to `vocab`."""
    check_memory(model_config, cfg, dist.world_size, str(device))  # again, with the vocabulary known now
    torch.manual_seed(cfg.seed)
    model = build_model(model_config)
    if parent is not None:
        finetune.start_from(model, parent, vocab)
    model = model.to(device)
    if dist.enabled:
        # Same weights on every rank, but each rank's own dropout masks.
        torch.manual_seed(cfg.seed + dist.rank)
    return model


def make_optimizer(model: CharLM, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.99),
        # One fused kernel per step instead of a dozen per parameter: ~8x faster updates,
        # ~10 % of a 2x512 LSTM's step time on a CPU.
        fused=device.type in ("cpu", "cuda"),
    )


def mixed_precision(dtype: str, device: torch.device) -> tuple[torch.autocast, torch.amp.GradScaler]:
    """The autocast context of the forward pass, and the loss scaler (float16 only)."""
    autocast = torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "float32")
    # float16 has too few exponent bits for small gradients: scale the loss up before
    # backward and the gradients down before the step, skipping steps that overflow.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    return autocast, scaler
