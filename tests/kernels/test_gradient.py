"""The per-block math against plain NumPy, finite differences, and itself."""

import numpy as np
import pytest

from gd_dask.kernels import gradient as g
from gd_dask.kernels.blocks import fold_block
from gd_dask.kernels.metrics import add_errors, block_errors, error_metrics
from gd_dask.kernels.moments import Standardizer, block_moments, gram_sums, hessian, merge_moments


def _data(rng, n=500, d=3, mean=0.0):
    X = mean + rng.normal(size=(n, d)) * np.array([1.0, 3.0, 0.5])[:d]
    y = X @ np.array([2.0, -1.0, 0.5])[:d] + 4.0 + rng.normal(size=n)
    return X, y


def _split(Z, k):
    return np.array_split(Z, k)


@pytest.mark.parametrize("n_parts", [1, 3, 7])
def test_block_sums_over_any_chunking_equal_full_batch_gradient(rng, n_parts):
    X, y = _data(rng)
    Z = np.column_stack([X, y])
    m, b = np.array([0.3, -0.2, 1.1]), 0.7
    center, scale = X.mean(0), X.std(0)
    total = None
    for part in _split(Z, n_parts):
        s = g.block_sums(part, m, b, center, scale)
        total = s if total is None else g.add_sums(total, s)
    Xs = (X - center) / scale
    err = Xs @ m + b - y
    assert total.n == len(y)
    np.testing.assert_allclose(total.grad / total.n, Xs.T @ err / len(y), rtol=1e-12)
    assert total.err / total.n == pytest.approx(err.mean(), rel=1e-12)
    assert total.loss / total.n == pytest.approx(np.mean(err**2), rel=1e-12)


def test_gradient_matches_finite_differences_of_half_mse(rng):
    X, y = _data(rng, n=200)
    Z = np.column_stack([X, y])
    center, scale = np.zeros(3), np.ones(3)
    m, b = np.array([0.5, 0.1, -0.4]), 1.5

    def half_mse(m, b):
        s = g.block_sums(Z, m, b, center, scale)
        return 0.5 * s.loss / s.n

    s = g.block_sums(Z, m, b, center, scale)
    h = 1e-6
    for j in range(3):
        e = np.zeros(3)
        e[j] = h
        fd = (half_mse(m + e, b) - half_mse(m - e, b)) / (2 * h)
        assert s.grad[j] / s.n == pytest.approx(fd, rel=1e-6)
    fd_b = (half_mse(m, b + h) - half_mse(m, b - h)) / (2 * h)
    assert s.err / s.n == pytest.approx(fd_b, rel=1e-6)


@pytest.mark.parametrize("mean", [0.0, 1e6])
@pytest.mark.parametrize("n_parts", [1, 3, 7])
def test_merged_moments_equal_numpy_mean_and_covariance(rng, mean, n_parts):
    X, y = _data(rng, mean=mean)
    Z = np.column_stack([X, y])
    mom = None
    for part in _split(Z, n_parts):
        b = block_moments(part)
        mom = b if mom is None else merge_moments(mom, b)
    ref_mean = Z.mean(0)
    ref_com = (Z - ref_mean).T @ (Z - ref_mean)
    assert mom.n == len(Z)
    np.testing.assert_allclose(mom.mean, ref_mean, rtol=1e-14)
    np.testing.assert_allclose(mom.comoment, ref_com, rtol=1e-10, atol=1e-8 * np.abs(ref_com).max())


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("fit_intercept", [False, True])
def test_gram_sums_equal_block_sums(rng, standardize, fit_intercept):
    X, y = _data(rng, mean=50.0)
    Z = np.column_stack([X, y])
    mom = block_moments(Z)
    std = Standardizer.from_moments(mom, fit_intercept) if standardize else Standardizer.identity(3)
    m, b = np.array([0.3, -0.2, 1.1]), 0.7
    direct = g.block_sums(Z, m, b, std.center, std.scale)
    gram = gram_sums(mom, m, b, std.center, std.scale)
    np.testing.assert_allclose(gram.grad, direct.grad, rtol=1e-9)
    assert gram.err == pytest.approx(direct.err, rel=1e-9)
    assert gram.loss == pytest.approx(direct.loss, rel=1e-9)


def test_standardizer_maps_coefficients_back_to_original_units(rng):
    X, y = _data(rng, mean=10.0)
    mom = block_moments(np.column_stack([X, y]))
    for fit_intercept in (True, False):
        std = Standardizer.from_moments(mom, fit_intercept)
        m, b = np.array([1.0, 2.0, -3.0]), 0.5
        m0, b0 = std.to_original(m, b)
        np.testing.assert_allclose(((X - std.center) / std.scale) @ m + b, X @ m0 + b0, rtol=1e-12, atol=1e-12)
        m1, b1 = std.to_training(m0, b0)
        np.testing.assert_allclose(m1, m, rtol=1e-12)
        assert b1 == pytest.approx(b, rel=1e-12)


def test_hessian_is_the_gram_matrix_of_the_training_features(rng):
    X, y = _data(rng, mean=3.0)
    mom = block_moments(np.column_stack([X, y]))
    std = Standardizer.from_moments(mom, True)
    A = np.column_stack([(X - std.center) / std.scale, np.ones(len(y))])
    np.testing.assert_allclose(hessian(mom, std, True), A.T @ A / len(y), atol=1e-12)


def test_error_sums_give_scikit_learn_metrics(rng):
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    X, y = _data(rng, mean=1e5)
    Z = np.column_stack([X, y])
    m, b = np.array([1.9, -1.0, 0.4]), 3.0
    total = None
    for part in _split(Z, 7):
        e = block_errors(part, m, b)
        total = e if total is None else add_errors(total, e)
    got = error_metrics(total)
    pred = X @ m + b
    assert got["n"] == len(y)
    assert got["mse"] == pytest.approx(mean_squared_error(y, pred), rel=1e-12)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-12)
    assert got["r2"] == pytest.approx(r2_score(y, pred), rel=1e-9)


def test_a_block_at_a_misaligned_address_gives_the_same_bits():
    """A cached block that moved between workers may arrive at an address that is no
    multiple of 8: NumPy's own loops (not BLAS) then gave other bits for X·m."""
    from gd_dask.kernels import gradient as g

    rng = np.random.default_rng(5)
    block = np.asfortranarray(rng.normal(size=(5000, 4)))
    raw = np.empty(block.nbytes + 8, dtype=np.uint8)
    moved = np.ndarray(block.shape, dtype=np.float64, buffer=raw[4:4 + block.nbytes], order="F")
    moved[:] = block
    assert not moved.flags.aligned
    m = rng.normal(size=3)
    want = fold_block(block, g.block_sums_std, g.add_sums, m, 0.3)
    got = fold_block(moved, g.block_sums_std, g.add_sums, m, 0.3)
    assert got.loss == want.loss and np.array_equal(got.grad, want.grad) and got.err == want.err
