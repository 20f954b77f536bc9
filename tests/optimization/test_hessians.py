"""The Hessian with a diagonal block (a high-cardinality categorical column under
Newton): every operation equals the dense matrix's, and λmin's bound is a lower bound."""

import numpy as np
import pytest

from gd_dask.optimization.hessians import BlockHessian


def _hessian(rng, rows=600, dense=12, levels=30):
    """A logistic-like Hessian XᵀWX/n over [dense columns, one column's levels (a band
    in the middle), more dense columns], the band's block diagonal."""
    k = dense + levels + 3
    band = slice(dense, dense + levels)
    X = rng.normal(size=(rows, k))
    X[:, band] = 0.0
    X[np.arange(rows), dense + rng.integers(0, levels, rows)] = 1.0
    w = rng.uniform(0.05, 0.25, rows)
    H = (X * w[:, None]).T @ X
    H = (H + H.T) / 2
    rest = np.r_[0:dense, dense + levels:k]
    idx = np.arange(band.start, band.stop)
    return H, BlockHessian(H[np.ix_(rest, rest)], H[np.ix_(rest, idx)], np.diag(H)[idx], band, k)


def test_the_block_operations_equal_the_dense_matrix(rng):
    H, bh = _hessian(rng)
    assert np.array_equal(bh.dense(), H)
    v = rng.normal(size=H.shape[0])
    np.testing.assert_allclose(bh.solve(v), np.linalg.solve(H, v), rtol=1e-9)
    inv = np.linalg.inv(H)
    np.testing.assert_allclose(bh.inverse_diagonal(), np.diag(inv), rtol=1e-9)
    assert bh.quad(v) == pytest.approx(v @ inv @ v, rel=1e-9)
    # Normalized as Newton does: /n, l2 on every parameter but the last (the intercept).
    norm = bh.normalized(600.0, 0.1, H.shape[0] - 1)
    expect = H / 600.0 + 0.1 * np.diag(np.r_[np.ones(H.shape[0] - 1), 0.0])
    np.testing.assert_allclose(norm.dense(), expect, rtol=1e-15, atol=1e-15)


def test_the_extreme_eigenvalue_bounds_hold(rng):
    for _ in range(5):
        H, bh = _hessian(rng, levels=int(rng.integers(5, 60)))
        ev = np.linalg.eigvalsh(H)
        lo, hi = bh.extremes()
        assert 0 < lo <= ev[0] <= lo * (1 + 1e-6) and hi >= ev[-1]
    # Not positive definite (a level no row has): 0, so no certificate is claimed.
    H, bh = _hessian(rng)
    bh.D[3] = 0.0
    assert bh.extremes()[0] == 0.0


def test_the_absolute_inverse_bound_holds(rng):
    H, bh = _hessian(rng)
    e = rng.uniform(0, 1, H.shape[0])
    exact = np.abs(np.linalg.inv(H)) @ e
    bound = bh.abs_inverse_times(e)
    assert np.all(bound >= exact * (1 - 1e-9))
    band = np.arange(bh.band.start, bh.band.stop)
    np.testing.assert_allclose(bound[bh.rest], exact[bh.rest], rtol=1e-9)  # exact outside the band
    assert np.all(bound[band] <= 10 * exact[band])


def test_the_folded_rounding_bound_holds_and_stays_with_a_levels_own_rows(rng):
    """``FoldedHessian``: for any rounding of the rows' ψ within their bounds, |H⁻¹·δg|
    and the intercept's |u_bᵀH⁻¹·δg| are within the folded bounds, entry by entry; and on
    levels of 20 rows (a reference of 20 too) those bounds are far below |H⁻¹|·e, where the
    intercept's Σψ carries every row's rounding into each level."""
    from gd_dask.optimization.hessians import DenseHessian, FoldedHessian

    rows, d, levels, ref = 1200, 2, 60, 5
    level = np.repeat(np.arange(levels), rows // levels)
    x = rng.normal(size=(rows, d)) + 0.3 * rng.normal(size=levels)[level][:, None]
    nonref = [lv for lv in range(levels) if lv != ref]
    onehot = (level[:, None] == np.array(nonref)[None, :]).astype(float)
    A = np.column_stack([x, onehot, np.ones(rows)])  # θ: [numeric, non-reference levels, intercept]
    h = rng.uniform(0.05, 0.25, rows)
    H = (A * h[:, None]).T @ A
    k = H.shape[0]
    eps = rng.uniform(0.5, 1.0, rows) * 1e-12  # each row's |δψ| bound
    e = np.abs(A).T @ eps  # what each gradient coordinate may be off by
    # Hc: [numeric, every level, the reference too], no intercept.
    C = np.column_stack([x, (level[:, None] == np.arange(levels)[None, :]).astype(float)])
    Hc = (C * h[:, None]).T @ C
    cells = BlockHessian(Hc[:d, :d], Hc[:d, d:], np.diag(Hc)[d:], slice(d, d + levels), d + levels)
    share = eps[level == ref].sum() / eps.sum()
    folded = FoldedHessian(DenseHessian(H), cells, d + np.arange(levels - 1), ref, np.arange(d), share,
                           np.zeros(k), 1e-16)
    bound = folded.abs_inverse_times(e)
    u_b = np.zeros(k)
    u_b[-1], u_b[:d] = 1.0, rng.normal(size=d)
    row_bound = folded.abs_inverse_row(u_b, e)
    # The worst rounding for each coefficient: every row's δψ at its bound, with the sign
    # of that row's entry in H⁻¹·Aᵀ.
    carry = np.linalg.inv(H) @ A.T
    worst = np.abs(carry) @ eps
    assert np.all(worst <= bound)
    assert np.abs(u_b @ carry) @ eps <= row_bound
    assert np.all(bound[d:-1] <= 3 * worst[d:-1]), np.max(bound / worst)  # a level's: nearly exact
    plain = DenseHessian(H).abs_inverse_times(e)
    assert np.all(bound[d:-1] < plain[d:-1] / 10), np.max(bound[d:-1] / plain[d:-1])
    # With l2 the folded coordinates would couple every level to the reference: the plain one.
    assert isinstance(folded.normalized(rows, 0.1, k - 1), DenseHessian)
