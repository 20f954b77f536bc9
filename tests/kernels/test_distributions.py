"""The summary's t and F probabilities (gd_dask.kernels.distributions) against scipy.special,
which the summary used until its import was found to cost 0.3 s of every command."""

import math

import numpy as np
import pytest
from scipy import special

from gd_dask.kernels import distributions as D

DFS = [1, 2, 2.5, 3, 5, 10, 30, 77.5, 100, 199, 200, 201, 1e3, 1e4, 1e5, 1e6, 8e6]
TS = [0, 1e-3, 0.1, 0.5, 1, 1.96, 2.5, 5, 10, 30, 100, 1e3, 1e5, -3, math.inf]


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def _tol(df):
    """What Lentz's continued fraction keeps with half the degrees of freedom as its
    first parameter: 1e-11 up to 1e5, about 1e-10 in the millions (measured
    against 40-digit mpmath, which scipy matches to 1e-15 there)."""
    return 1e-11 if df <= 1e5 else 3e-10


@pytest.mark.parametrize("df", DFS)
def test_two_sided_t_tail_matches_scipy(df):
    for t in TS:
        assert _rel(D.t_two_sided(df, t), 2 * special.stdtr(df, -abs(t))) < _tol(df), (df, t)


@pytest.mark.parametrize("df", DFS)
def test_t_quantile_matches_scipy(df):
    for q in (0.5, 0.6, 0.9, 0.975, 0.995, 0.9999999):
        assert _rel(D.t_quantile(df, q), special.stdtrit(df, q)) < _tol(df), (df, q)


@pytest.mark.parametrize("d1", [1, 2, 5, 10, 100, 4096])
def test_f_upper_tail_matches_scipy(d1):
    for d2 in (1, 3, 10, 100, 1e4, 1e6, 8e6):
        for f in (0, 1e-6, 0.5, 1, 2, 5, 50, 1e3, 1e6, 1e9):
            assert _rel(D.f_upper(d1, d2, f), special.fdtrc(d1, d2, f)) < _tol(d2), (d1, d2, f)


def test_log_beta_keeps_its_digits_for_large_arguments():
    for a, b in [(4e6, 0.5), (4e6, 2048), (150, 120), (1e9, 0.5), (50, 0.5), (100, 100), (5e8, 2)]:
        assert abs(D.log_beta(a, b) - special.betaln(a, b)) < 1e-12 * max(1.0, abs(special.betaln(a, b)))


def test_undefined_inputs_give_nan_not_an_error():
    assert math.isnan(D.t_two_sided(0, 1.0)) and math.isnan(D.t_two_sided(5, math.nan))
    assert math.isnan(D.t_quantile(-1, 0.975)) and math.isnan(D.f_upper(1, 0, 2.0))
    assert D.f_upper(3, 10, 0.0) == 1.0 and D.t_two_sided(4, 0.0) == 1.0
    assert np.isclose(D.t_quantile(1, 0.975), math.tan(math.pi * 0.475))  # Cauchy, in closed form


@pytest.mark.parametrize("df", [1.0, 3.0, 50.0, 1e4, 1e6, 8e6])
def test_many_t_tails_at_once_are_the_scalar_ones(df):
    """The vectorized two-sided tail (a summary's thousands of levels) is the scalar
    function's, to the bit, with its edge cases (t = 0, ±inf, NaN)."""
    from gd_dask.kernels.distributions import t_two_sided, t_two_sided_many

    rng = np.random.default_rng(int(df) % 1000)
    t = np.concatenate([rng.normal(0, 4, 500), [0.0, np.inf, -np.inf, np.nan, 60.0, -1e-9]])
    many = t_two_sided_many(df, t)
    one = np.array([t_two_sided(df, float(v)) for v in t])
    assert np.array_equal(many, one, equal_nan=True)
