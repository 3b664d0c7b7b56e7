"""Setting a run up: its corpus, the model (checked to fit in memory first), the optimizer and mixed precision.

Each function is local to one process (no collective call), so the trainer can build
everything inside Dist.agree and every rank fails together. Imports data, models,
checkpoint and devices.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from charnn import checkpoint
from charnn.data.source import OpenedCorpus, open_corpus
from charnn.devices import DTYPES, format_bytes, memory_limit
from charnn.errors import CharnnError
from charnn.models import CharLM, ModelConfig, build_model
from charnn.settings import flag_name
from charnn.train.config import TrainConfig
from charnn.train.distributed import Dist


def check_batch_split(batch_size: int, world: int) -> None:
    if batch_size % world:
        raise CharnnError(
            f"--batch-size {batch_size} is the global batch and must split evenly over "
            f"the {world} processes; use a multiple of {world}"
        )


# The settings that size the model and the batch, in the order they are weighed.
SIZE_FLAGS = ("hidden", "layers", "embed", "expand", "mlp", "conv", "batch_size", "seq_len")


def check_memory(model_config: ModelConfig, cfg: TrainConfig, world: int, device: str,
                 run: checkpoint.RunFiles | None = None) -> None:
    """Refuse, before anything is built, a model whose weights, gradients, AdamW moments and one
    batch's activations cannot fit in the device's memory (a lower bound: what is refused
    cannot train; what passes may still be too big). The message names the setting to lower:
    the one whose least value would shrink the estimate most; for a resumed `run`, a setting
    of its config.json (they cannot change on resume)."""
    limit = memory_limit(device)
    if limit is None or model_config.problems() or cfg.problems():  # the problems are reported elsewhere
        return
    available, where = limit

    def needed(m: ModelConfig, c: TrainConfig) -> int:
        return m.estimated_bytes(training=True, batch_size=c.batch_size // world, seq_len=c.seq_len,
                                 value_bytes=4 if c.dtype == "float32" else 2)

    need = needed(model_config, cfg)
    if need <= available:
        return
    smallest, culprit = need, "hidden"
    for name in SIZE_FLAGS:
        is_model = name in {f.name for f in fields(ModelConfig)}
        config = model_config if is_model else cfg
        least = 0 if name in ("mlp", "conv") else 1
        if getattr(config, name) > least:
            smaller = replace(config, **{name: least})
            n = needed(smaller, cfg) if is_model else needed(model_config, smaller)
            if n < smallest:
                smallest, culprit = n, name
    names = ("batch_size", "seq_len") if culprit in ("batch_size", "seq_len") else (culprit,)
    values = {n: getattr(cfg if n in ("batch_size", "seq_len") else model_config, n) for n in names}
    shown = {n: v if isinstance(v, int) else format(v, "g") for n, v in values.items()}
    if run is None:
        given = " x ".join(f"{flag_name(n)} {v}" for n, v in shown.items())
        fix = f"lower {' or '.join(map(flag_name, names))}"
    else:
        given = f"the run {run.path} ({', '.join(f'{n} {v}' for n, v in shown.items())} in its {checkpoint.CONFIG})"
        fix = "resume it on a machine with more memory"
    raise CharnnError(
        f"{given} needs at least {format_bytes(need)} of memory to train ({model_config.parameter_count():,} "
        f"parameters with their gradients and AdamW's two moments, and one batch's activations), more than "
        f"{where} ({format_bytes(available)}); {fix}"
    )


def training_corpus(cfg: TrainConfig, run: checkpoint.RunFiles | None) -> OpenedCorpus:
    """The run's corpus; a resumed run's must be the one it recorded, read in its vocabulary."""
    corpus = open_corpus(cfg.corpus, cfg.encoding, cfg.errors, cfg.transliterate, cfg.val_fraction,
                         vocab=None if run is None else run.vocab)
    if run is not None:
        now, then = corpus.record, run.data
        if then.get("sha256") != now["sha256"]:
            raise CharnnError(
                f"the corpus ({', '.join(now['sources'])}) changed since the run started "
                f"({then.get('chars')} characters then, {now['chars']} now); restore it, "
                f"or start a new run with --out"
            )
        if corpus.vocab != run.vocab:
            raise CharnnError(f"{now['prepared']} has another vocabulary than the run {run.path}")
    return corpus


def seeded_model(model_config: ModelConfig, cfg: TrainConfig, dist: Dist, device: torch.device) -> CharLM:
    torch.manual_seed(cfg.seed)
    model = build_model(model_config).to(device)
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
