"""Training: TrainConfig, train(...) -> Summary; the loop, evaluation, early stop, NaN guard.

The loop reads batches from one of the two layouts (batching.py), carries the recurrent
state across windows (detached: truncated BPTT), steps AdamW under a warmup + cosine
schedule with gradient-norm clipping, evaluates on the validation split, keeps the best
weights, and saves a resume point that makes a resumed run bit-identical to an
uninterrupted one (on CPU): the weights, the optimizer moments, the RNG state, the carried
hidden state and the batch iterator's position all go into it.

Under torchrun the same loop runs in every process (distributed.py): --batch-size is the
global batch, each rank reads its share of the stream columns, DistributedDataParallel
averages the gradients, the ranks agree on when to stop, and rank 0 alone writes the run
directory, its resume point holding every rank's hidden-state rows and RNG state.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from charnn import checkpoint
from charnn.data.batching import LAYOUTS, make_batches
from charnn.data.corpus import (
    TRANSLITERATIONS,
    Corpus,
    base_chars,
    read_corpus,
    split_point,
    text_digest,
)
from charnn.data.prepare import find_prepared
from charnn.data.vocab import Vocab
from charnn.errors import CharnnError
from charnn.evaluate import evaluate_ids
from charnn.files import remove_temporaries
from charnn.models import ModelConfig, build_model
from charnn.models.lm import char_loss, detach_state, map_state, state_tensors
from charnn.progress import Progress, format_duration
from charnn.train.distributed import Dist, session

DEFAULT_BUDGET_S = 150.0  # with no stopping flag at all: fits `charnn train` into 3 minutes
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainConfig:
    corpus: list[str] = field(default_factory=list)  # files, directories, or one prepared directory; [] = tiny Shakespeare
    out: str = ""  # run directory; "" = runs/<corpus name>
    encoding: str = "utf-8"
    errors: str = "strict"  # strict | replace | ignore
    transliterate: str = "none"  # none | ascii (unidecode; the vocabulary then holds printable ASCII)
    val_fraction: float = 0.1
    batching: str = "streams"  # streams (stateful TBPTT) | windows
    reset_prob: float = 0.05  # streams: chance per window that a row's carried state is dropped
    batch_size: int = 32  # sequences per step in all: under torchrun, summed over the processes
    seq_len: int = 96
    lr: float = 6e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup: int = 50  # steps of linear warmup
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    max_steps: int = 0  # 0 = no step limit
    max_time: float = 0.0  # seconds; 0 = no time limit
    epochs: float = 0.0  # 0 = no epoch limit
    eval_every: int = 500  # steps; 0 = only at the end
    eval_streams: int = 8  # parallel segments of the stateful validation pass
    patience: int = 0  # evaluations without improvement before stopping; 0 = off
    save_every: int = 0  # steps; 0 = only at the end
    log_every: int = 50  # steps between metrics lines
    seed: int = 1337
    sample_chars: int = 300  # sample printed at the end by the CLI; 0 = none
    dtype: str = "auto"  # autocast dtype: auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto = cuda if available, else cpu
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    preset: str = ""  # the named bundle of settings this run started from (presets.py)

    def problems(self) -> list[str]:
        p = []
        for name in ("batch_size", "seq_len"):
            if getattr(self, name) < 1:
                p.append(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "save_every", "warmup", "patience", "sample_chars", "threads"):
            if getattr(self, name) < 0:
                p.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            p.append(f"--log-every must be a positive integer, got {self.log_every}")
        if self.eval_streams < 1:
            p.append(f"--eval-streams must be a positive integer, got {self.eval_streams}")
        for name in ("max_time", "epochs", "grad_clip", "weight_decay"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                p.append(f"--{name.replace('_', '-')} must be >= 0, got {v}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            p.append(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            p.append(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.reset_prob <= 1:
            p.append(f"--reset-prob must be in [0, 1], got {self.reset_prob}")
        if not 0 <= self.val_fraction < 1:
            p.append(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.batching not in LAYOUTS:
            p.append(f"--batching must be one of {', '.join(LAYOUTS)}, got {self.batching!r}")
        if self.transliterate not in TRANSLITERATIONS:
            p.append(f"--transliterate must be one of {', '.join(TRANSLITERATIONS)}, got {self.transliterate!r}")
        if self.dtype not in ("auto", *DTYPES):
            p.append(f"--dtype must be one of auto, {', '.join(DTYPES)}, got {self.dtype!r}")
        return p

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Settings that a resumed run may change: when and how it stops, logs and saves, where it
# runs. Everything else would make the resumed run a different run.
RESUME_OVERRIDES = frozenset(
    {"max_steps", "max_time", "epochs", "eval_every", "patience", "save_every", "log_every",
     "sample_chars", "threads", "device"}
)


@dataclass
class Summary:
    run_dir: str
    step: int
    stop_reason: str  # "steps", "epochs", "time", "early stop", "interrupted", "finished earlier"
    val_loss: float | None  # best validation loss (stateful protocol), nats/char
    val_bpc: float | None
    train_loss: float | None  # mean over the last logging interval
    wall_time: float  # seconds of training, summed over resumes
    chars_per_s: float
    params: int

    def to_dict(self) -> dict:
        return asdict(self)


def split_settings(settings: dict) -> tuple[dict, dict]:
    """Route keyword settings to ModelConfig and TrainConfig fields; reject unknown names."""
    model_names = {f.name for f in fields(ModelConfig)} - {"vocab_size"}
    train_names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - model_names - train_names)
    if unknown:
        raise CharnnError(f"unknown training setting(s): {', '.join(unknown)}")
    model = {k: v for k, v in settings.items() if k in model_names}
    train = {k: v for k, v in settings.items() if k in train_names}
    return model, train


def _default_out(corpus: list[str]) -> str:
    stem = Path(corpus[0]).stem if corpus else "tinyshakespeare"
    base = Path("runs") / (stem or "run")
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return str(out)


def lr_at(step: int, cfg: TrainConfig, total: int | None) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at `total` steps."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if not total or total <= cfg.warmup:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class _Diverged(Exception):
    pass


# Why a run stops, weakest first: when ranks see different reasons at the same step (a
# signal, a clock), all of them act on the strongest.
STOP_REASONS = ("", "steps", "epochs", "early stop", "time", "interrupted")


class Trainer:
    def __init__(
        self,
        model_config: ModelConfig,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        should_stop: Callable[[int], bool] | None = None,
        progress: bool = True,
        dist: Dist | None = None,
    ) -> None:
        """Everything local to this process; no collective call (see run() and train())."""
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.should_stop = should_stop
        self.dist = dist or Dist()
        self.progress = Progress(enabled=progress and self.dist.is_main)
        self.signal_received: int | None = None
        self.device = torch.device(self.dist.device(cfg.device))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        world = self.dist.world_size
        if cfg.batch_size % world:
            raise CharnnError(
                f"--batch-size {cfg.batch_size} is the global batch and must split evenly over "
                f"the {world} processes; use a multiple of {world}"
            )

        # The corpus: text read and encoded in memory, or a prepared token file (read as indexed).
        prepared = find_prepared(cfg.corpus)
        if prepared is None:
            corpus = read_corpus(cfg.corpus, cfg.encoding, cfg.errors, cfg.transliterate)
            record = self._corpus_record(corpus)
        elif cfg.transliterate != "none":
            raise CharnnError(
                f"--transliterate {cfg.transliterate} does not apply to the prepared corpus "
                f"{prepared.path}; transliterate the text before charnn prepare, or train on the text"
            )
        else:
            record = prepared.record
        if resume:
            files = checkpoint.read_run(self.run_dir)
            self.vocab = files.vocab
            self._check_same_corpus(files, record)
            model_config = files.model_config
        else:
            self.vocab = (
                Vocab.from_text(corpus.text + base_chars(cfg.transliterate)) if prepared is None else prepared.vocab
            )
            model_config = replace(model_config, vocab_size=len(self.vocab))
        if prepared is None:
            ids = self.vocab.encode(corpus.text, what="the corpus")
        elif prepared.vocab != self.vocab:
            raise CharnnError(f"{prepared.path} has another vocabulary than the run {self.run_dir}")
        else:
            ids = prepared.tokens
        n_train = split_point(len(ids), cfg.val_fraction)
        self.train_ids = ids[:n_train]
        self.val_ids = ids[n_train:]
        # Rank r reads columns r*b .. r*b + b - 1 of the global layout of B columns.
        self.batches = make_batches(cfg.batching, self.train_ids, cfg.batch_size // world, cfg.seq_len,
                                    cfg.seed, self.dist.rank, world, reset_prob=cfg.reset_prob)

        torch.manual_seed(cfg.seed)
        self.model = build_model(model_config).to(self.device)
        if self.dist.enabled:
            # Same weights on every rank, but each rank's own dropout masks.
            torch.manual_seed(cfg.seed + self.dist.rank)
        self.model_config = model_config
        self.params = sum(p.numel() for p in self.model.parameters())
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.99),
            # One fused kernel per step instead of a dozen per parameter: ~8x faster updates,
            # ~10 % of a 2x512 LSTM's step time on a CPU.
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.autocast = torch.autocast(
            self.device.type, dtype=DTYPES[cfg.dtype], enabled=cfg.dtype != "float32"
        )
        # float16 has too few exponent bits for small gradients: scale the loss up before
        # backward and the gradients down before the step, skipping steps that overflow.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.dtype == "float16")
        self.ddp: torch.nn.Module = self.model  # the module to train: DDP around it under torchrun

        # Trainer counters: everything here goes into the resume point as JSON.
        self.step = 0
        self.total_steps: int | None = self._planned_total()
        self.elapsed = 0.0  # seconds of training, summed over resumes
        self.best_val: float | None = None
        self.best_step = 0
        self.bad_evals = 0
        self.last_eval_step = -1
        self.log_loss_sum = 0.0
        self.log_loss_count = 0
        self.last_train_loss: float | None = None
        self.finished = False
        self.stop_reason = ""
        self.state = None  # the carried hidden state

        if resume:
            self._restore()
        elif self.dist.is_main:
            checkpoint.create_run(self.run_dir, model_config, asdict(cfg), self.vocab, record)

    # --- set-up helpers ------------------------------------------------------------------
    @staticmethod
    def _corpus_record(corpus: Corpus) -> dict:
        return {"sources": list(corpus.sources), "chars": len(corpus.text), "sha256": text_digest(corpus.text)}

    def _check_same_corpus(self, files: checkpoint.RunFiles, record: dict) -> None:
        then = files.data
        if then.get("sha256") != record["sha256"]:
            raise CharnnError(
                f"the corpus ({', '.join(record['sources'])}) changed since the run started "
                f"({then.get('chars')} characters then, {record['chars']} now); restore it, "
                f"or start a new run with --out"
            )

    def _planned_total(self) -> int | None:
        """The step target from --max-steps and --epochs; None = set by the time budget."""
        cfg = self.cfg
        targets = []
        if cfg.max_steps:
            targets.append(cfg.max_steps)
        if cfg.epochs:
            targets.append(max(1, math.ceil(cfg.epochs * self.batches.steps_per_epoch)))
        return min(targets) if targets else None

    def _restore(self) -> None:
        if self.dist.is_main:
            remove_temporaries(self.run_dir)
        if not checkpoint.has_checkpoint(self.run_dir):
            return  # killed before its first checkpoint: start from step 0
        ck = checkpoint.load_checkpoint(self.run_dir)
        checkpoint.restore_model(self.model, ck, self.run_dir)
        self.optimizer.load_state_dict(ck.optimizer)
        t = ck.trainer
        self.step = t["step"]
        planned = self._planned_total()
        # Without a new --max-steps/--epochs, the run keeps its original target.
        self.total_steps = planned if (self.cfg.max_steps or self.cfg.epochs) else t["total_steps"]
        self.elapsed = t["elapsed"]
        self.best_val, self.best_step = t["best_val"], t["best_step"]
        self.bad_evals, self.last_eval_step = t["bad_evals"], t["last_eval_step"]
        self.log_loss_sum, self.log_loss_count = t["log_loss_sum"], t["log_loss_count"]
        self.last_train_loss = t["last_train_loss"]
        self.finished, self.stop_reason = t["finished"], t["stop_reason"]
        self.batches.load_state_dict(t["batches"])
        if self.scaler.is_enabled() and t.get("scaler"):
            self.scaler.load_state_dict(t["scaler"])
        self._restore_rng(ck.extra, t.get("world_size", 1))
        if t["has_state"]:
            # The saved state has the rows of all B columns: this rank takes its own b.
            b = self.cfg.batch_size // self.dist.world_size
            rows = slice(self.dist.rank * b, (self.dist.rank + 1) * b)
            template = self.model.initial_state(b, self.device)
            tensors = [ck.extra[f"state.{i}"][:, rows].to(self.device) for i in range(len(state_tensors(template)))]
            self.state = tensors[0] if isinstance(template, torch.Tensor) else tuple(tensors)
        if self.dist.is_main:
            checkpoint.truncate_metrics(self.run_dir, self.step)

    def _rng_names(self, rank: int) -> tuple[str, str]:
        """Keys of a rank's CPU and CUDA RNG states (rank 0 keeps the single-process names)."""
        suffix = f".{rank}" if rank else ""
        return f"rng.torch{suffix}", f"rng.cuda{suffix}"

    def _restore_rng(self, extra: dict[str, torch.Tensor], saved_world: int) -> None:
        if saved_world != self.dist.world_size:
            # The data order and the hidden state carry over exactly; the random streams
            # (dropout) cannot, so this rank starts its own afresh.
            torch.manual_seed(self.cfg.seed + self.dist.rank + 7919 * self.step)
            self.progress.message(
                f"resuming a run saved by {saved_world} process(es) with {self.dist.world_size}: "
                f"data and state continue exactly, dropout's random numbers do not"
            )
            return
        cpu, cuda = self._rng_names(self.dist.rank)
        torch.set_rng_state(extra[cpu])
        if self.device.type == "cuda" and cuda in extra:
            torch.cuda.set_rng_state(extra[cuda], self.device)

    # --- the resume point ----------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {
            "world_size": self.dist.world_size,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "step": self.step,
            "total_steps": self.total_steps,
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "last_eval_step": self.last_eval_step,
            "log_loss_sum": self.log_loss_sum,
            "log_loss_count": self.log_loss_count,
            "last_train_loss": self.last_train_loss,
            "finished": self.finished,
            "stop_reason": self.stop_reason,
            "batches": self.batches.state_dict(),
            "has_state": self.state is not None,
        }

    def save(self) -> None:
        """Write the resume point (a collective: every rank sends its state rows and RNG)."""
        for p in self.model.parameters():
            if not torch.isfinite(p).all():
                raise _Diverged("non-finite weights")
        extra = {}
        rngs = self.dist.gather_cat(torch.get_rng_state()[None], 0)  # (world, n)
        cuda = None
        if self.device.type == "cuda":
            cuda = self.dist.gather_cat(torch.cuda.get_rng_state(self.device)[None], 0)
        for rank in range(self.dist.world_size):
            cpu_name, cuda_name = self._rng_names(rank)
            extra[cpu_name] = rngs[rank]
            if cuda is not None:
                extra[cuda_name] = cuda[rank]
        for i, t in enumerate(state_tensors(self.state)):
            extra[f"state.{i}"] = self.dist.gather_cat(t, 1)  # (layers, B, ...): all columns
        if self.dist.is_main:
            checkpoint.save_checkpoint(self.run_dir, self.model, self.optimizer, extra, self._trainer_state())

    # --- one step ------------------------------------------------------------------------
    def train_step(self) -> float:
        batch = self.batches.next()
        if batch.reset:
            self.state = None
        elif batch.fresh is not None and self.state is not None and batch.fresh.any():
            keep = (~batch.fresh).to(self.device)
            self.state = map_state(lambda t: t * keep.view(1, -1, *[1] * (t.dim() - 2)).to(t.dtype), self.state)
        x, y = batch.x.to(self.device), batch.y.to(self.device)
        lr = lr_at(self.step, self.cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            logits, state = self.ddp(x, self.state)  # (b, T, V)
        loss = char_loss(logits, y)
        # The mean over all ranks' rows is the loss of the global batch; non-finite on every
        # rank when it is on any, so all of them stop together.
        global_loss = self.dist.mean(loss.detach())
        if not torch.isfinite(global_loss):
            raise _Diverged(f"the loss is {global_loss.item()}")
        self.scaler.scale(loss).backward()  # DDP: gradients averaged over the ranks here
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            # With float16 an overflow is expected now and then: the scaler skips the step.
            if not torch.isfinite(norm) and not self.scaler.is_enabled():
                raise _Diverged(f"the gradient norm is {norm.item()}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state = detach_state(state)
        return global_loss.item()

    # --- evaluation ----------------------------------------------------------------------
    def evaluate(self) -> float | None:
        if len(self.val_ids) < 2:
            return None
        # Rank 0 scores the whole split, exactly as one process would; the others wait.
        loss = None
        if self.dist.is_main:
            loss = evaluate_ids(self.model, self.val_ids, "stateful", streams=self.cfg.eval_streams).loss
        loss = self.dist.broadcast_float(loss)
        self.last_eval_step = self.step
        if self.best_val is None or loss < self.best_val:
            self.best_val, self.best_step, self.bad_evals = loss, self.step, 0
            if self.dist.is_main:
                checkpoint.save_weights(
                    self.run_dir, self.model, self.vocab,
                    {"step": self.step, "val_loss": loss, "protocol": "stateful"},
                )
        else:
            self.bad_evals += 1
        return loss

    # --- the loop ------------------------------------------------------------------------
    def _stop_now(self, started: float) -> str:
        cfg = self.cfg
        if self.signal_received is not None:
            return "interrupted"
        if self.total_steps is not None and self.step >= self.total_steps:
            return "epochs" if cfg.epochs and not cfg.max_steps else "steps"
        if cfg.max_time and self.elapsed + (time.perf_counter() - started) >= cfg.max_time:
            return "time"
        if cfg.patience and self.bad_evals >= cfg.patience:
            return "early stop"
        if self.should_stop is not None and self.should_stop(self.step):
            return "interrupted"
        return ""

    def _calibrate(self, step_time: float) -> None:
        """Turn a time budget into a step target, so the cosine schedule ends on time."""
        cfg = self.cfg
        remaining = cfg.max_time - self.elapsed
        steps_left = remaining / step_time
        # An evaluation reads the validation split forward only, ~1/3 the cost of a step.
        chars_per_step = cfg.batch_size * cfg.seq_len
        eval_cost = len(self.val_ids) / chars_per_step * step_time / 2.5
        if cfg.eval_every:
            evals = steps_left / cfg.eval_every
            steps_left = (remaining - evals * eval_cost) / step_time
        steps_left -= eval_cost / step_time  # the final evaluation
        # Rank 0's clock decides for all, so every rank plans the same schedule.
        self.total_steps = self.dist.broadcast_int(self.step + max(1, int(steps_left * 0.98)))

    def _signal(self, signum, frame) -> None:
        if self.signal_received is not None:
            raise KeyboardInterrupt  # a second signal: stop at once (the files stay intact)
        self.signal_received = signum
        self.progress.message(f"signal {signal.Signals(signum).name}: saving and stopping after this step")

    def run(self) -> Summary:
        if self.finished and (self.total_steps is None or self.step >= self.total_steps):
            return self._summary("finished earlier")
        self.finished = False
        if self.ddp is self.model:
            self.ddp = self.dist.wrap(self.model)  # DDP's constructor is a collective
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._signal)
        try:
            return self._loop()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.progress.close()

    def _loop(self) -> Summary:
        cfg = self.cfg
        chars_per_step = cfg.batch_size * cfg.seq_len
        started = time.perf_counter()
        calibrate_at = self.step + 20 if self.total_steps is None and cfg.max_time else None
        calib_t0, calib_step0 = None, self.step + 5
        window_t, window_chars = started, 0
        chars_per_s = 0.0
        reason = ""
        try:
            while True:
                reason = self.dist.strongest(self._stop_now(started), STOP_REASONS)
                if reason:
                    break
                loss = self.train_step()
                self.step += 1
                self.log_loss_sum += loss
                self.log_loss_count += 1
                window_chars += chars_per_step
                now = time.perf_counter()
                if self.step == calib_step0:
                    calib_t0 = now
                if calibrate_at is not None and self.step >= calibrate_at and calib_t0 is not None:
                    self._calibrate((now - calib_t0) / (self.step - calib_step0))
                    calibrate_at = None
                fraction = self._fraction(started)
                self.progress.update(
                    fraction, "train",
                    f"step {self.step} loss {loss:.3f} {chars_per_s:,.0f} chars/s",
                )
                is_eval = bool(cfg.eval_every) and self.step % cfg.eval_every == 0
                if self.step % cfg.log_every == 0 or is_eval:
                    chars_per_s = window_chars / max(now - window_t, 1e-9)
                    window_t, window_chars = now, 0
                    self._log(started, chars_per_s, evaluate=is_eval)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
            self.stop_reason = reason
            self.finished = reason not in ("interrupted",)
            # An interrupted run logs nothing more: its resumed twin writes the same lines
            # an uninterrupted run would have written.
            if self.step != self.last_eval_step and reason != "interrupted":
                self._log(started, chars_per_s, evaluate=True)
            if self.best_val is None and self.step > 0 and self.dist.is_main:
                checkpoint.save_weights(self.run_dir, self.model, self.vocab, {"step": self.step})
            self.elapsed += time.perf_counter() - started
            started = time.perf_counter()
            self.save()
        except _Diverged as e:
            raise self.dist.error(
                f"training diverged at step {self.step + 1}: {e}; nothing from this step on was "
                f"saved and the last checkpoint is intact; lower --lr (now {cfg.lr:g}) or "
                f"--grad-clip, or raise --warmup, and start again or --resume"
            ) from None
        if not self.dist.is_main:
            return self._summary(reason)
        from charnn.train.plot import plot_run

        if plot_run(self.run_dir) is None:
            self.progress.message("loss curve not drawn: matplotlib is missing (pip install 'charnn[plot]')")
        return self._summary(reason)

    def _fraction(self, started: float) -> float:
        cfg = self.cfg
        done = []
        if self.total_steps:
            done.append(self.step / self.total_steps)
        if cfg.max_time:
            done.append((self.elapsed + time.perf_counter() - started) / cfg.max_time)
        return max(done) if done else 0.0

    def _log(self, started: float, chars_per_s: float, evaluate: bool) -> None:
        record = {
            "step": self.step,
            "time": round(self.elapsed + time.perf_counter() - started, 3),
            "epoch": round(self.step / self.batches.steps_per_epoch, 4),
            "lr": lr_at(max(0, self.step - 1), self.cfg, self.total_steps),
            "train_loss": (self.log_loss_sum / self.log_loss_count) if self.log_loss_count else None,
            "chars_per_s": round(chars_per_s, 1),
        }
        if record["train_loss"] is not None:
            self.last_train_loss = record["train_loss"]
        self.log_loss_sum, self.log_loss_count = 0.0, 0
        if evaluate:
            val = self.evaluate()
            if val is not None:
                record.update(val_loss=val, val_bpc=val / math.log(2))
                self.progress.message(
                    f"step {self.step}: train loss {record['train_loss'] or float('nan'):.4f}, "
                    f"val loss {val:.4f} ({val / math.log(2):.3f} bpc)"
                    + (" *best*" if self.best_step == self.step else "")
                )
        if self.dist.is_main:
            checkpoint.append_metrics(self.run_dir, record)

    def _summary(self, reason: str) -> Summary:
        cps = self.step * self.cfg.batch_size * self.cfg.seq_len / self.elapsed if self.elapsed else 0.0
        return Summary(
            run_dir=str(self.run_dir),
            step=self.step,
            stop_reason=reason,
            val_loss=self.best_val,
            val_bpc=self.best_val / math.log(2) if self.best_val is not None else None,
            train_loss=self.last_train_loss,
            wall_time=self.elapsed,
            chars_per_s=cps,
            params=self.params,
        )


def resolve(settings: dict, resume: str | None = None) -> tuple[ModelConfig, TrainConfig]:
    """The configs a run will use: defaults <- settings (or: the saved run <- allowed settings)."""
    model_kw, train_kw = split_settings(settings)
    if resume is not None:
        files = checkpoint.read_run(resume)
        saved = TrainConfig.from_dict(files.train)
        changed = sorted(
            k for k, v in {**model_kw, **train_kw}.items()
            if k not in RESUME_OVERRIDES and getattr(files.model_config if k in model_kw else saved, k) != v
        )
        if changed:
            shown = ", ".join(
                f"--{k.replace('_', '-')} (the run has {getattr(files.model_config if k in model_kw else saved, k)!r})"
                for k in changed
            )
            raise CharnnError(
                f"cannot change {shown} when resuming {resume}; drop the flag, or start a new run with --out"
            )
        cfg = replace(saved, **{k: v for k, v in train_kw.items() if k in RESUME_OVERRIDES}, out=str(resume))
        cfg.device = resolve_device(cfg.device)  # the run's GPU may be missing here: say so
        _check_dtype(cfg)
        return files.model_config, cfg
    if train_kw.get("preset"):
        from charnn.train.presets import preset_settings

        preset_model, preset_train = split_settings(preset_settings(train_kw["preset"]))
        model_kw, train_kw = {**preset_model, **model_kw}, {**preset_train, **train_kw}
    model_config = ModelConfig(**model_kw)
    cfg = TrainConfig(**train_kw)
    problems = model_config.problems() + cfg.problems()
    if problems:
        raise CharnnError("; ".join(problems))
    if not (cfg.max_steps or cfg.max_time or cfg.epochs):
        cfg.max_time = DEFAULT_BUDGET_S
    if not cfg.out:
        cfg.out = _default_out(cfg.corpus)
    cfg.corpus = [str(Path(c).resolve()) if Path(c).exists() else c for c in cfg.corpus]
    cfg.device = resolve_device(cfg.device)
    cfg.dtype = resolve_dtype(cfg.dtype, cfg.device)
    _check_dtype(cfg)
    return model_config, cfg


def _check_dtype(cfg: TrainConfig) -> None:
    # oneDNN has no float16 LSTM, and CPUs that multiply float16 fast also do bfloat16.
    if cfg.dtype == "float16" and torch.device(cfg.device).type == "cpu":
        raise CharnnError(
            "--dtype float16 needs a GPU (--device cuda or mps); on a CPU use --dtype bfloat16 or float32"
        )


def resolve_device(name: str) -> str:
    """auto = cuda when a GPU is present, else cpu; anything else is checked to exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CharnnError(f"--device {name!r} is not a torch device (try cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CharnnError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CharnnError(f"--device {name}: MPS is not available here; use --device cpu")
    return str(device)


def resolve_dtype(name: str, device: str) -> str:
    """auto = bfloat16 where the hardware multiplies it natively (AMX CPUs, recent GPUs).

    On a CPU with AMX, bfloat16 autocast trains an LSTM about 2.8x faster than float32
    (BENCHMARKS.md); without it bfloat16 is emulated and slower, so auto keeps float32.
    """
    if name != "auto":
        return name
    kind = torch.device(device).type
    if kind == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if kind == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        return "bfloat16" if amx() else "float32"
    return "float32"


def train(
    *,
    resume: str | None = None,
    should_stop: Callable[[int], bool] | None = None,
    progress: bool = True,
    **settings,
) -> Summary:
    """Train a model; the same code as `charnn train`.

    Settings are the fields of ModelConfig and TrainConfig by name, e.g.
    `train(corpus=["input.txt"], model="gru", hidden=256, max_steps=1000, out="runs/x")`.
    `resume=RUN_DIR` continues a run (only stopping, logging and device settings may
    change). `should_stop(step)` is asked before each step; True saves and stops the run as
    a signal would. Under torchrun every process calls this and they train one model
    together (distributed.py); each returns the same summary.
    """
    with session() as dist:
        model_config, cfg = dist.agree(lambda: resolve(settings, resume))
        trainer = dist.agree(
            lambda: Trainer(model_config, cfg, resume=resume is not None, should_stop=should_stop,
                            progress=progress, dist=dist)
        )
        return trainer.run()


def format_summary(s: Summary) -> str:
    val = f"{s.val_loss:.4f} nats/char ({s.val_bpc:.3f} bpc)" if s.val_loss is not None else "n/a"
    return (
        f"run {s.run_dir}: {s.step} steps ({s.stop_reason}), val loss {val}, "
        f"wall time {format_duration(s.wall_time)}, {s.chars_per_s:,.0f} chars/s, "
        f"{s.params:,} parameters"
    )
