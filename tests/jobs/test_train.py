"""Training on a real LocalCluster against independent NumPy references."""

import numpy as np
import pytest

from conftest import make_config, write_parquet
from gd_dask.jobs.training import fit


def numpy_gd(X, y, lr, epochs, standardize, fit_intercept=True):
    """The article's loop in plain NumPy; returns (m, b) in original units and losses."""
    if standardize:
        center = X.mean(0) if fit_intercept else np.zeros(X.shape[1])
        scale = X.std(0) if fit_intercept else np.sqrt((X**2).mean(0))
    else:
        center, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
    Xs = (X - center) / scale
    m, b = np.zeros(X.shape[1]), 0.0
    losses = []
    for _ in range(epochs):
        err = Xs @ m + b - y
        losses.append(np.mean(err**2))
        m, b = m - lr * (Xs.T @ err) / len(y), b - lr * err.mean() * fit_intercept
    return m / scale, b - center @ (m / scale), np.array(losses)


def _problem(rng, n=3000, d=3):
    X = rng.normal(size=(n, d)) * np.array([1.0, 2.0, 0.5, 1.5, 3.0])[:d] + np.array([5.0, -2.0, 1.0, 0.0, 10.0])[:d]
    y = X @ np.array([1.5, -0.7, 2.0, 0.3, -0.1])[:d] + 3.0 + rng.normal(scale=0.5, size=n)
    return X, y


@pytest.mark.parametrize("strategy", ["stream", "gram"])
@pytest.mark.parametrize("standardize", [False, True])
def test_fifty_epochs_agree_with_a_plain_numpy_loop(client, tmp_path, rng, strategy, standardize):
    X, y = _problem(rng)
    data = write_parquet(tmp_path / "d", X, y, n_files=4)
    lr = 0.1 if standardize else 0.01
    cfg = make_config(data, tmp_path, model={"standardize": standardize},
                      optimizer={"learning_rate": lr, "epochs": 50, "tol": 0, "strategy": strategy})
    res = fit(cfg, client)
    m_ref, b_ref, losses = numpy_gd(X, y, lr, 50, standardize)
    assert res.epochs_run == 50 and res.strategy == strategy
    np.testing.assert_allclose(res.m, m_ref, rtol=1e-10)
    assert res.b == pytest.approx(b_ref, rel=1e-10)
    np.testing.assert_allclose([h["loss"] for h in res.history], losses, rtol=1e-10)


@pytest.mark.parametrize("strategy", ["stream", "gram"])
@pytest.mark.parametrize("d", [1, 5])
def test_gradient_descent_reaches_the_least_squares_solution(client, tmp_path, rng, d, strategy):
    X, y = _problem(rng, d=d)
    data = write_parquet(tmp_path / "d", X, y, n_files=3)
    cfg = make_config(data, tmp_path, optimizer={"strategy": strategy})
    res = fit(cfg, client)
    coef, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)
    np.testing.assert_allclose(res.m, coef[:d], rtol=1e-9)
    assert res.b == pytest.approx(coef[d], rel=1e-9)
    assert res.converged and res.convergence["criterion"] == "coefficients"


def test_hitting_the_epoch_bound_warns_and_reports_not_converged(client, tmp_path, rng, caplog):
    X, y = _problem(rng)
    data = write_parquet(tmp_path / "d", X, y, n_files=2)
    cfg = make_config(data, tmp_path, optimizer={"learning_rate": 0.001, "epochs": 5})
    with caplog.at_level("WARNING", logger="gd_dask"):
        res = fit(cfg, client)
    assert not res.converged and res.epochs_run == 5
    assert "not converged after 5 epochs" in caplog.text


def test_without_intercept_b_stays_zero(client, tmp_path, rng):
    X, _ = _problem(rng, d=2)
    y = X @ np.array([1.5, -0.7]) + rng.normal(scale=0.1, size=len(X))
    data = write_parquet(tmp_path / "d", X, y, n_files=2)
    cfg = make_config(data, tmp_path, model={"fit_intercept": False},
                      optimizer={"momentum": "auto"})
    res = fit(cfg, client)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    assert res.b == 0.0
    np.testing.assert_allclose(res.m, coef, rtol=1e-6)


def test_stream_and_gram_give_the_same_iterates_on_large_mean_data(client, tmp_path, rng):
    n = 2000
    X = 1e6 + rng.normal(size=(n, 2))
    y = X @ np.array([2.0, -1.0]) + 5.0 + rng.normal(scale=0.1, size=n)
    data = write_parquet(tmp_path / "d", X, y, n_files=5)
    out = {}
    for strategy in ("stream", "gram"):
        cfg = make_config(data, tmp_path, optimizer={"learning_rate": 0.5, "epochs": 30, "tol": 0,
                                                     "strategy": strategy})
        out[strategy] = fit(cfg, client)
    # Iterates live in the standardized space; mapping b back to original units
    # subtracts terms of size 1e6·m, which no strategy can make better conditioned.
    np.testing.assert_allclose(out["stream"].params, out["gram"].params, rtol=1e-9)
    # Means near 1e6 are known to ulp(1e6) ≈ 1e-10, so the two routes' iterates differ
    # by ~1e-11; mid-descent the loss amplifies that by ≈ 2·|gradient|/loss.
    np.testing.assert_allclose([h["loss"] for h in out["stream"].history],
                               [h["loss"] for h in out["gram"].history], rtol=1e-8)


def test_a_rate_that_diverges_stops_naming_the_epoch_and_the_stable_rate(client, tmp_path, rng):
    from gd_dask.errors import TrainingError

    X, y = _problem(rng)
    data = write_parquet(tmp_path / "d", X, y, n_files=2)
    cfg = make_config(data, tmp_path, optimizer={"learning_rate": 5.0, "epochs": 500})
    with pytest.raises(TrainingError, match=r"learning rate 5 diverged at epoch \d+ .*largest stable rate for this data is"):
        fit(cfg, client)


@pytest.mark.parametrize("scale", [1e-2, 1.0, 1e2])
def test_learning_rate_auto_converges_whatever_the_scale_of_the_data(client, tmp_path, rng, scale):
    """Unstandardized features scaled by 1e-2..1e2: the best rate differs by 1e4×."""
    X, y = _problem(rng, d=2)
    X = (X - X.mean(0)) * scale  # same conditioning at every scale; the best rate moves by scale⁻²
    data = write_parquet(tmp_path / "d", X, y, n_files=2)
    cfg = make_config(data, tmp_path, model={"standardize": False})
    res = fit(cfg, client)
    coef, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)
    np.testing.assert_allclose(res.m, coef[:2], rtol=1e-9)
    assert res.converged and res.convergence["bound"] <= 1e-9


@pytest.mark.parametrize("strategy", ["stream", "gram"])
def test_metrics_from_moments_equal_the_full_pass_but_mae(client, tmp_path, rng, strategy):
    X, y = _problem(rng, n=5000)
    X[:, 0] += 1e6  # large mean, small spread: the moments must not lose digits
    data = write_parquet(tmp_path / "d", X, y, n_files=3)
    opt = {"epochs": 300, "strategy": strategy}
    full = fit(make_config(data, tmp_path, optimizer=opt, output={"metrics": "full"}), client)
    fast = fit(make_config(data, tmp_path, optimizer=opt, output={"metrics": "moments"}), client)
    assert fast.metrics["mae"] is None and full.metrics["mae"] > 0
    for k in ("mse", "rmse", "r2"):
        assert fast.metrics[k] == pytest.approx(full.metrics[k], rel=1e-9), k
    assert fast.metrics["n"] == full.metrics["n"] == 5000


@pytest.mark.parametrize("strategy", ["stream", "gram"])
def test_decimal_bool_and_int_columns_train_like_their_float_values(client, tmp_path, rng, strategy):
    """Arrow casts every numeric type to float64, also past the first slice of a chunk
    (where slices are copied with the moments' shift subtracted); null bools are dropped."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 20_000
    x = np.round(rng.normal(size=n), 4)
    flag = rng.random(n) > 0.5
    k = np.arange(n) % 7
    y = 2.0 * x - 0.5 * flag + 0.3 * k + 1.0 + rng.normal(scale=0.1, size=n)
    null = np.arange(n) % 50 == 0
    (tmp_path / "d").mkdir()
    for i, part in enumerate(np.array_split(np.arange(n), 2)):
        pq.write_table(pa.table({
            "d": pa.array([decimal.Decimal(f"{v:.4f}") for v in x[part]], type=pa.decimal128(10, 4)),
            "b": pa.array([None if null[j] else bool(flag[j]) for j in part], type=pa.bool_()),
            "k": pa.array(k[part], type=pa.int32()), "y": y[part]}),
            tmp_path / "d" / f"p{i}.parquet", row_group_size=3000)
    data = {"path": str(tmp_path / "d"), "features": ["d", "b", "k"], "target": "y", "missing": "drop"}
    res = fit(make_config(data, tmp_path, optimizer={"strategy": strategy, }), client)
    keep = ~null
    A = np.column_stack([x, flag, k, np.ones(n)])[keep]
    coef, *_ = np.linalg.lstsq(A, y[keep], rcond=None)
    np.testing.assert_allclose(res.m, coef[:3], rtol=1e-7)
    assert res.b == pytest.approx(coef[3], rel=1e-7)
    assert res.rows_dropped == null.sum() and res.metrics["n"] == keep.sum()
