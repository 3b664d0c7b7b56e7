"""Character n-gram models with interpolated Kneser-Ney smoothing: the baseline of `charnn cells`.

Karpathy, Johnson & Fei-Fei (2015) traced what an LSTM gains over an n-gram model to
long-range structure; `charnn cells` repeats that comparison with this model, n = 1 ... 20,
trained on a run's training split and scored on the same characters as the run's model.

The smoothing is interpolated Kneser-Ney with one discount per order (Chen & Goodman 1998,
"An empirical study of smoothing techniques for language modeling", section 2.7). For a
character c after the context h (the n - 1 characters before it), with h' = h less its
first (oldest) character:

    P_n(c | h) = max(N(hc) - D_n, 0) / N(h.)  +  D_n T(h.) / N(h.)  Q_{n-1}(c | h')

N counts the n-grams of the training text, N(h.) = the sum of N(hc) over c, T(h.) the
number of distinct characters seen after h. The lower orders Q use continuation counts, the
number of distinct characters seen *before* an n-gram, in place of counts:

    Q_k(c | h) = max(N+(.hc) - D'_k, 0) / N+(.h.)  +  D'_k T'(h) / N+(.h.)  Q_{k-1}(c | h')
    Q_0(c)     = 1 / V          (uniform over the vocabulary: no character has probability 0)

A context never seen at an order gives that order's probability to the order below whole.
Discounts: D = n1 / (n1 + 2 n2) (Ney, Essen & Kneser 1994), n1 and n2 the numbers of
n-grams seen once and twice (for D', with continuation counts 1 and 2), but at least
MIN_DISCOUNT. Each order sums to 1 over the vocabulary (tested).

Why this code and not a library: nltk.lm is pure Python (a dictionary lookup per n-gram
and order: minutes for a million characters at 20 orders); KenLM is a C++ build that models
words. Here the counts are numpy arrays of 64-bit n-gram keys, sorted once per order, and
every lookup is a binary search over all positions at once; the orders are built one after
the other and each one's tables are dropped before the next, so memory is a few arrays of
the training text's length (about 300 bytes a character at the peak: 0.6 GB for tiny
Shakespeare at n = 20, some 20 s on 2 busy cores).

Keys: an n-gram's key is built by prepending its characters one by one through the
splitmix64 finaliser (a bijective mix of 64 bits), so the key of the k-gram ending at a
position extends the (k-1)-gram's. Two distinct n-grams of one order share a key with
probability about 2^-64: with 10^7 distinct n-grams of an order, the chance that any two do
is about 3e-6. Imports only numpy.
"""

from __future__ import annotations

import numpy as np

# An order without n-grams seen once (the unigrams of a large text) would get D = 0 and leave no
# probability to the orders below it, and so none to characters it has not seen.
MIN_DISCOUNT = 0.1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _extend(keys: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Keys of k-grams -> keys of the (k+1)-grams with `chars` prepended (splitmix64's finaliser)."""
    z = keys ^ ((chars.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return max(MIN_DISCOUNT, n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.0)


def _distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sorted distinct keys, where one of each occurs, how often each occurs, and the
    sorting permutation with the start of each key's run in it. (np.unique with its extra
    outputs costs several times one quicksort.)"""
    order = np.argsort(keys)
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]])) if len(keys) else \
        np.zeros(0, dtype=np.int64)
    counts = np.diff(np.append(starts, len(keys)))
    return ordered[starts], order[starts], counts, (order, starts)


def _grouped(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct keys, the sum of `values` and the number of entries under each."""
    distinct, _, counts, (order, starts) = _distinct(keys)
    sums = np.add.reduceat(values[order], starts) if len(keys) else np.zeros(0)
    return distinct, sums, counts.astype(np.float64)


def _lookup(keys: np.ndarray, values: list[np.ndarray], queries: np.ndarray) -> list[np.ndarray]:
    """For each query key, the values stored under it in sorted `keys` (0 where absent)."""
    if len(keys) == 0:
        return [np.zeros(len(queries)) for _ in values]
    at = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    found = keys[at] == queries
    return [np.where(found, v[at], 0.0) for v in values]


class _Order:
    """The tables of one order k, from the keys of the training text's k- and (k+1)-grams."""

    def __init__(self, k: int, prev: np.ndarray, cur: np.ndarray, nxt: np.ndarray | None, distinct=None) -> None:
        # prev, cur, nxt: keys of the (k-1)-, k- and (k+1)-grams ending at each position
        # (entries before position k-2, k-1, k are not n-grams and are not read); `distinct`:
        # _distinct(cur[k - 1 :]) where the order below computed it already.
        keys, first, counts, _ = distinct if distinct is not None else _distinct(cur[k - 1 :])
        ends = first + k - 1  # where each distinct k-gram ends (one of its places)
        context = prev[ends - 1] if k > 1 else np.zeros(len(keys), dtype=np.uint64)
        self.keys, self.counts = keys, counts.astype(np.float64)
        self.ctx_keys, self.ctx_total, self.ctx_types = _grouped(context, self.counts)
        self.discount = _discount(counts)
        if nxt is None:
            return
        # Continuation counts: how many distinct characters precede each k-gram.
        self.distinct_next = _distinct(nxt[k:])  # the raw counts of the order above
        first_next = self.distinct_next[1]
        suffix_ends = first_next + k  # where each distinct (k+1)-gram ends, as its k-gram suffix does
        ckeys, cfirst, ccounts, _ = _distinct(cur[suffix_ends])
        cends = suffix_ends[cfirst]
        ccontext = prev[cends - 1] if k > 1 else np.zeros(len(ckeys), dtype=np.uint64)
        self.ckeys, self.ccounts = ckeys, ccounts.astype(np.float64)
        self.cctx_keys, self.cctx_total, self.cctx_types = _grouped(ccontext, self.ccounts)
        self.cdiscount = _discount(ccounts)

    def top(self, gram: np.ndarray, context: np.ndarray, valid: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """P_k(c | h) of the queries, interpolated with the lower order's `lower`."""
        (n,) = _lookup(self.keys, [self.counts], gram)
        total, types = _lookup(self.ctx_keys, [self.ctx_total, self.ctx_types], context)
        return _interpolate(n, total, types, self.discount, valid, lower)

    def continuation(self, gram, context, valid, lower) -> np.ndarray:
        """Q_k(c | h) of the queries: the same with continuation counts."""
        (n,) = _lookup(self.ckeys, [self.ccounts], gram)
        total, types = _lookup(self.cctx_keys, [self.cctx_total, self.cctx_types], context)
        return _interpolate(n, total, types, self.cdiscount, valid, lower)


def _interpolate(n, total, types, discount, valid, lower):
    seen = valid & (total > 0)
    safe = np.where(seen, total, 1.0)
    p = np.maximum(n - discount, 0.0) / safe + discount * types / safe * lower
    return np.where(seen, p, lower)


def kneser_ney(train: np.ndarray, contexts: np.ndarray, nexts: np.ndarray, vocab_size: int,
               max_order: int) -> np.ndarray:
    """P_n(next | context) for n = 1 ... max_order: (max_order, Q) probabilities.

    train: (T,) ids of the training text; contexts: (max_order - 1, Q), row j the id of the
    character j + 1 places before the next one, -1 where the context is shorter (an order
    that needs a missing character uses the order below); nexts: (Q,) ids.
    """
    train = np.asarray(train, dtype=np.int64)
    nexts = np.asarray(nexts, dtype=np.int64)
    T, Q = len(train), len(nexts)
    out = np.empty((max_order, Q))
    lower = np.full(Q, 1.0 / vocab_size)  # Q_0: uniform
    zero = np.zeros(T, dtype=np.uint64)
    prev, cur = zero, _extend(zero, train)  # keys of the 0- and 1-grams ending at each position
    gram = _extend(np.zeros(Q, dtype=np.uint64), nexts)  # the queries' k-grams: context + next
    context = np.zeros(Q, dtype=np.uint64)  # and their contexts, the k - 1 characters before
    valid = np.ones(Q, dtype=bool)
    order = None
    for k in range(1, max_order + 1):
        if k > 1:  # prepend the character k - 1 places before the next one
            before = contexts[k - 2]
            valid &= before >= 0
            gram = _extend(gram, before)
            context = _extend(context, before)
        distinct = getattr(order, "distinct_next", None)  # this order's counts, if the last one made them
        order = nxt = None  # the last order's tables go before this one's are built
        if k < max_order:
            nxt = np.zeros(T, dtype=np.uint64)
            nxt[k:] = _extend(cur[k:], train[: T - k])
        if T < k:  # no k-gram in the training text: this order adds nothing
            out[k - 1] = lower
        else:
            order = _Order(k, prev, cur, nxt if T > k else None, distinct)
            out[k - 1] = order.top(gram, context, valid, lower)
            if k < max_order and T > k:
                lower = order.continuation(gram, context, valid, lower)
        prev, cur = cur, nxt
    return out


def context_rows(ids: np.ndarray, max_order: int) -> np.ndarray:
    """The contexts of every position of a text for kneser_ney: (max_order - 1, N), row j the
    id j + 1 places back, -1 before the text's start."""
    ids = np.asarray(ids, dtype=np.int64)
    width = max_order - 1
    if width == 0:
        return np.zeros((0, len(ids)), dtype=np.int64)
    padded = np.concatenate([np.full(width, -1, dtype=np.int64), ids])
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)[: len(ids)]  # (N, width): ids[t-width : t]
    return np.ascontiguousarray(windows[:, ::-1].T)


def text_losses(train: np.ndarray, ids: np.ndarray, vocab_size: int, max_order: int) -> np.ndarray:
    """-ln P_n(ids[t] | ids[:t]) for n = 1 ... max_order and every position t: (max_order, N) nats."""
    probs = kneser_ney(train, context_rows(ids, max_order), ids, vocab_size, max_order)
    return -np.log(probs)
