"""The two batch layouts: stateful streams (truncated backprop through time) and random windows.

Both read a 1-D array of token ids (a numpy array or a read-only memory map, of any
integer type) and hand out `Batch(x, y, reset)` with `x`, `y` of shape (B, T), `y` being
`x` shifted one character ahead. `reset` tells the trainer to start the recurrent state
afresh. Each iterator has a small JSON state (epoch and cursor) that a checkpoint saves,
so a resumed run reads exactly the batches the uninterrupted run would have read.

Stateful streams (the RNN way; pytorch/examples word_language_model's `batchify`)
--------------------------------------------------------------------------------
The ids are cut into B contiguous columns of L = N // B characters; the columns are read
left to right, T characters at a time, and batch k is window k of every column::

    ids:     a b c d e f g h i j k l m n o p q r s t u v w x     (N = 24)

    B = 3    column 0:  a b c | d e f | g h        L = 8, T = 3
             column 1:  i j k | l m n | o p        windows per epoch = (L - 1) // T = 2
             column 2:  q r s | t u v | w x

    batch 0: x = [a b c]  y = [b c d]      batch 1: x = [d e f]  y = [e f g]
                 [i j k]      [j k l]               [l m n]      [m n o]
                 [q r s]      [r s t]               [t u v]      [u v w]

Row b of batch k+1 continues row b of batch k, so the hidden state the model ends batch k
with is the right state to start batch k+1 with: the trainer carries it across windows
(detached, so gradients stop at the window edge: truncated BPTT). A new epoch starts the
columns over and sets `reset`. With `reset_prob` p, each row's state is also dropped with
probability p before a window (`fresh`), so the model learns cold starts too. With `world_size` W processes, the global layout has B * W
columns and rank r reads columns r*B .. r*B + B - 1, so W ranks of batch B together read
exactly what one process with batch B * W reads.

Random windows (the classic tutorial's way)
-------------------------------------------
Each epoch the ids are cut into non-overlapping windows of T + 1 characters at a random
offset, the windows are shuffled, and B of them make a batch; every batch starts from a
fresh state (`reset` is always set)::

    offset 1:  a | b c d e | f g h i | j k l m | ...   ->   batches of B shuffled windows
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from charnn.errors import CharnnError

LAYOUTS = ("streams", "windows")  # and docbatches.py's documents layout, for --documents runs


@dataclass
class Batch:
    x: torch.Tensor  # (B, T) int64 input ids
    y: torch.Tensor  # (B, T) int64 target ids: x shifted one ahead
    reset: bool  # start the recurrent state afresh before this batch
    fresh: torch.Tensor | None = None  # (B,) bool: rows whose carried state starts afresh
    # None: the loss is the mean over every target. A number (docbatches.py): targets -1 are
    # padding, and the loss is the sum over the others divided by it.
    scale: float | None = None


def _gather(data: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """Rows data[s : s + length] for each start s, as an int64 tensor (B, length)."""
    idx = starts[:, None] + np.arange(length)[None, :]  # (B, length)
    return torch.from_numpy(np.asarray(data[idx], dtype=np.int64))


def _too_short(n: int, need: int, batch_size: int, seq_len: int) -> CharnnError:
    return CharnnError(
        f"the training text has {n:,} characters, too few for one batch of "
        f"--batch-size {batch_size} x --seq-len {seq_len} (needs at least {need:,}); "
        f"lower --batch-size or --seq-len, or use a longer corpus"
    )


class StreamBatches:
    """B contiguous streams read T characters at a time; the state carries across batches."""

    layout = "streams"

    def __init__(
        self,
        data: np.ndarray,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        reset_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        columns = batch_size * world_size
        self.reset_prob, self.seed, self.rank, self.world_size = reset_prob, seed, rank, world_size
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.column_len = len(data) // columns
        self.steps_per_epoch = (self.column_len - 1) // seq_len
        self.chars_per_step = columns * seq_len  # all ranks
        if self.steps_per_epoch < 1:
            raise _too_short(len(data), columns * (seq_len + 1), columns, seq_len)
        first = rank * batch_size
        self.starts = (np.arange(first, first + batch_size) * self.column_len).astype(np.int64)
        self.epoch = 0
        self.cursor = 0  # the next window within the epoch

    def next(self) -> Batch:
        if self.cursor == self.steps_per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0
        reset = self.cursor == 0
        chunk = _gather(self.data, self.starts + self.cursor * self.seq_len, self.seq_len + 1)
        fresh = None
        if self.reset_prob > 0 and not reset:
            # Some streams forget their state now and then, so that the model also learns to
            # start from nothing (as sampling and the windows protocol do). The draw is a pure
            # function of (seed, epoch, cursor): resuming replays it exactly. It is made for
            # all B * W columns and this rank takes its own, as for the data.
            rng = np.random.default_rng([self.seed, self.epoch, self.cursor, 0])
            draw = rng.random(self.batch_size * self.world_size) < self.reset_prob
            first = self.rank * self.batch_size
            fresh = torch.from_numpy(draw[first : first + self.batch_size])
        self.cursor += 1
        return Batch(chunk[:, :-1], chunk[:, 1:], reset, fresh)

    def state_dict(self) -> dict:
        return {"layout": self.layout, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


class WindowBatches:
    """Shuffled non-overlapping windows at a random offset per epoch; fresh state per batch."""

    layout = "windows"

    def __init__(
        self,
        data: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.windows = (len(data) - 1) // seq_len - 1  # room for any offset in [0, T)
        self.steps_per_epoch = self.windows // (batch_size * world_size)
        self.chars_per_step = batch_size * world_size * seq_len  # all ranks
        if self.steps_per_epoch < 1:
            need = (batch_size * world_size + 2) * seq_len + 1
            raise _too_short(len(data), need, batch_size * world_size, seq_len)
        self.epoch = 0
        self.cursor = 0
        self._order_epoch = -1

    def _order(self) -> np.ndarray:
        # The window order is a pure function of (seed, epoch): nothing to save but the cursor.
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            offset = int(rng.integers(self.seq_len))
            self._starts = offset + self.seq_len * rng.permutation(self.windows)
            self._order_epoch = self.epoch
        return self._starts

    def next(self) -> Batch:
        if self.cursor == self.steps_per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0
        global_batch = self.batch_size * self.world_size
        first = self.cursor * global_batch + self.rank * self.batch_size
        starts = self._order()[first : first + self.batch_size]
        chunk = _gather(self.data, starts, self.seq_len + 1)
        self.cursor += 1
        return Batch(chunk[:, :-1], chunk[:, 1:], True)

    def state_dict(self) -> dict:
        return {"layout": self.layout, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def make_batches(
    layout: str,
    data: np.ndarray,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    reset_prob: float = 0.0,
) -> StreamBatches | WindowBatches:
    if layout == "streams":
        return StreamBatches(data, batch_size, seq_len, rank, world_size, reset_prob, seed)
    if layout == "windows":
        return WindowBatches(data, batch_size, seq_len, seed, rank, world_size)
    raise CharnnError(f"--batching must be one of {', '.join(LAYOUTS)}, got {layout!r}")
