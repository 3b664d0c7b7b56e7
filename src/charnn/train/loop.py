"""The training loop: Trainer, from a resolved config to a Summary.

The loop reads batches from one of the two layouts (batching.py), carries the recurrent
state across windows (detached: truncated BPTT), steps AdamW under a warmup + cosine
schedule (schedule.py) with gradient-norm clipping, evaluates on the validation split,
keeps the best weights, and saves a resume point that makes a resumed run bit-identical to
an uninterrupted one (on CPU): the weights, the optimizer moments, the counters
(state.py's ResumeState), the RNG state, the carried hidden state and the batch iterator's
position all go into it.

Under torchrun the same loop runs in every process (distributed.py): --batch-size is the
global batch, each rank reads its share of the stream columns, DistributedDataParallel
averages the gradients, the ranks agree on when to stop, and rank 0 alone writes the run
directory, its resume point holding every rank's hidden-state rows and RNG state.

Set-up lives in setup.py, the counters and the resume tensors in state.py, the step
target and the learning rate in schedule.py, a time budget's pace in budget.py, the writes
to the run directory in writes.py, where a fine-tuned run starts (its parent's weights) in
finetune.py; what is left here reads top to bottom: __init__ (set up or restore), save,
train_step, evaluate, _log, run and _loop. Imports those modules and config, distributed, and
checkpoint, evaluate and progress below them.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from charnn import checkpoint
from charnn.models import ModelConfig
from charnn.models.lm import char_loss, detach_state, map_state
from charnn.progress import Progress
from charnn.train import auto, finetune
from charnn.train.budget import Pace, RunClock
from charnn.train.config import TrainConfig
from charnn.train.distributed import Dist
from charnn.train.schedule import (
    STOP_REASONS,
    fraction_done,
    lr_at,
    planned_total,
    stop_reason,
)
from charnn.train.setup import (
    check_batch_split,
    make_optimizer,
    mixed_precision,
    seeded_model,
    training_batches,
    training_corpus,
    validation_loss,
)
from charnn.train.state import ResumeState, gather_tensors, restore_hidden, restore_rng
from charnn.train.writes import RunWriter


@dataclass
class Summary:
    """What a training call reports (charnn.train() returns it; `charnn train` prints it)."""

    run_dir: str
    step: int
    stop_reason: str  # "steps", "epochs", "time", "early stop", "interrupted", "finished earlier"
    val_loss: float | None  # best validation loss (stateful protocol), nats/char
    val_bpc: float | None
    train_loss: float | None  # mean over the last logging interval
    wall_time: float  # seconds of training, summed over resumes
    chars_per_s: float
    params: int

    @classmethod
    def of(cls, run_dir: Path, s: ResumeState, params: int, reason: str, chars_per_step: float) -> Summary:
        chars = s.step * chars_per_step
        val_bpc = s.best_val / math.log(2) if s.best_val is not None else None
        return cls(str(run_dir), s.step, reason, s.best_val, val_bpc, s.last_train_loss, s.elapsed,
                   chars / s.elapsed if s.elapsed else 0.0, params)

    def to_dict(self) -> dict:
        return asdict(self)


class _Diverged(Exception):
    pass


@contextmanager
def _signals_to(handler: Callable) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` during the block (where Python lets us: the main thread)."""
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in saved.items():
            signal.signal(sig, h)


class Trainer:
    """One run in one process: built from the configs (or the run's resume point), then run()."""

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
        check_batch_split(cfg.batch_size, world)

        run = checkpoint.read_run(self.run_dir) if resume else None
        parent = finetune.parent_of(cfg, run)  # fine-tuning: the run whose weights this one starts from
        corpus = training_corpus(cfg, run, parent)  # text read and encoded in memory, or a prepared token file
        self.vocab = corpus.vocab
        self.model_config = run.model_config if run else replace(model_config, vocab_size=len(self.vocab))
        self.batches = training_batches(cfg, corpus, self.dist)  # this rank's share of every global batch
        self.val_ids, self.val_docs = corpus.val_ids, corpus.val_docs  # val_docs: a documents corpus's
        if corpus.val_docs is not None:
            self.progress.message(corpus.documents_line)
        if cfg.auto and not resume:  # what --preset auto chose (auto.py), now that the corpus reads
            self.progress.message(auto.describe(cfg.auto))
        self.model = seeded_model(self.model_config, cfg, self.dist, self.device, parent, self.vocab)
        if parent is not None:
            self.progress.message(finetune.describe(parent, self.vocab))
        self.ddp: torch.nn.Module = self.model  # the module to train: DDP around it under torchrun
        self.params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.autocast, self.scaler = mixed_precision(cfg.dtype, self.device)
        # --preset auto's probe was part of the budget (auto.py): the clock starts with it.
        self.state = ResumeState(total_steps=planned_total(cfg, self.batches.steps_per_epoch),
                                 elapsed=float(cfg.auto.get("probe_seconds") or 0.0))
        self.budget = RunClock(cfg, self.dist, self.val_ids, bool(cfg.max_time) and self.state.total_steps is None)
        self.hidden = None  # the carried hidden state
        self.writer = RunWriter(self.dist, self.run_dir)
        if resume:
            self._restore()
        elif self.dist.is_main:
            checkpoint.create_run(self.run_dir, self.model_config, asdict(cfg), self.vocab, corpus.record,
                                  parent=parent.record if parent else None)

    # --- the resume point ----------------------------------------------------------------
    def _restore(self) -> None:
        if self.dist.is_main:
            self.writer.clean_up()
        if not checkpoint.has_checkpoint(self.run_dir):
            return  # killed before it wrote anything (config.check_resumable): start from step 0
        ck = checkpoint.load_checkpoint(self.run_dir)
        checkpoint.restore_model(self.model, ck, self.run_dir)
        self.optimizer.load_state_dict(ck.optimizer)
        saved = ResumeState.from_dict(ck.trainer)
        if self.cfg.max_steps or self.cfg.epochs:  # else the run keeps its plan
            saved.total_steps, saved.cosine_from = self.state.total_steps, None
        self.state = saved
        self.budget.pace = Pace.from_dict(saved.budget)
        self.batches.load_state_dict(saved.batches)
        if self.scaler.is_enabled() and saved.scaler:
            self.scaler.load_state_dict(saved.scaler)
        reseed = self.cfg.seed + self.dist.rank + 7919 * saved.step
        restore_rng(ck.extra, saved.world_size, self.dist, self.device, reseed, self.progress.message)
        if saved.has_state:
            self.hidden = restore_hidden(ck.extra, self.model, self.cfg.batch_size, self.dist, self.device)
        self.writer.resumed_at(saved.step)

    def save(self) -> None:
        """Write the resume point (a collective: every rank sends its state rows and RNG)."""
        for p in self.model.parameters():
            if not torch.isfinite(p).all():
                raise _Diverged("non-finite weights")
        tensors = gather_tensors(self.dist, self.device, self.hidden)
        state = replace(
            self.state, world_size=self.dist.world_size, elapsed=self.budget.seconds(self.state),
            budget=self.budget.pace.to_dict(),
            batches=self.batches.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {}, has_state=self.hidden is not None,
        )
        self.writer.resume_point(self.state.step, lambda: checkpoint.save_checkpoint(
            self.run_dir, self.model, self.optimizer, tensors, state.to_dict()))

    # --- one step ------------------------------------------------------------------------
    def train_step(self) -> float:
        batch = self.batches.next()
        if batch.reset:
            self.hidden = None
        elif batch.fresh is not None and self.hidden is not None and batch.fresh.any():
            keep = (~batch.fresh).to(self.device)
            self.hidden = map_state(lambda t: t * keep.view(1, -1, *[1] * (t.dim() - 2)).to(t.dtype), self.hidden)
        x, y = batch.x.to(self.device), batch.y.to(self.device)
        lr = lr_at(self.state.step, self.cfg, self.state.total_steps, self.state.cosine_from)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            logits, hidden = self.ddp(x, self.hidden)  # (b, T, V)
        # A documents batch: its characters' sum over their number in the global batch (docbatches.py).
        loss = char_loss(logits, y) if batch.scale is None else char_loss(logits, y, "sum") / batch.scale
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
        self.hidden = detach_state(hidden)
        return global_loss.item()

    # --- evaluation and metrics ----------------------------------------------------------
    def evaluate(self) -> float | None:
        s = self.state
        if len(self.val_ids) < 2:
            return None
        # Rank 0 scores the whole split, exactly as one process would; the others wait.
        result = validation_loss(self.model, self.val_ids, self.val_docs, self.cfg.eval_streams) \
            if self.dist.is_main else None
        loss = self.dist.broadcast_float(result.loss if result else None)
        s.last_eval_step = s.step
        if s.best_val is None or loss < s.best_val:
            s.best_val, s.best_step, s.bad_evals = loss, s.step, 0
            self.writer.write(checkpoint.BEST, s.step, lambda: checkpoint.save_weights(
                self.run_dir, self.model, self.vocab, {"step": s.step, "val_loss": loss, "protocol": result.protocol}))
        else:
            s.bad_evals += 1
        return loss

    def _log(self, seconds: float, chars_per_s: float, evaluate: bool) -> None:
        """One line of metrics.jsonl, after an evaluation when `evaluate`."""
        s = self.state
        record = {
            "step": s.step,
            "time": round(seconds, 3),
            "epoch": round(s.step / self.batches.steps_per_epoch, 4),
            "lr": lr_at(max(0, s.step - 1), self.cfg, s.total_steps, s.cosine_from),
            "train_loss": (s.log_loss_sum / s.log_loss_count) if s.log_loss_count else None,
            "chars_per_s": round(chars_per_s, 1),
        }
        if record["train_loss"] is not None:
            s.last_train_loss = record["train_loss"]
        s.log_loss_sum, s.log_loss_count = 0.0, 0
        if evaluate:
            val = self.evaluate()
            if val is not None:
                record.update(val_loss=val, val_bpc=val / math.log(2))
                # A final evaluation right after a metrics line has no steps of its own: the last loss.
                train = record["train_loss"] if record["train_loss"] is not None else s.last_train_loss
                self.progress.message(
                    f"step {s.step}: train loss {train if train is not None else float('nan'):.4f}, "
                    f"val loss {val:.4f} ({val / math.log(2):.3f} bpc)"
                    + (" *best*" if s.best_step == s.step else "")
                )
        self.writer.write(checkpoint.METRICS, s.step, lambda: checkpoint.append_metrics(self.run_dir, record))

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> Summary:
        s = self.state
        if s.finished and (s.total_steps is None or s.step >= s.total_steps):
            return Summary.of(self.run_dir, s, self.params, "finished earlier", self.batches.chars_per_step)
        s.finished = False
        if self.ddp is self.model:
            self.ddp = self.dist.wrap(self.model)  # DDP's constructor is a collective
        if self.cfg.init_from and not checkpoint.has_checkpoint(self.run_dir):
            self.save()  # a fine-tuned run's start: resuming it never needs the parent
        try:
            with _signals_to(self._signal):
                return self._loop()
        finally:
            self.progress.close()

    def _loop(self) -> Summary:
        cfg, s, budget = self.cfg, self.state, self.budget
        budget.started = budget.now()
        window_t, window_chars, chars_per_s = budget.started, 0, 0.0  # throughput since the last metrics line
        try:
            while not (reason := self.dist.strongest(self._stop_reason(), STOP_REASONS)):
                loss = self.train_step()
                s.step += 1
                s.log_loss_sum += loss
                s.log_loss_count += 1
                window_chars += self.batches.chars_per_step
                self.progress.update(fraction_done(cfg, s, budget.seconds(s)), "train",
                                     f"step {s.step} loss {loss:.3f} {chars_per_s:,.0f} chars/s")
                is_eval = bool(cfg.eval_every) and s.step % cfg.eval_every == 0
                if s.step % cfg.log_every == 0 or is_eval:
                    now = budget.now()
                    chars_per_s = window_chars / max(now - window_t, 1e-9)
                    window_t, window_chars = now, 0
                    if is_eval:
                        budget.timed("eval", self._log, budget.seconds(s), chars_per_s, True)
                    else:
                        self._log(budget.seconds(s), chars_per_s, evaluate=False)
                if cfg.save_every and s.step % cfg.save_every == 0:
                    budget.timed("save", self.save)
                budget.after_step(s, self.model)  # under --max-time: the step target aimed again
            s.stop_reason, s.finished = reason, reason != "interrupted"
            # An interrupted run logs nothing more: its resumed twin writes the same lines
            # an uninterrupted run would have written.
            if s.step != s.last_eval_step and reason != "interrupted":
                self._log(budget.seconds(s), chars_per_s, evaluate=True)
            if s.best_val is None and s.step > 0:
                self.writer.write(checkpoint.BEST, s.step, lambda: checkpoint.save_weights(
                    self.run_dir, self.model, self.vocab, {"step": s.step}))
            s.elapsed, budget.started = budget.seconds(s), None
            self.save()
        except _Diverged as e:
            raise self.dist.error(
                f"training diverged at step {s.step + 1}: {e}; nothing from this step on was "
                f"saved and the last checkpoint is intact; lower --lr (now {cfg.lr:g}) or "
                f"--grad-clip, or raise --warmup, and start again or --resume"
            ) from None
        if self.dist.is_main:
            from charnn.train.plot import draw_loss_curve

            if note := draw_loss_curve(self.run_dir):
                self.progress.message(note)
        return Summary.of(self.run_dir, s, self.params, reason, self.batches.chars_per_step)

    def _stop_reason(self) -> str:
        if self.signal_received is not None:
            return "interrupted"
        reason = stop_reason(self.cfg, self.state, self.budget.seconds(self.state), self.budget.reserve())
        if not reason and self.should_stop is not None and self.should_stop(self.state.step):
            return "interrupted"
        return reason

    def _signal(self, signum, frame) -> None:
        if self.signal_received is not None:
            raise KeyboardInterrupt  # a second signal: stop at once (the files stay intact)
        self.signal_received = signum
        self.progress.message(f"signal {signal.Signals(signum).name}: saving and stopping after this step")
