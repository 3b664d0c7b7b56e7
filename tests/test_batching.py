import numpy as np
import pytest
import torch

from charnn.data.batching import StreamBatches, WindowBatches, make_batches
from charnn.errors import CharnnError

DATA = np.arange(1000, dtype=np.int64)


def test_streams_are_continuous_across_batches():
    b = StreamBatches(DATA, batch_size=4, seq_len=10)
    first, second = b.next(), b.next()
    assert first.reset and not second.reset
    # y is x shifted by one, and row r of batch k+1 continues row r of batch k.
    assert torch.equal(first.y[:, :-1], first.x[:, 1:])
    assert torch.equal(second.x[:, 0], first.x[:, -1] + 1)
    assert torch.equal(second.x[:, 0], first.y[:, -1])
    # Columns are contiguous quarters of the data.
    assert first.x[:, 0].tolist() == [0, 250, 500, 750]


def test_streams_cover_each_column_then_reset():
    b = StreamBatches(DATA, batch_size=4, seq_len=10)
    seen = [b.next() for _ in range(b.steps_per_epoch)]
    col0 = torch.cat([s.x[0] for s in seen]).tolist()
    assert col0 == list(range(len(col0)))
    assert b.next().reset and b.epoch == 1


def test_streams_state_restores_position():
    a = StreamBatches(DATA, 4, 10)
    for _ in range(30):
        a.next()
    b = StreamBatches(DATA, 4, 10)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        x, y = a.next(), b.next()
        assert torch.equal(x.x, y.x) and x.reset == y.reset


def test_ranks_split_the_global_layout():
    whole = StreamBatches(DATA, batch_size=4, seq_len=10)
    parts = [StreamBatches(DATA, batch_size=2, seq_len=10, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        w = whole.next()
        assert torch.equal(torch.cat([p.next().x for p in parts]), w.x)


def test_windows_cover_data_once_per_epoch_and_restore():
    w = WindowBatches(DATA, batch_size=5, seq_len=10, seed=3)
    starts = [int(s) for _ in range(w.steps_per_epoch) for s in w.next().x[:, 0]]
    assert len(set(starts)) == len(starts)  # no window twice in an epoch
    assert len({s % 10 for s in starts}) == 1  # one offset per epoch
    v = WindowBatches(DATA, batch_size=5, seq_len=10, seed=3)
    v.load_state_dict(w.state_dict())
    assert torch.equal(v.next().x, w.next().x)
    assert w.next().reset


def test_too_short_names_the_flags():
    with pytest.raises(CharnnError, match="--batch-size 64 x --seq-len 100.*lower --batch-size or --seq-len"):
        make_batches("streams", DATA, 64, 100)
    with pytest.raises(CharnnError, match="--batch-size"):
        make_batches("windows", DATA, 64, 100)


def test_reset_prob_drops_rows_reproducibly():
    a = StreamBatches(DATA, 8, 10, reset_prob=0.5, seed=1)
    batches = [a.next() for _ in range(6)]
    assert batches[0].reset and batches[0].fresh is None
    fresh = torch.stack([b.fresh for b in batches[1:]])
    assert 0 < fresh.sum() < fresh.numel()
    b = StreamBatches(DATA, 8, 10, reset_prob=0.5, seed=1)
    b.load_state_dict({"epoch": 0, "cursor": 3})
    assert torch.equal(b.next().fresh, batches[3].fresh)
    assert StreamBatches(DATA, 8, 10).next().fresh is None
