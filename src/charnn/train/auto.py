"""--preset auto: the model for this machine and this budget.

LADDER is the candidates, smallest first: each a model size with the batch shape and peak
learning rate that suit it (the 2 x 384 rung is the fixed model: the model flags' defaults,
kept unless another is clearly better). A new run with a time budget and no preset or model
flag is --preset auto (presets.uses_auto). The choice needs two things per
candidate: how many characters it will see in the budget, and what validation loss that many
characters buy a model of its size.

- The characters: `probe` times a few training steps of each rung on this machine, with the
  run's dtype, threads, device and batch shape (the median of PROBE_STEPS), smallest first,
  and stops when two rungs in a row predict worse than the best so far, when one does not fit
  in memory, or when it has used PROBE_SHARE of the budget; a rung that reads slower per
  character than a larger one is timed again. Its seconds count in the budget (the run's
  clock starts with them).
- The loss: a rung's own CURVE in characters C where it has been run enough, else LAW,
  e + a / P^alpha + b / C^beta in parameters P and C, both fitted to the runs of
  benchmarks/auto_grid.py (every rung, 1 to 10 minutes, on two effective machines). The fixed
  2 x 384 is kept unless another is predicted better by SWITCH_MARGIN.
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


@dataclass(frozen=True)
class Curve:
    """One rung's validation loss against the characters its run saw, e + b / C^beta (C in
    millions), fitted to that rung's runs alone (benchmarks/auto_fit.py). Closer than the law
    where a rung has been run often: the law's one size term misses that a larger model learns
    more from each character (at ~3.7 M characters a 2 x 384 scores ~0.05 below a 2 x 256,
    at ~8.4 M ~0.03), and on this project's 2-thread machine it chose a 2 x 256 (windows
    1.531) over the fixed 2 x 384 (1.517 in the same conditions)."""

    e: float
    b: float
    beta: float
    seen: float  # the most characters one of its runs saw: beyond CURVE_REACH x that, the law

    def loss(self, chars: float) -> float:
        return self.e + self.b * (max(chars, 1.0) / 1e6) ** -self.beta

    def reaches(self, chars: float) -> bool:
        return chars <= CURVE_REACH * self.seen


# A curve fitted on a few runs is not trusted far beyond the characters they saw (its limit e
# is loose: the 2 x 640's five runs of 1.1-2.4 M characters put it at 1.26).
CURVE_REACH = 2.0
# Fitted by benchmarks/auto_fit.py to the 51 runs with at least MIN_STEPS steps in
# benchmarks/data/auto_grid.jsonl (one, a 2 x 768 that never left the plateau of character
# frequencies, left out): rungs 1 x 256 to 2 x 768 for 1, 2, 5 and 10 minutes on this project's
# 2-core Xeon (AMX) as two machines, one core each (bfloat16, and float32 as a machine without
# AMX), and the default 150 s run on both cores (BENCHMARKS.md). The law (rms 0.024 nats) for a
# model that is not a rung as run (flags given), a rung with fewer than 4 runs, or beyond a
# curve's reach; the curves (rms 0.005-0.008 each) for the rest.
LAW = Law(e=1.3210, a=0.0737, alpha=0.6456, b=0.3585, beta=0.8859)
CURVES: dict[str, Curve] = {
    "1x256": Curve(1.4778, 0.3873, 1.0841, 2.439e7), "2x256": Curve(1.4155, 0.3877, 0.9373, 1.701e7),
    "2x384": Curve(1.4076, 0.2643, 1.0576, 8.439e6), "2x512": Curve(1.3883, 0.3678, 1.1361, 4.985e6),
    "2x640": Curve(1.2552, 0.4700, 0.7610, 2.421e6),
}
# The fixed model (cpu-2min's 2 x 384, `charnn train`'s model before auto) is kept unless another
# rung is predicted better by more than this: the probe's reading of a rung's pace is +-20 %
# of a run's on a shared CPU, and the law's error 0.024 nats, larger than the gains it would
# chase. With the law alone, the 10-minute one-core choices were a 2 x 256 predicted 0.016
# better; the margin kept the 2 x 384 (the grid's best on bfloat16, 1.434 against 1.447).
KEEP = 2  # LADDER index of the fixed model
SWITCH_MARGIN = 0.02
# The settings the choice sets; one given by the user wins over it.
CHOSEN = ("model", "layers", "hidden", "embed", "batch_size", "seq_len", "lr", "dropout", "weight_decay")
NOMINAL_VOCAB = 66  # the parameters are counted with tiny Shakespeare's vocabulary, whatever the corpus
# A rung that would make fewer steps than this is not chosen: its warmup (50 steps) and cosine
# have no room, and the law, fitted on runs of at least this many steps, does not hold there.
MIN_STEPS = 150
# Steps of the run's own shape per candidate: untimed, then timed, the median taken. Timing 2
# steps of 32 characters and scaling them (this module's first probe) read a 2 x 384's pace on
# 2 threads as 10,000-17,000 chars/s where the run makes 23,000-25,000, and chose a 1 x 256 for
# the default run (windows loss 1.520 against the 2 x 384's 1.480); the fastest of 3 read a
# 2 x 256 on 2 threads at 31,000-41,000 chars/s where its runs made 25,000-27,000.
PROBE_WARMUP = 2
PROBE_STEPS = 5
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
                    train_chars: float, given: dict, law: Law = LAW, val_fraction: float = 0.1,
                    curves: dict | None = None, eval_every: int = 0) -> Option:
    """What `settings` would reach in `seconds` at `step_seconds` a step, the evaluations paid
    for (the final one, and one every `eval_every` steps): the characters seen, the
    regularisation for the passes they make, the predicted loss (the rung's curve when it is a
    rung with one, else the law)."""
    curves = CURVES if curves is None else curves
    val_chars = train_chars * val_fraction / (1 - val_fraction)
    an_eval = val_chars / (settings["batch_size"] * settings["seq_len"]) * step_seconds * EVAL_COST
    per_step = step_seconds + (an_eval / eval_every if eval_every else 0.0)
    steps = max(0.0, seconds - an_eval) * TRAINING_SHARE / per_step
    chars = steps * settings["batch_size"] * settings["seq_len"]
    reg = {k: v for k, v in regularisation(chars / max(train_chars, 1.0), params).items() if k not in given}
    rung = next((c.name for c in LADDER if c.settings() == settings), None)  # a rung as run on the grid
    fit = curves.get(rung) if rung else None
    predicted = ((fit.loss(chars) if fit and fit.reaches(chars) else law.loss(params, chars))
                 if steps >= MIN_STEPS else math.inf)
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
           val_fraction: float = 0.1, eval_every: int = 0) -> tuple[Option, list[Option], float]:
    """Time the candidates smallest first (`measure`) and pick the lowest predicted loss for
    `budget` seconds; (the choice, every candidate timed, seconds the probe took). Given the
    step times `measure` returns, the choice is the same whatever the clock says, unless the
    probe runs out of its share of the budget (then the larger candidates are not timed)."""
    start, found, timed, retimed = clock(), [], [], set()
    seconds = budget * (1 - PROBE_SHARE)
    fixed = {**LADDER[KEEP].settings(), **{k: v for k, v in given.items() if k in CHOSEN}}

    def option(i: int, step: float) -> Option:
        name, settings, params = timed[i]
        return evaluate_option(name, settings, params, step, seconds, train_chars, given, law, val_fraction,
                               eval_every=eval_every)

    for name, settings in options(given):
        params, step = measure(settings)
        if step is None:  # does not fit in memory: neither will the larger ones
            break
        timed.append((name, settings, params))
        found.append(option(len(found), step))
        # A smaller candidate slower per character than this larger one was disturbed while it
        # was timed (another process took the CPU): time it once more, keep the faster reading.
        for i, q in enumerate(found[:-1]):
            if q.params < params and _per_char(q) > _per_char(found[-1]) and i not in retimed:
                retimed.add(i)
                again = measure(timed[i][1])[1]
                found[i] = option(i, min(q.step_seconds, again if again is not None else math.inf))
        if not more_to_probe(found) or clock() - start > budget * PROBE_SHARE:
            break
    if not found:
        raise CharnnError("--preset auto: not even its smallest model fits in this device's memory; "
                          "give the model flags (e.g. --hidden 64 --layers 1)")
    keep = next((o for o in found if all(o.settings[k] == v for k, v in fixed.items())), None)
    return best(found, keep), found, clock() - start


def _per_char(o: Option) -> float:
    return o.step_seconds / (o.settings["batch_size"] * o.settings["seq_len"])


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
    """Seconds of a training step of the run's shape: the median of PROBE_STEPS timed steps
    after PROBE_WARMUP untimed ones (the first steps of a shape are slow: allocation, kernels
    chosen; the median is nearer the pace a run keeps than the fastest)."""
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
    return sorted(times[PROBE_WARMUP:])[PROBE_STEPS // 2]


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
        chosen, found, seconds = choose(given, cfg.max_time, train_chars, m, val_fraction=cfg.val_fraction,
                                        eval_every=cfg.eval_every)
        return {"chosen": chosen.name, "index": found.index(chosen), "settings": chosen.settings,
                "budget": cfg.max_time, "probe_seconds": round(seconds, 3), "train_chars": round(train_chars),
                "dtype": cfg.dtype, "threads": torch.get_num_threads(), "candidates": [o.record() for o in found],
                "law": vars(LAW), "curves": {n: vars(c) for n, c in CURVES.items()}}

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
