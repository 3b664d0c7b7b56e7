"""The documents layout: every row of a batch reads one document, and no state crosses two.

A document is read as inputs `<start> c1 .. cn` and targets `c1 .. cn <end>` (documents.py's
DocumentSet). The documents of an epoch are sorted by length, ties in a random order, and cut
into groups of B (the global batch); the groups are read in a random order. A group is read
in windows of at most T inputs, every row from the zero state at the group's first window
(`reset`), carrying the state from window to window of the same document (truncated BPTT,
as the stream layout does). Rows whose document has ended are padding: their targets are -1,
which the loss leaves out (models.lm.char_loss), and a window is only as wide as the longest
row still reading::

    a group of B = 3 documents, T = 3          window 0 (reset)         window 1 (state carried)
      "al"    inputs <s> a l                   x  <s> a l    y  a l <e>   x  . .    y  - -
      "bob"   inputs <s> b o b                    <s> b o       b o b        b .       <e> -
      "emma"  inputs <s> e m m a                  <s> e m       e m m        m a       a <e>

    (".": padding input, "-": target -1, not scored; window 1 is 2 wide: "emma" has 2 inputs left)

So each row of a batch holds one document only, a row's state is always that of its own
document, and an epoch scores every character of every training document, and every `<end>`,
exactly once. Sorting makes the documents of a group about as long as each other: names of
~7 characters are read in windows of ~8 with little padding, a long document in T-windows.
The length of every group, hence the number of steps per epoch, is the same every epoch.

The loss of a batch is its sum over the scored targets divided by `Batch.scale`, the number
of targets of the global batch over the world size: a mean per character over the global
batch, the same under torchrun (DDP averages the ranks' gradients) as in one process. With
W processes, rank r reads rows r*B .. r*B + B - 1 of every global group.

The plan of an epoch is a pure function of (seed, epoch): the iterator's state is (epoch,
cursor), saved in the checkpoint like the other layouts', so resume is exact.
Imports batching (Batch) and documents (DocumentSet).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from charnn.data.batching import Batch
from charnn.data.documents import DocumentSet

PAD_TARGET = -1  # the target of a padded position: models.lm.char_loss does not score it


def read_window(docs: DocumentSet, members: np.ndarray, start: int, seq_len: int, rows: slice,
                world_size: int = 1) -> Batch:
    """Inputs start .. start + T - 1 of the documents `members` (a global group), for `rows`.

    Every row of `rows` past the end of `members` is padding. The width is the longest
    remaining document's, at most T; `scale` counts the targets of the whole group's window.
    """
    inputs = docs.lengths[members] + 1  # (m,) inputs of each document: <start> and its characters
    width = int(min(seq_len, inputs.max() - start))
    scored = int(np.clip(inputs - start, 0, width).sum())  # targets of this window, all ranks
    mine = members[rows]
    B = rows.stop - rows.start
    have = np.zeros(B, dtype=np.int64)  # inputs of each row's document, 0 for an empty row
    have[: len(mine)] = docs.lengths[mine] + 1
    first = np.zeros(B, dtype=np.int64)
    first[: len(mine)] = docs.starts[mine]
    pos = start + np.arange(width)  # (W,)
    valid = pos[None, :] < have[:, None]  # (B, W)
    idx = np.where(valid, first[:, None] + pos[None, :], 0)  # (B, W) into docs.ids
    x = np.where(valid, docs.ids[idx], 0)
    y = np.where(valid, docs.ids[idx + 1], PAD_TARGET)
    return Batch(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)),
                 reset=start == 0, scale=scored / world_size)


def _group_steps(lengths: np.ndarray, group: int, seq_len: int) -> np.ndarray:
    """Windows of each group of `group` documents in length order: the longest's inputs / T."""
    n = len(lengths)
    inputs = np.sort(lengths) + 1
    last = np.minimum(np.arange(1, -(-n // group) + 1) * group, n) - 1  # each group's longest
    return -(-inputs[last] // seq_len)


class DocumentBatches:
    """Groups of B documents of about one length, in a random order; each row one document."""

    layout = "documents"

    def __init__(self, docs: DocumentSet, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.docs, self.batch_size, self.seq_len = docs, batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.group = batch_size * world_size
        self.group_steps = _group_steps(docs.lengths, self.group, seq_len)  # (G,) by length order
        self.steps_per_epoch = int(self.group_steps.sum())
        self.chars_per_step = docs.targets / self.steps_per_epoch  # scored per step (all ranks), on average
        self.rows = slice(rank * batch_size, (rank + 1) * batch_size)
        self.epoch = 0
        self.cursor = 0  # the next window within the epoch
        self._plan_epoch = -1

    def _plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The epoch's documents in length order (ties shuffled), its group order, and the step
        each group ends at: a pure function of (seed, epoch)."""
        if self._plan_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = np.lexsort((rng.random(len(self.docs)), self.docs.lengths))
            self._groups = rng.permutation(len(self.group_steps))
            self._ends = np.cumsum(self.group_steps[self._groups])
            self._plan_epoch = self.epoch
        return self._order, self._groups, self._ends

    def next(self) -> Batch:
        if self.cursor == self.steps_per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0
        order, groups, ends = self._plan()
        k = int(np.searchsorted(ends, self.cursor, side="right"))  # the k-th group of the epoch
        g = int(groups[k])
        window = self.cursor - int(ends[k] - self.group_steps[g])
        members = order[g * self.group : (g + 1) * self.group]
        self.cursor += 1
        return read_window(self.docs, members, window * self.seq_len, self.seq_len, self.rows, self.world_size)

    def state_dict(self) -> dict:
        return {"layout": self.layout, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def document_windows(docs: DocumentSet, batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Every document once, in length order (no randomness), as the training layout reads it:
    for scoring (evaluate.evaluate_documents)."""
    order = np.argsort(docs.lengths, kind="stable")
    steps = _group_steps(docs.lengths, batch_size, seq_len)
    for g, n in enumerate(steps):
        members = order[g * batch_size : (g + 1) * batch_size]
        rows = slice(0, len(members))
        for window in range(int(n)):
            yield read_window(docs, members, window * seq_len, seq_len, rows)
