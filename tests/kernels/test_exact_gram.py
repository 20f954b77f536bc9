"""The refinement pass's Gram matrix against exact rational arithmetic: within its own
error bound, and the bound far below float64's rounding (else refinement gains nothing)."""

from fractions import Fraction
from functools import reduce

import numpy as np
import pytest

from gd_dask.kernels.exact_gram import add_exact_gram, exact_gram


def _hostile(n, seed):
    """Columns as refinement meets them: means 1e6 × their spread, a target ≈ 1e12 that
    float64 products cancel, a column of 1e-8, one of both signs over 30 binades, zeros."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.integers(-1000, 1000, n) + 1e6 + rng.random(n),
                         rng.normal(0, 1e-8, n),
                         rng.normal(0, 1, n) * 2.0 ** rng.integers(-15, 15, n),
                         np.zeros(n)])
    y = X[:, 0] * 1e6 + rng.normal(0, 1, n) + 1e12
    return np.column_stack([X, y])


def _exact(Z, shift):
    Z1 = [[Fraction(v) - Fraction(c) for v, c in zip(row, shift)] + [Fraction(1)] for row in Z.tolist()]
    K = len(Z1[0])
    G = [[Fraction(0)] * K for _ in range(K)]
    for row in Z1:
        for i in range(K):
            ri = row[i]
            for j in range(i, K):
                G[i][j] += ri * row[j]
    for i in range(K):
        for j in range(i):
            G[i][j] = G[j][i]
    return G


def _check(g, G, tight=1e-22):
    K = len(G)
    for i in range(K):
        for j in range(K):
            got = Fraction(g.hi[i, j]) + Fraction(g.lo[i, j])
            off = abs(float(got - G[i][j]))
            assert off <= g.err[i, j], (i, j, off, g.err[i, j])
            assert g.err[i, j] <= tight * g.mag[i, j]
            assert abs(float(G[i][j])) <= g.mag[i, j]


def _shift(Z, centered):
    """The column means rounded to float64 (as the moments give them), or none."""
    return Z[: min(len(Z), 64)].mean(axis=0) if centered else np.zeros(Z.shape[1])


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("n", [1, 300, 8192])
def test_a_slice_is_within_its_bound(n, centered):
    """8,192 rows is where a product's pieces just fit 53 bits: the exact products must
    be exact there, or the bound (about 2^-100 of the magnitudes) fails."""
    Z = _hostile(n, n)
    shift = _shift(Z, centered)
    g = exact_gram(Z, shift)
    assert g.exact
    _check(g, _exact(Z, shift))
    # float64's own Gram matrix is off by far more on this data (what refinement needs).
    Z1 = np.column_stack([Z - shift, np.ones(n)])
    if n > 1:
        float64_off = (np.abs(Z1.T @ Z1 - g.hi - g.lo) / g.mag).max()
        assert float64_off > 1e4 * (g.err / g.mag).max()


def test_merged_slices_are_within_the_bound():
    Z = _hostile(2000, 3)
    shift = _shift(Z, True)
    parts = [exact_gram(Z[i:i + 300], shift) for i in range(0, 2000, 300)]
    _check(reduce(add_exact_gram, parts), _exact(Z, shift))


@pytest.mark.parametrize("centered", [True, False])
def test_the_gradient_at_a_point_is_within_its_bound(centered):
    """Σ r·(x − c) and Σ r at a point where float64 residuals lose every digit."""
    Z = _hostile(500, 5)
    d = Z.shape[1] - 1
    shift = _shift(Z, centered)
    g = add_exact_gram(exact_gram(Z[:200], shift), exact_gram(Z[200:], shift))
    m = np.array([1e6 + 1e-7, 3.0, -2.5, 0.0])
    m_lo = np.array([1e-12, 0.0, 1e-17, 0.0])
    b, b_lo = 1e12 + 0.5, 1e-6
    p = g.point_gradient(m, m_lo, b, b_lo)
    F = Fraction
    r = [sum(F(x) * (F(mh) + F(ml)) for x, mh, ml in zip(row[:d], m, m_lo)) + F(b) + F(b_lo) - F(row[d])
         for row in Z.tolist()]
    for j in range(d):
        exact = sum((F(row[j]) - F(shift[j])) * ri for row, ri in zip(Z.tolist(), r))
        got = F(p.gx_hi[j]) + F(p.gx_lo[j])
        assert abs(float(got - exact)) <= p.err_x[j]
    assert abs(float(F(p.g1_hi) + F(p.g1_lo) - sum(r))) <= p.err_1
    # Tight enough to matter: terms ≈ 1e12 × 1e6 per row, which float64 gets to about
    # 1e11, the size of Σ r·x itself.
    assert p.err_x[0] < 1e-12 * abs(p.gx_hi[0]) and p.n == 500 and p.passes == 0
    assert abs(p.sq - float(sum(ri * ri for ri in r))) <= 1e-6 * float(sum(ri * ri for ri in r))


@pytest.mark.parametrize("column", [1e-200, 1e200])
def test_magnitudes_beyond_the_split_are_marked_inexact(column):
    """The caller falls back to the residual pass rather than trust pieces that would
    underflow or overflow."""
    Z = _hostile(50, 9)
    Z[:, 1] = column
    g = add_exact_gram(exact_gram(Z[:25], np.zeros(5)), exact_gram(Z[25:], np.zeros(5)))
    assert not g.exact


def test_weights_are_refused():
    with pytest.raises(ValueError):
        exact_gram(np.ones((3, 3)), np.zeros(3), weighted=True)
