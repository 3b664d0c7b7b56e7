"""Several processes, one run: torchrun, DistributedDataParallel, and agreeing on everything.

`torchrun --nproc-per-node N -m charnn train ...` starts N copies of `charnn train` and tells
each one its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); on several machines, torchrun's rendezvous flags set the same variables.
`session()` reads them, joins the process group and hands the trainer a `Dist`; without
them (a plain `charnn train`) it hands out the single-process `Dist()`, whose methods do
nothing, so the trainer has one code path.

The process group speaks gloo for CPU tensors and, on a machine with GPUs, NCCL for CUDA
tensors (torch's "cpu:gloo,cuda:nccl"): DistributedDataParallel averages the gradients on
whichever device the model lives, and the small messages below (stop flags, error text,
RNG states) always travel as CPU tensors through gloo. Nothing is pickled.

The rules the trainer keeps, or the processes deadlock or drift apart:
- every rank makes the same collective calls in the same order;
- what one process could decide alone (a signal, its clock, `should_stop`, an error) is
  agreed: a stop or an error on any rank stops every rank at the same step;
- what must be equal is computed once and broadcast (the step target of a time budget,
  the validation loss), or computed identically on every rank (everything else);
- only rank 0 writes files and prints.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import distributed as torch_dist

from charnn.errors import CharnnError

T = TypeVar("T")

# Collectives wait this long for a slow peer. Generous, because ranks 1..N-1 wait while
# rank 0 evaluates on the validation split (torch's own default is 10 to 30 minutes).
TIMEOUT = datetime.timedelta(hours=2)


class ReportedByRankZero(CharnnError):
    """A user error that every rank raises and only rank 0 prints (the CLI exits with 2)."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; Dist() is the single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank within this machine: which GPU is ours

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- placement -------------------------------------------------------------------------
    def device(self, name: str) -> str:
        """The torch device of this process: `cuda` becomes this machine's GPU LOCAL_RANK."""
        device = torch.device(name)
        if not self.enabled:
            return str(device)
        if device.type == "cuda":
            if device.index is not None:
                raise CharnnError(
                    f"--device {name} names one GPU, but torchrun started {self.world_size} "
                    f"processes; pass --device cuda (each process takes the GPU of its LOCAL_RANK)"
                )
            if self.local_rank >= torch.cuda.device_count():
                raise CharnnError(
                    f"torchrun started more processes on this machine than it has GPUs "
                    f"({torch.cuda.device_count()}); lower --nproc-per-node"
                )
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        if device.type != "cpu":
            raise CharnnError(
                f"--device {name}: several processes train on cpu (gloo) or cuda (NCCL) only; "
                f"pass --device cpu or cuda, or run one process"
            )
        return str(device)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: DistributedDataParallel around `model` when there are peers.

        DDP averages the gradients over the ranks during backward (all-reduce), so every
        rank applies the same update and the weights stay identical.
        """
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # --- agreeing -------------------------------------------------------------------------
    def agree(self, fn: Callable[[], T]) -> T:
        """Run `fn` on every rank; if it raised a CharnnError on any, raise it on all.

        Rank 0 raises the error (naming the rank it happened on when that was another one);
        the other ranks raise ReportedByRankZero, which the CLI does not print again.
        """
        if not self.enabled:
            return fn()
        error, result = None, None
        try:
            result = fn()
        except CharnnError as e:
            error = str(e)
        messages = self._all_gather_text(error)
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            rank, message = failed[0]
            raise self.error(message if rank == 0 else f"on rank {rank}: {message}")
        return result

    def error(self, message: str) -> CharnnError:
        """The exception for an error that every rank meets at the same point."""
        return CharnnError(message) if self.is_main else ReportedByRankZero(message)

    def strongest(self, reason: str, order: Sequence[str]) -> str:
        """The one reason every rank acts on: the last in `order` that any rank gave."""
        if not self.enabled:
            return reason
        code = torch.tensor([order.index(reason)], dtype=torch.int64)
        torch_dist.all_reduce(code, op=torch_dist.ReduceOp.MAX)
        return order[int(code)]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over the ranks (on every rank); non-finite if any is."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM)
        return value / self.world_size

    def broadcast_float(self, value: float | None) -> float | None:
        """Rank 0's value on every rank (None travels as NaN)."""
        if not self.enabled:
            return value
        t = torch.tensor([float("nan") if value is None else value], dtype=torch.float64)
        torch_dist.broadcast(t, src=0)
        v = float(t)
        return None if v != v else v

    def broadcast_int(self, value: int) -> int:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        torch_dist.broadcast(t, src=0)
        return int(t)

    def gather_cat(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's `tensor` (all of one shape) joined along `dim` in rank order."""
        if not self.enabled:
            return tensor
        tensor = tensor.detach().contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, tensor)
        return torch.cat(parts, dim)

    def _all_gather_text(self, text: str | None) -> list[str | None]:
        """Every rank's string (or None), as UTF-8 bytes in uint8 tensors (no pickle)."""
        data = b"" if text is None else text.encode("utf-8")
        header = torch.tensor([len(data), text is not None], dtype=torch.int64)
        headers = [torch.empty_like(header) for _ in range(self.world_size)]
        torch_dist.all_gather(headers, header)
        width = max(1, max(int(h[0]) for h in headers))
        buf = torch.zeros(width, dtype=torch.uint8)
        if data:
            buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        bufs = [torch.empty_like(buf) for _ in range(self.world_size)]
        torch_dist.all_gather(bufs, buf)
        return [
            bytes(b[: int(h[0])].tolist()).decode("utf-8") if int(h[1]) else None
            for h, b in zip(headers, bufs)
        ]


def from_env(environ: dict[str, str] | None = None) -> Dist:
    """This process's Dist from torchrun's variables; Dist() when they are absent."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return Dist()
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise CharnnError(
            f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, "
            f"LOCAL_RANK={env.get('LOCAL_RANK')!r} are not integers; launch with torchrun"
        ) from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise CharnnError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun")
    return Dist(rank, world, local)


@contextmanager
def session() -> Iterator[Dist]:
    """Join the process group torchrun set up (if any) for the duration of the block."""
    dist = from_env()
    if not dist.enabled or torch_dist.is_initialized():
        yield dist  # one process, or a caller that manages the process group itself
        return
    if not torch_dist.is_available():
        raise CharnnError("this build of torch has no torch.distributed; run one process")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise CharnnError(f"{' and '.join(missing)} not set; launch several processes with torchrun")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    torch_dist.init_process_group(
        backend, rank=dist.rank, world_size=dist.world_size, timeout=TIMEOUT
    )
    try:
        yield dist
    finally:
        torch_dist.destroy_process_group()
