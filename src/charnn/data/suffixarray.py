"""A suffix array over a run's training ids, and the matching statistics of any text against it.

    training ids   T = t0 t1 ... t(n-1)            (one id a character)
    suffix array   SA: the start of every suffix T[j:], in lexicographic order
    query          q = q0 q1 ... q(m-1)            (a sample; -1 for a character T cannot hold)
    matching statistics   ms[i] = the length of the longest prefix of q[i:] found anywhere in T
                          at[i] = one offset j in T where that prefix starts (-1 when ms[i] = 0)

Every substring of T is a prefix of some suffix, so ms[i] is the longest common prefix of q[i:]
with its two neighbours in SA order: a binary search finds where q[i:] would be inserted. All m
searches run together as numpy arrays (no Python loop over characters): each step compares q[i:]
with the suffix in the middle of its interval a chunk of characters at a time, starting from
what the interval's ends already share with q[i:] (Manber & Myers 1993, "mlr"), so copied
passages cost their length once, not once per step.

The array comes from libdivsufsort (pydivsufsort, the [novelty] extra): tiny Shakespeare's 1 M
training characters take 0.05 s there, against 2.4 s for numpy prefix doubling (lexsort on rank
pairs, O(n log^2 n)), which is kept as the fallback when the extra is not installed.

`open_index` caches the array in a run directory (np.save, no pickle, written atomically) with
a JSON record of what it was built from; a record that does not match (another corpus, another
split, another vocabulary, a damaged file) means a rebuild. Imports errors and files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from charnn.errors import CharnnError
from charnn.files import atomic_stream, open_regular, path_kind, read_json, write_json

FORMAT_NAME = "charnn-novelty-index"
FORMAT_VERSION = 1
_T_END = -2  # past the end of T: below every id, so a suffix sorts before its extensions
_Q_END = -1  # past the end of q, or a character T cannot hold: equal to nothing in T
_CHUNK = 8  # characters compared per row at first; doubled while rows stay equal
_BUDGET = 1 << 21  # at most so many (row, character) pairs compared at once: ~16 MB an array


# --- building --------------------------------------------------------------------------------
def suffix_array(ids: np.ndarray) -> np.ndarray:
    """The suffix array of `ids` (non-negative integers): int32 below 2**31 ids, else int64."""
    ids = np.asarray(ids)
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    try:
        from pydivsufsort import divsufsort
    except ImportError:
        sa = _prefix_doubling(ids)
    else:
        # divsufsort takes any integer dtype (wider ones as big-endian bytes, of which it keeps
        # the suffixes that start on an item), but not a read-only buffer such as a memory map.
        sa = divsufsort(np.array(ids, dtype=_narrowest(ids)))
    return sa.astype(np.int32 if n < 2**31 else np.int64, copy=False)


def _narrowest(ids: np.ndarray):
    top = int(ids.max())
    return np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32


def _prefix_doubling(ids: np.ndarray) -> np.ndarray:
    """Suffix array by prefix doubling: sort by (rank of the first k, rank of the next k)."""
    n = len(ids)
    rank = np.asarray(ids, dtype=np.int64)
    k = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)  # -1: the suffix ends before k more characters
        second[: max(0, n - k)] = rank[k:]
        sa = np.lexsort((second, rank))  # (n,) by rank, then by second
        new = np.empty(n, dtype=bool)
        new[0] = True
        new[1:] = (rank[sa[1:]] != rank[sa[:-1]]) | (second[sa[1:]] != second[sa[:-1]])
        rank = np.empty(n, dtype=np.int64)
        rank[sa] = np.cumsum(new) - 1
        if new.all():  # every rank distinct: sorted
            return sa
        k *= 2


# --- querying --------------------------------------------------------------------------------
class SuffixIndex:
    """Training ids T (an array or a read-only memory map) with their suffix array."""

    def __init__(self, ids: np.ndarray, sa: np.ndarray) -> None:
        if len(ids) != len(sa):
            raise ValueError("the suffix array must have one entry per id")
        self.ids = ids
        self.sa = sa

    def __len__(self) -> int:
        return len(self.ids)

    def matching_statistics(self, query: np.ndarray, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ms, at), both int64 (m,): ms[i] the longest prefix of query[i:] found in T, at[i]
        one offset of it in T (-1 where ms[i] = 0). Ids < 0 in `query` match nothing.

        The cost is O(m log n + sum of ms): a text copied whole costs its length squared over
        two. `limit` caps ms at `limit` (n-gram fractions for n <= limit need no more), and
        with it the cost, at O(m (log n + limit)).
        """
        q = np.asarray(query, dtype=np.int64)
        m, n = len(q), len(self.ids)
        if m == 0 or n == 0:
            return np.zeros(m, dtype=np.int64), np.full(m, -1, dtype=np.int64)
        start = np.arange(m, dtype=np.int64)  # row i searches for q[i:]
        # The insertion point of q[i:] lies in [lo, hi); llcp / rlcp: its common prefix with
        # SA[lo - 1] / SA[hi] (0 where that is outside T). Everything between shares min of both.
        lo, hi = np.zeros(m, dtype=np.int64), np.full(m, n, dtype=np.int64)
        llcp, rlcp = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
        rows = np.flatnonzero(lo < hi)
        while len(rows):
            mid = (lo[rows] + hi[rows]) // 2
            lcp, below = self._compare(q, start[rows], self.sa[mid].astype(np.int64),
                                       np.minimum(llcp[rows], rlcp[rows]), limit)
            up, down = rows[below], rows[~below]  # q[i:] < T[SA[mid]:]: look left, else right
            hi[up], rlcp[up] = mid[below], lcp[below]
            lo[down], llcp[down] = mid[~below] + 1, lcp[~below]
            rows = rows[lo[rows] < hi[rows]]
        ms = np.maximum(llcp, rlcp)
        left = llcp >= rlcp
        at = np.where(left, self.sa[np.maximum(lo - 1, 0)], self.sa[np.minimum(hi, n - 1)]).astype(np.int64)
        return ms, np.where(ms > 0, at, -1)

    def _compare(self, q: np.ndarray, qs: np.ndarray, ts: np.ndarray, skip: np.ndarray, limit: int | None):
        """(lcp, below) of q[qs:] against T[ts:] for each row, knowing the first `skip` agree:
        their common prefix length, and whether q's suffix sorts before T's. A row that agrees
        for `limit` characters stops there as if q's were the larger (the search then finds
        the last suffix that starts with those `limit` characters)."""
        m, n = len(q), len(self.ids)
        lcp = skip.copy()
        below = np.zeros(len(qs), dtype=bool)
        rows = np.arange(len(qs))
        width = _CHUNK
        while len(rows):
            if limit is not None:
                rows = rows[lcp[rows] < limit]
            k = lcp[rows, None] + np.arange(width)  # (r, width) offsets into both suffixes
            qi, ti = qs[rows, None] + k, ts[rows, None] + k
            a = np.where(qi < m, q[np.minimum(qi, m - 1)], _Q_END)  # (r, width)
            b = np.where(ti < n, np.asarray(self.ids[np.minimum(ti, n - 1)], dtype=np.int64), _T_END)
            differ = a != b
            found = differ.any(axis=1)
            first = differ.argmax(axis=1)
            done = rows[found]
            lcp[done] += first[found]
            pick = np.arange(len(rows))[found], first[found]
            below[done] = a[pick] < b[pick]
            lcp[rows[~found]] += width
            rows = rows[~found]
            # Doubling: a long copy costs O(its length) in few rounds; the (rows, width) arrays
            # stay under _BUDGET items (a 10,000-character copy has 10,000 rows doing this).
            width = max(_CHUNK, min(2 * width, _BUDGET // max(1, len(rows))))
        if limit is not None:  # past the limit, agreeing is all that counts
            below[lcp >= limit] = False
            np.minimum(lcp, limit, out=lcp)
        return lcp, below


# --- the cache in a run directory --------------------------------------------------------------
def open_index(
    index_path: Path,
    record_path: Path,
    key: dict,
    ids: Callable[[], np.ndarray],
    extra: Callable[[SuffixIndex], dict] | None = None,
) -> tuple[SuffixIndex, dict]:
    """(index, record): the suffix array cached at `index_path` if `record_path` says it was
    built from `key` (what the ids are: corpus digest, split, vocabulary), else built from
    `ids()` and cached, with `extra(index)` (figures worth keeping) in its record. A cache
    that cannot be written (a read-only run directory) is only not kept."""
    data = ids()
    cached = _cached(index_path, record_path, key, len(data))
    if cached is not None:
        sa, record = cached
        return SuffixIndex(data, sa), record
    index = SuffixIndex(data, suffix_array(np.asarray(data)))
    record = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **key, "tokens": len(data),
              **(extra(index) if extra else {})}
    try:
        with atomic_stream(index_path) as f:
            np.save(f, index.sa, allow_pickle=False)
        # The record last, naming the array's checksum: a kill between the two leaves a
        # record that does not match, so the next call rebuilds.
        write_json(record_path, {**record, "index_sha256": _file_digest(index_path)})
    except (CharnnError, OSError):
        pass  # a cache: the answers are the same without it
    return index, record


def _cached(index_path: Path, record_path: Path, key: dict, n: int) -> tuple[np.ndarray, dict] | None:
    """(suffix array, record) if the record matches `key` and the array its checksum, else None."""
    try:
        if path_kind(record_path, follow=False) != "file" or path_kind(index_path, follow=False) != "file":
            return None
        record = read_json(record_path)
    except CharnnError:
        return None
    expected = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **key, "tokens": n}
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in expected.items()):
        return None
    try:
        if record.get("index_sha256") != _file_digest(index_path):
            return None
        sa = np.load(index_path, mmap_mode="r", allow_pickle=False)
    except (CharnnError, OSError, ValueError):
        return None
    if sa.shape != (n,) or sa.dtype not in (np.dtype("<i4"), np.dtype("<i8")):
        return None
    if n and (sa.min() < 0 or sa.max() >= n):  # never indexes outside T, whatever the file holds
        return None
    return sa, record


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, "it is rebuilt") as (f, _):
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
