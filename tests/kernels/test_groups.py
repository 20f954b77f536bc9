"""Grouped moments and the reduction of categorical least squares, against dense one-hot
least squares (NumPy's lstsq) on the same rows."""

from functools import reduce as fold

import numpy as np
import pytest

from gd_dask.errors import DataError
from gd_dask.kernels.groups import group_moments, merge_groups
from gd_dask.kernels.moments import block_moments
from gd_dask.optimization.categorical import encode, recover, reduce


def _data(rng, n, d, levels, nested=False):
    X = rng.normal(5, 2, (n, d))
    cats = [rng.integers(0, L, n).astype(float) * 7 + 3 for L in levels]  # keys need not be 0..L-1
    if nested:
        cats[1] = np.floor(cats[0] / 50)
    y = X @ rng.normal(0, 1, d) + 4.0 + rng.normal(0, 0.3, n)
    for c in cats:
        effect = rng.normal(0, 2, int(c.max()) + 1)
        y += effect[c.astype(int)]
    return X, cats, y


def _one_hot_fit(X, cats, y, enc):
    """Dense least squares on [1, X, non-reference indicators of every column]."""
    cols = [np.ones(len(y)), *X.T]
    for c, keys in enumerate(enc.levels):
        for j in enc.non_reference(c):
            cols.append((cats[c] == keys[j]).astype(float))
    D = np.column_stack(cols)
    beta, *_ = np.linalg.lstsq(D, y, rcond=None)
    return D, beta


def _groups(X, cats, y, slice_rows=97):
    """Block columns as a pass sees them: the categorical keys among the features."""
    Z = np.column_stack([cats[0], X[:, :1], *cats[1:], X[:, 1:], y])
    cat_idx = [0] + [2 + i for i in range(len(cats) - 1)]
    parts = [group_moments(Z[i:i + slice_rows], cat_idx) for i in range(0, len(Z), slice_rows)]
    return fold(merge_groups, parts)


@pytest.mark.parametrize("levels", [[40], [300, 6], [25, 8, 3]])
def test_the_reduced_solution_is_one_hot_least_squares(levels):
    rng = np.random.default_rng(len(levels))
    X, cats, y = _data(rng, 3000, 3, levels)
    g = _groups(X, cats, y)
    # The groups' totals are the rows' moments.
    mom = g.to_moments()
    ref = block_moments(np.column_stack([X, y]))
    assert mom.n == 3000 and np.allclose(mom.mean, ref.mean, rtol=1e-13)
    assert np.allclose(mom.comoment, ref.comoment, rtol=1e-11)
    enc = encode(g, [f"c{i}" for i in range(len(cats))])
    assert enc.absorbed == int(np.argmax(levels))
    red = reduce(g, enc)
    S = red.mom.comoment
    theta = np.linalg.solve(S[:-1, :-1], S[:-1, -1])
    coef = recover(theta, red, enc)
    D, beta = _one_hot_fit(X, cats, y, enc)
    pred = coef.b + X @ coef.m + sum(coef.levels[c][np.searchsorted(enc.levels[c], cats[c])]
                                     for c in range(len(cats)))
    assert np.max(np.abs(pred - D @ beta)) <= 1e-9 * np.max(np.abs(D @ beta))
    assert np.allclose(coef.m, beta[1:4], rtol=1e-9, atol=1e-12)
    assert abs(coef.b - beta[0]) <= 1e-9 * abs(beta[0])
    for c in range(len(cats)):
        assert coef.levels[c][enc.reference[c]] == 0
        # The reference is the most frequent level.
        assert enc.counts[c][enc.reference[c]] == max(enc.counts[c])


def test_the_merge_order_does_not_change_the_bits_of_a_fixed_tree():
    """Slices and merges in the same fixed order give the same bits whatever the groups'
    arrival; different slicings agree to rounding."""
    rng = np.random.default_rng(3)
    X, cats, y = _data(rng, 2000, 2, [30, 4])
    a, b = _groups(X, cats, y, 97), _groups(X, cats, y, 97)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    c = _groups(X, cats, y, 500)
    assert np.array_equal(a.keys, c.keys) and np.array_equal(a.n, c.n)
    assert np.allclose(a.mean, c.mean, rtol=1e-13) and np.allclose(a.within, c.within, rtol=1e-11)


def test_a_level_nested_in_another_column_is_refused_by_name():
    rng = np.random.default_rng(4)
    X, cats, y = _data(rng, 2000, 2, [300, 6], nested=True)
    g = _groups(X, cats, y)
    with pytest.raises(DataError, match="'c1' adds nothing to 'c0'.*drop 'c1'"):
        reduce(g, encode(g, ["c0", "c1"]))


@pytest.mark.parametrize("columns", [1, 2, 3])
def test_keys_coded_by_hashing_give_the_groups_sorting_gives(monkeypatch, columns):
    """Past ``FACTORIZE_ROWS`` a batch's keys are coded by pandas' factorize instead of
    sorted: the same groups in the same order, so the same bits of every sum (negative,
    fractional and repeated keys, one to three columns)."""
    import gd_dask.kernels.groups as groups

    rng = np.random.default_rng(columns)
    n = groups.FACTORIZE_ROWS + 1234
    keys = rng.integers(0, [50, 5000, 3][:columns], (n, columns)).astype(float)
    keys[rng.random((n, columns)) < 0.05] *= -1.5
    Z = np.column_stack([keys, rng.normal(size=(n, 2))])
    hashed = group_moments(Z, list(range(columns)))
    monkeypatch.setattr(groups, "FACTORIZE_ROWS", n + 1)
    sorted_ = group_moments(Z, list(range(columns)))
    for field in hashed._fields:
        assert np.array_equal(getattr(hashed, field), getattr(sorted_, field)), field
