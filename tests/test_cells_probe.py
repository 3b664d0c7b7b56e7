"""lab/probe.py: the best unit is chosen on the fitting rows and measured on the held-out ones."""

import numpy as np

from charnn.lab.probe import measure


def test_best_unit_probe_and_constant_features():
    rng = np.random.default_rng(0)
    n, split = 4000, 2000
    units = rng.normal(size=(n, 30)).astype(np.float32)
    walk = np.cumsum(rng.normal(size=n))
    units[:, 7] = walk + 0.1 * rng.normal(size=n)
    units[:, 3] = 5.0  # a dead unit is never chosen
    word = (units[:, 11] + units[:, 12] > 0).astype(float)  # no single unit reads it; a probe does
    features = {"walk": walk, "word": word, "flat": np.zeros(n)}
    out = measure(units, features, {"walk": False, "word": True, "flat": False}, split)
    assert out["walk"].unit == 7 and out["walk"].r > 0.99 and out["walk"].probe > 0.98
    assert out["word"].probe > 0.97 and 0.4 < out["word"].baseline < 0.6
    assert out["word"].r < 0.8
    flat = out["flat"]
    assert flat.unit is None and flat.r is None and flat.probe is None


def test_the_unit_is_measured_where_it_was_not_chosen():
    rng = np.random.default_rng(1)
    n, split = 4000, 2000
    z = rng.normal(size=n)
    units = rng.normal(size=(n, 10)).astype(np.float32)
    units[:split, 5] = z[:split]  # tracks z exactly where units are chosen, not at all after
    units[:, 6] = z + rng.normal(size=n)  # tracks z with noise everywhere (r ~ 0.7)
    m = measure(units, {"z": z}, {"z": False}, split)["z"]
    assert m.unit == 5 and m.r_fit > 0.999
    assert abs(m.r) < 0.1  # the held-out figure tells the truth about the choice
