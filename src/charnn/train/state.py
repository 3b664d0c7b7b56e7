"""The resume point's own part: the trainer's counters, and the random and hidden states.

last.safetensors (checkpoint.py) holds the weights, the optimizer, and what this module
makes of a run in progress:

- `ResumeState`, the counters and a time budget's plan, saved as the checkpoint's JSON
  metadata ("trainer") and restored from it: one dataclass, so what is saved and what is
  restored cannot drift apart. Four of its fields describe the parts saved beside it
  (world_size: how many processes wrote it; scaler: the float16 loss scaler; batches: the
  batch iterator's position; has_state: whether a hidden state was carried); the trainer
  fills them as it saves and hands them to those parts as it restores.
- the tensors `rng.torch[.r]`, `rng.cuda[.r]` (every rank's random state; rank 0 keeps
  the single-process names) and `state.i` (the carried hidden state, the rows of every
  rank's stream columns side by side).

Imports models.lm and distributed; the trainer (loop.py) reads and writes the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch

from charnn.models.lm import state_tensors
from charnn.train.distributed import Dist


@dataclass
class ResumeState:
    """Where a run stands. Saved and restored as it is; a run saved before a field existed gets its default."""

    world_size: int = 1  # processes that wrote the resume point
    scaler: dict = field(default_factory=dict)  # the float16 loss scaler; {} when off
    step: int = 0
    total_steps: int | None = None  # the step the schedule ends on; None = not known yet (a time budget)
    elapsed: float = 0.0  # seconds of training, summed over resumes
    best_val: float | None = None
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the best one (--patience)
    last_eval_step: int = -1
    log_loss_sum: float = 0.0  # the training loss since the last metrics line
    log_loss_count: int = 0
    last_train_loss: float | None = None
    finished: bool = False
    stop_reason: str = ""
    batches: dict = field(default_factory=dict)  # the batch iterator's position
    has_state: bool = False  # a hidden state was carried (tensors state.0, state.1, ...)
    # A time budget's plan (budget.py, schedule.py): where the cosine stood when the step
    # target last moved ([step, progress]; None = it never moved), and the measured pace.
    cosine_from: list | None = None
    budget: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ResumeState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _rng_names(rank: int) -> tuple[str, str]:
    """Keys of a rank's CPU and CUDA RNG states (rank 0 keeps the single-process names)."""
    suffix = f".{rank}" if rank else ""
    return f"rng.torch{suffix}", f"rng.cuda{suffix}"


def gather_tensors(dist: Dist, device: torch.device, hidden) -> dict[str, torch.Tensor]:
    """Every rank's RNG states and hidden-state rows, as the resume point's tensors (a collective)."""
    tensors = {}
    rngs = dist.gather_cat(torch.get_rng_state()[None], 0)  # (world, n)
    cuda = dist.gather_cat(torch.cuda.get_rng_state(device)[None], 0) if device.type == "cuda" else None
    for rank in range(dist.world_size):
        cpu_name, cuda_name = _rng_names(rank)
        tensors[cpu_name] = rngs[rank]
        if cuda is not None:
            tensors[cuda_name] = cuda[rank]
    for i, t in enumerate(state_tensors(hidden)):
        tensors[f"state.{i}"] = dist.gather_cat(t, 1)  # (layers, B, ...): all columns
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor], saved_world: int, dist: Dist, device: torch.device,
                reseed: int, say: Callable[[str], None]) -> None:
    """This rank's random state as it was saved; a fresh one (seeded `reseed`) if the world size changed."""
    if saved_world != dist.world_size:
        # The data order and the hidden state carry over exactly; the random streams
        # (dropout) cannot, so this rank starts its own afresh.
        torch.manual_seed(reseed)
        say(f"resuming a run saved by {saved_world} process(es) with {dist.world_size}: "
            f"data and state continue exactly, dropout's random numbers do not")
        return
    cpu, cuda = _rng_names(dist.rank)
    torch.set_rng_state(tensors[cpu])
    if device.type == "cuda" and cuda in tensors:
        torch.cuda.set_rng_state(tensors[cuda], device)


def restore_hidden(tensors: dict[str, torch.Tensor], model, batch_size: int, dist: Dist, device: torch.device):
    """This rank's rows of the saved hidden state, which holds the rows of all B columns."""
    b = batch_size // dist.world_size
    rows = slice(dist.rank * b, (dist.rank + 1) * b)
    template = model.initial_state(b, device)
    saved = [tensors[f"state.{i}"][:, rows].to(device) for i in range(len(state_tensors(template)))]
    return saved[0] if isinstance(template, torch.Tensor) else tuple(saved)
