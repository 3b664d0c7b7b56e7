"""Which units track a feature: the best single unit (correlation) and a linear probe over all.

`measure(units, features, split)` fits on the rows [0, split) of the recording and measures
on the rows [split, N) (held out), for each feature:

- the single unit with the largest |Pearson r| with the feature on the fitting rows, and its
  r (with its sign) on the held-out rows: chosen on one part and measured on another, so
  that picking the best of thousands of units does not flatter it;
- a linear probe over all units: ridge regression on the standardised units, its strength
  chosen from ALPHAS on the last fifth of the fitting rows (fitted on the rest), then refitted
  on all of them. Measured on the held-out rows as R^2 for a numeric feature, and for a
  binary one (0/1) as accuracy, the prediction thresholded at 1/2 (ridge as a classifier),
  beside the accuracy of always answering the fitting rows' majority class.

numpy only (scikit-learn would add a dependency for two matrix products and an eigh). The
recording is read in blocks of ROWS rows, so memory beyond it is a few blocks and the
units x units Gram matrix; products are float32 within a block, sums float64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ROWS = 4096
ALPHAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # ridge strength, as a fraction of the rows fitted
INNER = 0.8  # the share of the fitting rows the strength is fitted on (the rest chooses it)


@dataclass
class Measure:
    """One feature's best unit and probe (None where the feature is constant on a part)."""

    unit: int | None  # column of the unit with the largest |r| on the fitting rows
    r: float | None  # its Pearson r on the held-out rows
    r_fit: float | None  # its r on the fitting rows
    probe: float | None  # held-out R^2 (numeric) or accuracy (binary) of the ridge probe
    baseline: float | None  # binary: held-out accuracy of the fitting rows' majority class
    alpha: float | None  # the ridge strength chosen (fraction of the rows)

    def to_dict(self) -> dict:
        return asdict(self)


def _blocks(lo: int, hi: int):
    for a in range(lo, hi, ROWS):
        yield a, min(a + ROWS, hi)


def _moments(units: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of every unit over rows [lo, hi)."""
    s = np.zeros(units.shape[1])
    for a, b in _blocks(lo, hi):
        s += units[a:b].sum(0, dtype=np.float64)
    mean = s / (hi - lo)
    v = np.zeros(units.shape[1])
    for a, b in _blocks(lo, hi):
        v += ((units[a:b] - mean) ** 2).sum(0)
    return mean, np.sqrt(v / (hi - lo))


def _score(pred: np.ndarray, y: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """Per column: accuracy at threshold 1/2 for binary features, else R^2 (nan if y is constant)."""
    acc = ((pred > 0.5) == (y > 0.5)).mean(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    sse = ((y - pred) ** 2).sum(0)
    r2 = np.where(sst > 0, 1 - sse / np.where(sst > 0, sst, 1), np.nan)
    return np.where(binary, acc, r2)


def _ridge(eig: tuple[np.ndarray, np.ndarray], xty: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """Weights (U, F) of ridge regression with the Gram matrix's eigendecomposition, one lambda per column."""
    e, Q = eig
    proj = Q.T @ xty  # (U, F)
    return Q @ (proj / (e[:, None] + lambdas[None, :]))


def measure(units: np.ndarray, features: dict[str, np.ndarray], binary: dict[str, bool],
            split: int) -> dict[str, Measure]:
    """The best unit and the probe of each feature: fit on rows [0, split), measured on the rest."""
    n, U = units.shape
    names = list(features)
    Y = np.stack([features[k] for k in names], axis=1).astype(np.float64)  # (N, F)
    is_binary = np.array([binary[k] for k in names])
    mean, std = _moments(units, 0, split)
    alive = std > 1e-6 * max(1.0, float(std.max(initial=0)))
    scale = np.where(alive, 1 / np.where(alive, std, 1), 0).astype(np.float32)  # a dead unit reads 0
    shift = mean.astype(np.float32)
    y_mean, y_std = Y[:split].mean(0), Y[:split].std(0)

    # Pass 1 over the fitting rows: the Gram matrices of the inner fit (A) and choice (B) parts.
    inner = int(split * INNER)
    G = {"A": np.zeros((U, U)), "B": np.zeros((U, U))}
    XtY = {"A": np.zeros((U, len(names))), "B": np.zeros((U, len(names)))}
    for part, (lo, hi) in (("A", (0, inner)), ("B", (inner, split))):
        for a, b in _blocks(lo, hi):
            Z = (units[a:b] - shift) * scale  # (rows, U) float32, standardised
            G[part] += Z.T @ Z
            XtY[part] += Z.T.astype(np.float64) @ (Y[a:b] - y_mean)
    xty = XtY["A"] + XtY["B"]
    with np.errstate(invalid="ignore", divide="ignore"):
        r_fit = xty / (split * y_std[None, :])  # (U, F): the standardised units' correlations

    # The ridge strength of each feature, chosen on part B of a fit on part A.
    eig_a = np.linalg.eigh(G["A"])
    lambdas = np.array(ALPHAS) * max(inner, 1)
    W = np.concatenate([_ridge(eig_a, XtY["A"], np.full(len(names), lam)) for lam in lambdas], axis=1)
    pred = np.concatenate([((units[a:b] - shift) * scale) @ W.astype(np.float32) for a, b in _blocks(inner, split)])
    yb = np.tile(Y[inner:split], len(lambdas))
    scores = _score(pred + np.tile(y_mean, len(lambdas)), yb, np.tile(is_binary, len(lambdas)))
    scores = np.nan_to_num(scores.reshape(len(lambdas), len(names)), nan=-np.inf)
    chosen = np.array(ALPHAS)[scores.argmax(0)]  # (F,)

    # Refit on all fitting rows; measure the probe and the units' correlations on the held-out rows.
    W = _ridge(np.linalg.eigh(G["A"] + G["B"]), xty, chosen * split).astype(np.float32)
    h_mean, h_std = _moments(units, split, n)
    Yh = Y[split:]
    yh_c = Yh - Yh.mean(0)
    preds, xy = [], np.zeros((U, len(names)))
    for a, b in _blocks(split, n):
        block = units[a:b]
        preds.append(((block - shift) * scale) @ W)
        xy += block.T.astype(np.float64) @ yh_c[a - split : b - split]
    probe = _score(np.concatenate(preds) + y_mean, Yh, is_binary)
    with np.errstate(invalid="ignore", divide="ignore"):
        r_held = xy / ((n - split) * h_std[:, None] * Yh.std(0)[None, :])

    out = {}
    for f, name in enumerate(names):
        if y_std[f] == 0:  # constant where the unit is chosen: nothing to track
            out[name] = Measure(None, None, None, None, None, None)
            continue
        u = int(np.nanargmax(np.abs(np.where(alive, r_fit[:, f], 0))))
        held_r = r_held[u, f]
        majority = float(Y[:split, f].mean() > 0.5)
        out[name] = Measure(
            unit=u, r=float(held_r) if np.isfinite(held_r) else None, r_fit=float(r_fit[u, f]),
            probe=float(probe[f]) if np.isfinite(probe[f]) else None,
            baseline=float((Yh[:, f] == majority).mean()) if is_binary[f] else None,
            alpha=float(chosen[f]),
        )
    return out
