"""--preset auto: the model for this machine and this budget.

LADDER is the candidates, smallest first: each a model size with the batch shape and peak
learning rate that suit it (the 2 x 384 rung is the fixed model of `charnn train`, which does
not take --preset auto unless asked: presets.py says why). The choice needs two things per
candidate: how many characters it will see in the budget, and what validation loss that many
characters buy a model of its size.

- The characters: `probe` times a few training steps of each rung on this machine, with the
  run's dtype, threads, device and batch shape (the fastest of PROBE_STEPS), smallest first, and stops when two
  rungs in a row predict worse than the best so far, when one does not fit in memory, or when
  it has used PROBE_SHARE of the budget. Its seconds count in the budget (the run's clock
  starts with them).
- The loss: LAW, e + a / P^alpha + b / C^beta in parameters P and characters C, fitted to the
  runs of benchmarks/auto_grid.py (every rung, 1 to 10 minutes, on two effective machines).
- `choose` is a function of the step times alone (given them, the same choice every time);
  dropout and weight decay follow from the passes over the training text the choice will
  make (`regularisation`). Settings the user gives win over the ladder's (`options`).

`settle` makes a new run's configs from the choice (rank 0 probes under torchrun and the
others take its choice) and records it in TrainConfig.auto, so config.json says what was
chosen and why, and a resumed run reads it back instead of probing again. Imports models, data,
config and setup.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from charnn.data.corpus import bundled_text, resolve_sources
from charnn.errors import CharnnError
from charnn.models import ModelConfig, build_model
from charnn.models.lm import char_loss
from charnn.train.config import TrainConfig, check_memory, split_settings
from charnn.train.distributed import Dist
from charnn.train.setup import make_optimizer, mixed_precision


@dataclass(frozen=True)
class Candidate:
    """One rung of the ladder: LSTM layers x hidden, embedding 64, stateful batches."""

    layers: int
    hidden: int
    batch_size: int
    seq_len: int
    lr: float

    @property
    def name(self) -> str:
        return f"{self.layers}x{self.hidden}"

    def settings(self) -> dict:
        return {"model": "lstm", "layers": self.layers, "hidden": self.hidden, "embed": 64,
                "batch_size": self.batch_size, "seq_len": self.seq_len, "lr": self.lr}


LADDER = (
    Candidate(1, 256, 32, 96, 6e-3),
    Candidate(2, 256, 32, 96, 6e-3),
    Candidate(2, 384, 32, 96, 6e-3),
    Candidate(2, 512, 32, 128, 4e-3),
    Candidate(2, 640, 32, 128, 3.5e-3),
    Candidate(2, 768, 32, 128, 3e-3),
    Candidate(2, 1024, 64, 128, 2.5e-3),
    Candidate(3, 1024, 64, 128, 2e-3),
)


def regularisation(epochs: float, params: int) -> dict:
    """Dropout and weight decay for a model of `params` parameters that will make `epochs`
    passes over its training text. From the presets' tuning (BENCHMARKS.md "Preset tuning
    trials"): none is needed for a few passes; at ~7 passes 2 x 512 (3.3 M) scored best with
    dropout 0.35 and weight decay 0.1, and 2 x 768 by 14 passes with 0.5. Smaller models get
    proportionally less: on the grid, dropout 0.44 on a 2 x 256 at 7 passes (this rule before
    it was scaled by size) scored worse than 0.1 on 1.7 x fewer characters."""
    scale = min(1.0, params / 3.3e6)
    dropout = round(min(0.5, max(0.0, 0.08 * (epochs - 3) * scale)), 2)
    return {"dropout": dropout, "weight_decay": 0.1 if dropout >= 0.1 else 0.0}


# --- the law ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Law:
    """Validation loss (nats/char, windows protocol) after a whole warmup + cosine run that saw
    `chars` characters with `params` parameters: e + a / P^alpha + b / C^beta, P and C in
    millions. Fitted by benchmarks/auto_fit.py to the grid's runs (BENCHMARKS.md)."""

    e: float
    a: float
    alpha: float
    b: float
    beta: float

    def loss(self, params: float, chars: float) -> float:
        return self.e + self.a * (params / 1e6) ** -self.alpha + self.b * (max(chars, 1.0) / 1e6) ** -self.beta


# Fitted (benchmarks/auto_fit.py, rms 0.030 nats) to the 24 runs of the grid with at least
# MIN_STEPS steps: rungs 1 x 256 to 2 x 768, budgets of 1, 2 and 5 minutes, on this project's
# 2-core Xeon (AMX) as two machines, one core each: bfloat16 and float32 (BENCHMARKS.md).
LAW = Law(e=1.3211, a=0.0520, alpha=0.8454, b=0.3783, beta=0.7916)
# The fixed model (cpu-2min's 2 x 384, `charnn train`'s model before auto) is kept unless another
# rung is predicted better by more than this: the law's error (rms 0.025-0.030 nats) and the
# probe's (its pace of a rung is +-20 % of a run's on a shared CPU) are larger than the gains
# it would chase. On the grid the margin turned the 10-minute one-core bfloat16 choice from
# 2 x 256 (1.447, predicted 0.016 better) to the grid's best 2 x 384 (1.434), and moved no
# 1- to 5-minute choice (benchmarks/auto_fit.py --replay).
KEEP = 2  # LADDER index of the fixed model
SWITCH_MARGIN = 0.02
# The settings the choice sets; one given by the user wins over it.
CHOSEN = ("model", "layers", "hidden", "embed", "batch_size", "seq_len", "lr", "dropout", "weight_decay")
NOMINAL_VOCAB = 66  # the parameters are counted with tiny Shakespeare's vocabulary, whatever the corpus
# A rung that would make fewer steps than this is not chosen: its warmup (50 steps) and cosine
# have no room, and the law, fitted on runs of at least this many steps, does not hold there.
MIN_STEPS = 150
# Steps of the run's own shape per candidate: untimed, then timed. Timing 2 steps of 32
# characters and scaling them (this module's first probe) read a 2 x 384's pace on 2 threads
# as 10,000-17,000 chars/s where the run makes 23,000-25,000, and chose a 1 x 256 for the
# default run (windows loss 1.520 against the 2 x 384's 1.480).
PROBE_WARMUP = 2
PROBE_STEPS = 3
PROBE_SHARE = 0.05  # the probe stops adding candidates once it has used this share of the budget
# Of the budget left after the probe and the final evaluation, the share spent training steps:
# the rest goes to the resume point, logging and the step target's safety margin.
TRAINING_SHARE = 0.95
# The final evaluation (a forward pass over the validation split) costs this much of the
# training steps holding as many characters: on the grid's one-thread machines 0.8 (2 x 384)
# to 1.1 (2 x 768); at 1 minute it took half the budget of a 2 x 768.
EVAL_COST = 1.0


@dataclass(frozen=True)
class Option:
    """A candidate as it would run here: its settings (given flags applied), its measured step
    time, the characters that fit in the budget and the loss the law predicts for them."""

    name: str
    settings: dict
    params: int
    step_seconds: float
    chars: float
    predicted: float

    def record(self) -> dict:
        return {"name": self.name, "params": self.params, "step_seconds": round(self.step_seconds, 6),
                "chars": round(self.chars), "predicted": round(self.predicted, 4) if math.isfinite(self.predicted) else None}


def options(given: dict) -> list[tuple[str, dict]]:
    """The ladder's settings with the given ones applied, duplicates dropped, smallest first."""
    seen, out = [], []
    for c in LADDER:
        s = {**c.settings(), **{k: v for k, v in given.items() if k in CHOSEN}}
        if s not in seen:
            seen.append(s)
            out.append((c.name if s == c.settings() else _name(s), s))
    return out


def _name(s: dict) -> str:
    return f"{s['layers']}x{s['hidden']}"


def evaluate_option(name: str, settings: dict, params: int, step_seconds: float, seconds: float,
                    train_chars: float, given: dict, law: Law = LAW, val_fraction: float = 0.1) -> Option:
    """What `settings` would reach in `seconds` at `step_seconds` a step, the final evaluation
    paid for: the characters seen, the regularisation for the passes they make, the predicted loss."""
    val_chars = train_chars * val_fraction / (1 - val_fraction)
    final_eval = val_chars / (settings["batch_size"] * settings["seq_len"]) * step_seconds * EVAL_COST
    steps = max(0.0, seconds - final_eval) * TRAINING_SHARE / step_seconds
    chars = steps * settings["batch_size"] * settings["seq_len"]
    reg = {k: v for k, v in regularisation(chars / max(train_chars, 1.0), params).items() if k not in given}
    predicted = law.loss(params, chars) if steps >= MIN_STEPS else math.inf
    return Option(name, {**settings, **reg}, params, step_seconds, chars, predicted)


def best(found: list[Option], keep: Option | None = None) -> Option:
    """The lowest predicted loss; on a tie, the smaller (first) candidate (so the smallest when
    none has room for MIN_STEPS steps). `keep` (the fixed model) stays chosen unless another
    is predicted better by more than SWITCH_MARGIN."""
    b = min(found, key=lambda o: (round(o.predicted, 6), found.index(o)))
    if keep is not None and keep in found and keep.predicted < b.predicted + SWITCH_MARGIN:
        return keep
    return b


def more_to_probe(found: list[Option]) -> bool:
    """Larger candidates are worth timing until two in a row predict worse than the best."""
    if len(found) < 3:
        return True
    b = best(found)

    def worse(o: Option) -> bool:  # a rung without room for MIN_STEPS steps counts as worse
        return o is not b and (o.predicted > b.predicted or math.isinf(o.predicted))

    return not (worse(found[-1]) and worse(found[-2]))


# --- the choice ------------------------------------------------------------------------------
Measure = Callable[[dict], "tuple[int, float | None]"]  # settings -> (parameters, seconds a step or None: too big)


def choose(given: dict, budget: float, train_chars: float, measure: Measure,
           clock: Callable[[], float] = time.perf_counter, law: Law = LAW,
           val_fraction: float = 0.1) -> tuple[Option, list[Option], float]:
    """Time the candidates smallest first (`measure`) and pick the lowest predicted loss for
    `budget` seconds; (the choice, every candidate timed, seconds the probe took). Given the
    step times `measure` returns, the choice is the same whatever the clock says, unless the
    probe runs out of its share of the budget (then the larger candidates are not timed)."""
    start, found = clock(), []
    seconds = budget * (1 - PROBE_SHARE)
    fixed = {**LADDER[KEEP].settings(), **{k: v for k, v in given.items() if k in CHOSEN}}
    for name, settings in options(given):
        params, step = measure(settings)
        if step is None:  # does not fit in memory: neither will the larger ones
            break
        found.append(evaluate_option(name, settings, params, step, seconds, train_chars, given, law,
                                     val_fraction))
        if not more_to_probe(found) or clock() - start > budget * PROBE_SHARE:
            break
    if not found:
        raise CharnnError("--preset auto: not even its smallest model fits in this device's memory; "
                          "give the model flags (e.g. --hidden 64 --layers 1)")
    keep = next((o for o in found if all(o.settings[k] == v for k, v in fixed.items())), None)
    return best(found, keep), found, clock() - start


def probe(model_config: ModelConfig, cfg: TrainConfig, device: torch.device, world: int) -> Measure:
    """The real `measure`: a few training steps of each candidate on random characters."""

    def measure(settings: dict) -> tuple[int, float | None]:
        model_kw, train_kw = split_settings(settings)
        mc = replace(model_config, **model_kw, vocab_size=NOMINAL_VOCAB)
        c = replace(cfg, **train_kw)
        params = mc.parameter_count()
        try:
            check_memory(mc, c, world, str(device))
        except CharnnError:
            return params, None
        return params, _step_seconds(mc, c, device, c.batch_size // world)

    return measure


def _step_seconds(mc: ModelConfig, c: TrainConfig, device: torch.device, rows: int) -> float:
    """Seconds of a training step of the run's shape: the fastest of PROBE_STEPS timed steps
    after PROBE_WARMUP untimed ones (the first steps of a shape are slow: allocation, kernels
    chosen; the fastest is nearest the steady pace of a run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(mc).to(device)
        optimizer = make_optimizer(model, c, device)
        autocast, scaler = mixed_precision(c.dtype, device)
        x = torch.randint(mc.vocab_size, (rows, c.seq_len + 1), device=device)
        times = []
        for _ in range(PROBE_WARMUP + PROBE_STEPS):
            t0 = _now(device)
            with autocast:
                logits, _ = model(x[:, :-1], None)
            scaler.scale(char_loss(logits, x[:, 1:])).backward()
            if c.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            times.append(_now(device) - t0)
    return min(times[PROBE_WARMUP:])


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def corpus_chars(cfg: TrainConfig) -> float:
    """The training split's characters, estimated from the corpus files' sizes (bytes)."""
    total = 0
    for source in resolve_sources(cfg.corpus):
        if isinstance(source, Path):
            total += source.stat().st_size
        else:  # a bundled corpus
            total += len(bundled_text(source))
    return total * (1 - cfg.val_fraction)


# --- a run -----------------------------------------------------------------------------------
def settle(model_config: ModelConfig, cfg: TrainConfig, given: dict, dist: Dist,
           measure: Measure | None = None) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a new --preset auto run: the candidate chosen on rank 0 (its probe counted
    in the budget) with the given settings applied, and the choice recorded in cfg.auto (the
    trainer prints `describe` of it once the corpus has been read without error)."""
    device = torch.device(dist.device(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    def pick() -> dict | None:
        if not dist.is_main:
            return None
        train_chars = corpus_chars(cfg)
        m = measure or probe(model_config, cfg, device, dist.world_size)
        chosen, found, seconds = choose(given, cfg.max_time, train_chars, m, val_fraction=cfg.val_fraction)
        return {"chosen": chosen.name, "index": found.index(chosen), "settings": chosen.settings,
                "budget": cfg.max_time, "probe_seconds": round(seconds, 3), "train_chars": round(train_chars),
                "dtype": cfg.dtype, "threads": torch.get_num_threads(), "candidates": [o.record() for o in found],
                "law": vars(LAW)}

    record = dist.agree(pick)
    # The other ranks take rank 0's choice: its candidate, regularisation and probe time.
    index = dist.broadcast_int(record["index"] if record else 0)
    name, settings = options(given)[index]
    reg = {k: dist.broadcast_float(record["settings"][k] if record else None) for k in ("dropout", "weight_decay")}
    probe_seconds = dist.broadcast_float(record["probe_seconds"] if record else None)
    record = record or {"chosen": name, "probe_seconds": probe_seconds}
    model_kw, train_kw = split_settings({**settings, **{k: v for k, v in reg.items() if k not in given}})
    cfg = replace(cfg, **train_kw, auto=record)
    return replace(model_config, **model_kw), cfg


def describe(record: dict) -> str:
    """The line `charnn train` prints about the choice."""
    s = record.get("settings", {})
    rows = ", ".join(f"{c['name']} " + (f"{c['predicted']:.3f}" if c["predicted"] is not None else "too few steps")
                     for c in record.get("candidates", []))
    return (f"preset auto: {record['chosen']} LSTM (batch {s.get('batch_size')} x {s.get('seq_len')}, lr "
            f"{s.get('lr')}, dropout {s.get('dropout')}) for {record.get('budget', 0):g} s here; probe "
            f"{record['probe_seconds']:.1f} s of the budget; predicted validation loss: {rows}")
