"""Optimizer breadth: schedules, ridge, lasso — against closed forms and scikit-learn."""

import numpy as np
import pytest

from conftest import make_config, write_parquet
from gd_dask.config import parse_config
from gd_dask.errors import ConfigError
from gd_dask.optimization.rates import schedule, soft_threshold
from gd_dask.jobs.training import fit


def test_schedules_are_pure_functions_of_the_step():
    assert [schedule("constant", 0.5)(t) for t in (1, 10, 1000)] == [0.5, 0.5, 0.5]
    inv = schedule("invscaling", 0.8, power_t=0.25)
    assert inv(1) == 0.8 and inv(16) == pytest.approx(0.4)
    step = schedule("step", 1.0, step_size=100, gamma=0.5)
    assert step(1) == step(100) == 1.0 and step(101) == 0.5 and step(201) == 0.25


def test_soft_threshold_shrinks_and_zeroes():
    np.testing.assert_array_equal(soft_threshold(np.array([-3.0, -0.5, 0.0, 0.2, 2.0]), 1.0),
                                  [-2.0, 0.0, 0.0, 0.0, 1.0])


@pytest.fixture
def problem(tmp_path, rng):
    X = rng.normal(size=(2000, 4)) * [1.0, 2.0, 0.5, 1.5] + [1.0, -2.0, 0.5, 0.0]
    y = X @ [1.5, -0.7, 0.0, 0.3] + 2.0 + rng.normal(size=2000)
    return X, y, write_parquet(tmp_path / "d", X, y, n_files=3)


@pytest.mark.parametrize("strategy", ["gram", "stream"])
def test_ridge_matches_the_closed_form(client, tmp_path, problem, strategy):
    X, y, data = problem
    lam, n = 0.3, len(y)
    cfg = make_config(data, tmp_path, model={"l2": lam, "standardize": False, "fit_intercept": False},
                      optimizer={"strategy": strategy})
    res = fit(cfg, client)
    closed = np.linalg.solve(X.T @ X + n * lam * np.eye(4), X.T @ y)  # (XᵀX + λI)⁻¹Xᵀy, λ scaled by n
    np.testing.assert_allclose(res.m, closed, rtol=1e-8)
    assert res.b == 0.0


def test_ridge_penalizes_standardized_coefficients_never_the_intercept(client, tmp_path, problem):
    X, y, data = problem
    lam, n = 0.5, len(y)
    res = fit(make_config(data, tmp_path, model={"l2": lam}, optimizer={}), client)
    mu, sd = X.mean(0), X.std(0)
    Xs = (X - mu) / sd
    ms = np.linalg.solve(Xs.T @ Xs / n + lam * np.eye(4), Xs.T @ (y - y.mean()) / n)
    np.testing.assert_allclose(res.m, ms / sd, rtol=1e-8)
    assert res.b == pytest.approx(y.mean() - mu @ (ms / sd), rel=1e-8)


def test_lasso_matches_scikit_learn(client, tmp_path, problem):
    from sklearn.linear_model import Lasso

    X, y, data = problem
    alpha = 0.2
    res = fit(make_config(data, tmp_path, model={"l1": alpha, "standardize": False},
                          optimizer={}), client)
    ref = Lasso(alpha=alpha, tol=1e-14, max_iter=100000).fit(X, y)  # (1/2n)‖y − Xw − b‖² + α‖w‖₁
    np.testing.assert_allclose(res.m, ref.coef_, atol=1e-7)
    assert res.b == pytest.approx(ref.intercept_, abs=1e-7)
    assert res.m[2] == 0.0  # the irrelevant feature is exactly zero, as with coordinate descent
    assert res.momentum == 0.0  # momentum auto means plain proximal steps under l1


@pytest.mark.parametrize("name,extra", [("invscaling", {"power_t": 0.1}), ("step", {"step_size": 5, "gamma": 0.9})])
def test_decaying_schedules_still_reach_the_least_squares_solution(client, tmp_path, problem, name, extra):
    X, y, data = problem
    res = fit(make_config(data, tmp_path, optimizer={"schedule": name, "epochs": 4000,
                                                     "momentum": 0.0, **extra}), client)
    coef, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)
    np.testing.assert_allclose(res.m, coef[:4], rtol=1e-6)
    lrs = [h["learning_rate"] for h in res.history]
    assert lrs[0] > lrs[-1]  # the schedule is applied and recorded per epoch


def test_lasso_with_explicit_momentum_is_a_config_error():
    text = "name: n\ndata: {path: p, features: [a], target: y}\nmodel: {l1: 0.1}\noptimizer: {momentum: 0.5}"
    with pytest.raises(ConfigError, match="model.l1 takes proximal steps without momentum"):
        parse_config(text)


def test_huber_matches_a_direct_minimization_of_the_same_objective(client, tmp_path, rng):
    from scipy.optimize import minimize

    X = rng.normal(size=(1500, 2)) * [1.0, 3.0]
    y = X @ [2.0, -0.5] + 1.0 + rng.normal(scale=0.5, size=1500)
    y[rng.random(1500) < 0.05] += 40.0  # outliers that squared loss would chase
    data = write_parquet(tmp_path / "d", X, y, n_files=3)
    delta = 1.0
    # Huber has no certified bound: its criterion is the relative loss change, so a
    # tight tol is what makes the coefficients tight.
    res = fit(make_config(data, tmp_path, model={"loss": "huber", "huber_delta": delta, "standardize": False},
                          optimizer={"epochs": 3000, "tol": 1e-20}), client)
    assert res.convergence["criterion"] == "loss_change" and res.convergence["bound"] is None
    assert res.strategy == "stream"

    def objective(theta):
        r = X @ theta[:2] + theta[2] - y
        a = np.abs(r)
        rho = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
        psi = np.clip(r, -delta, delta)
        return rho.mean(), np.append(X.T @ psi, psi.sum()) / len(y)

    ref = minimize(objective, np.zeros(3), jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 10000})
    np.testing.assert_allclose(res.m, ref.x[:2], rtol=1e-6)
    assert res.b == pytest.approx(ref.x[2], rel=1e-6)
    lsq, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)
    assert abs(res.b - 1.0) < abs(lsq[2] - 1.0)  # robust: the outliers pull the intercept less


def test_huber_with_gram_is_a_config_error():
    text = "name: n\ndata: {path: p, features: [a], target: y}\nmodel: {loss: huber}\noptimizer: {strategy: gram}"
    with pytest.raises(ConfigError, match="huber needs optimizer.strategy stream"):
        parse_config(text)


def test_minibatch_gets_near_least_squares_and_is_reproducible_across_workers(tmp_path, problem):
    from distributed import Client, LocalCluster

    X, y, data = problem
    cfg = make_config(data, tmp_path, optimizer={"method": "minibatch", "batch_size": 200, "epochs": 20,
                                                 "average": True, "seed": 7})
    results = []
    for n in (1, 3):
        with LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=":0") as lc, \
                Client(lc, set_as_default=False) as c:
            results.append(fit(cfg, c))
    a, b = results
    assert list(a.m) == list(b.m) and a.b == b.b  # the steps do not depend on the workers
    coef, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)
    np.testing.assert_allclose(a.m, coef[:4], atol=0.05)
    assert a.strategy == "stream" and a.epochs_run == 20


def test_minibatch_needs_a_batch_size():
    with pytest.raises(ConfigError, match="batch_size is required"):
        parse_config("name: n\ndata: {path: p, features: [a], target: y}\noptimizer: {method: minibatch}")


def _weighted_and_repeated(tmp_path, rng, n=400, outliers=True):
    """The same rows twice: with an integer weight column under w/, and repeated that
    many times under r/ (weight 0 drops a row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = rng.normal(size=(n, 2)) * [1.0, 2.0] + [3.0, -1.0]
    y = X @ [1.5, -0.7] + 2.0 + rng.normal(size=n)
    if outliers:  # a few, for Huber's linear zone
        y[rng.random(n) < 0.05] += 15.0
    w = rng.integers(0, 4, size=n).astype(float)
    (tmp_path / "w").mkdir()
    (tmp_path / "r").mkdir()
    for i, part in enumerate(np.array_split(np.arange(n), 3)):
        pq.write_table(pa.table({"x0": X[part, 0], "x1": X[part, 1], "y": y[part], "w": w[part]}),
                       tmp_path / "w" / f"p{i}.parquet")
        rep = np.repeat(part, w[part].astype(int))
        pq.write_table(pa.table({"x0": X[rep, 0], "x1": X[rep, 1], "y": y[rep]}), tmp_path / "r" / f"p{i}.parquet")
    weighted = {"path": str(tmp_path / "w"), "features": ["x0", "x1"], "target": "y", "weight": "w"}
    repeated = {"path": str(tmp_path / "r"), "features": ["x0", "x1"], "target": "y"}
    return X, y, w, weighted, repeated


@pytest.mark.parametrize("strategy,loss", [("gram", "squared"), ("stream", "squared"), ("stream", "huber")])
def test_sample_weights_equal_row_repetition(client, tmp_path, rng, strategy, loss):
    _, _, _, weighted, repeated = _weighted_and_repeated(tmp_path, rng)
    opt = {"strategy": strategy}
    model = {"loss": loss, "huber_delta": 1.0}
    full = {"metrics": "full"}  # mae too
    a = fit(make_config(weighted, tmp_path, optimizer=opt, model=model, output=full), client)
    b = fit(make_config(repeated, tmp_path, optimizer=opt, model=model, output=full), client)
    np.testing.assert_allclose(a.m, b.m, rtol=1e-10)
    assert a.b == pytest.approx(b.b, rel=1e-10)
    for k in ("mse", "mae", "r2", "n"):
        assert a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-10)
    if loss == "huber":  # and the weights matter: an unweighted Huber fit lands elsewhere
        plain = fit(make_config({**weighted, "weight": None}, tmp_path, optimizer=opt, model=model), client)
        assert np.abs(plain.m - a.m).max() > 1e-3


def test_weighted_minibatch_reaches_weighted_least_squares_reproducibly(client, tmp_path, rng):
    X, y, w, weighted, _ = _weighted_and_repeated(tmp_path, rng, n=3000, outliers=False)
    cfg = make_config(weighted, tmp_path, optimizer={
        "method": "minibatch", "batch_size": 300, "epochs": 20, "seed": 3})
    a, b = fit(cfg, client), fit(cfg, client)
    assert a.m.tobytes() == b.m.tobytes() and a.b == b.b
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]) * sw[:, None], y * sw, rcond=None)
    np.testing.assert_allclose(a.m, coef[:2], atol=0.05)
    # Parameter mixing of 3 chunks of 4 steps an epoch leaves the slopes within ~2 standard
    # errors; the weighted loss is what it gets right.
    def wmse(m, b):
        return float(w @ (X @ m + b - y) ** 2 / w.sum())

    assert wmse(a.m, a.b) <= 1.01 * wmse(coef[:2], coef[2])
