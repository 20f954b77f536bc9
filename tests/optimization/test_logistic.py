"""Logistic regression (model.loss: logistic) against independent references: scikit-learn's
LogisticRegression and roc_auc_score, a plain NumPy gradient-descent loop, finite
differences, the KKT conditions of l1; and the cluster invariants (1, 2, 3 workers, a killed
worker)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import make_config, run_cli, write_parquet
from dask_processes import models_with_and_without_a_kill
from gd_dask.kernels import gradient as g
from gd_dask.kernels.losses import Logistic
from gd_dask.jobs.training import fit

TRUE_M = np.array([1.2, -0.6, 2.0])
TRUE_B = 0.3


def _problem(seed=1, n=6000, offset=0.0, scale=(1.0, 2.0, 0.5)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * scale + offset
    z = (X - offset) @ TRUE_M + TRUE_B
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return X, y


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _sklearn(X, y, C=np.inf, sample_weight=None):
    """scikit-learn's solution in original units, fit on standardized features (the
    unpenalized solution does not depend on the scaling; with l2 it is where ours acts)."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = np.average(X, axis=0, weights=sample_weight), None
    sd = np.sqrt(np.average((X - mu) ** 2, axis=0, weights=sample_weight))
    sk = LogisticRegression(C=C, tol=1e-14, max_iter=100_000).fit((X - mu) / sd, y, sample_weight=sample_weight)
    m = sk.coef_[0] / sd
    return m, sk.intercept_[0] - mu @ m


def _newton(X, y):
    """The unpenalized minimizer by Newton's method, gradients in long double."""
    mu, sd = X.mean(axis=0), X.std(axis=0)
    Z = np.column_stack([(X - mu) / sd, np.ones(len(y))]).astype(np.longdouble)
    theta, yl = np.zeros(Z.shape[1], dtype=np.longdouble), y.astype(np.longdouble)
    for _ in range(30):
        p = 1 / (1 + np.exp(-(Z @ theta)))
        grad = Z.T @ (p - yl) / len(y)
        hess = (Z * (p * (1 - p))[:, None]).T @ Z / len(y)
        theta -= np.linalg.solve(hess.astype(float), grad.astype(float)).astype(np.longdouble)
    m = theta[:-1] / sd
    return m, theta[-1] - mu @ m


@pytest.mark.parametrize("offset", [0.0, 1e3], ids=["centered", "offset-1e3"])
def test_coefficients_match_scikit_learn_and_converged_is_true(client, tmp_path, offset):
    X, y = _problem(offset=offset)
    cfg = make_config(write_parquet(tmp_path / "d", X, y), tmp_path, model={"loss": "logistic"})
    res = fit(cfg, client)
    m_ref, b_ref = _sklearn(X, y)
    assert res.converged and res.convergence["criterion"] == "local_curvature"
    np.testing.assert_allclose(res.m, m_ref, rtol=1e-6)
    assert res.b == pytest.approx(b_ref, rel=1e-6)
    # The certified bound is no smaller than the error against Newton's method in long
    # double (scikit-learn's own lbfgs at tol 1e-14 is off by ~5e-10 here).
    m_x, b_x = _newton(X, y)
    err = max(np.abs(res.m / m_x - 1).max(), abs(res.b / b_x - 1))
    assert err <= res.convergence["bound"] <= cfg.optimizer.tol


@pytest.mark.parametrize("model", [{}, {"l2": 0.05}, {"fit_intercept": False}], ids=["plain", "l2", "no-b"])
def test_newton_steps_reach_the_same_certified_model_in_far_fewer_epochs(client, tmp_path, model):
    """The default (strategy newton): a Newton step per pass from the intercept-only
    model. Stream descent: heavy ball, then damped Newton steps where the certificate's
    Hessian pass finds the bound holding; with optimizer.refine: 0, plain heavy ball. All
    end within tol of Newton's method in long double, Newton's passes a fraction of the
    others', each step gaining digits quadratically."""
    X, y = _problem(seed=4, n=8000, offset=5.0)
    data = write_parquet(tmp_path / "d", X, y)
    newton = fit(make_config(data, tmp_path, model={"loss": "logistic", **model}), client)
    mixed = fit(make_config(data, tmp_path, model={"loss": "logistic", **model},
                            optimizer={"strategy": "stream"}), client)
    plain = fit(make_config(data, tmp_path, model={"loss": "logistic", **model},
                            optimizer={"refine": 0, "strategy": "stream"}), client)
    assert newton.strategy == "newton" and mixed.strategy == "stream"
    assert newton.converged and mixed.converged and plain.converged
    assert newton.epochs_run <= min(8, mixed.epochs_run) and mixed.epochs_run * 2 <= plain.epochs_run
    np.testing.assert_allclose(newton.m, plain.m, rtol=4e-9)
    np.testing.assert_allclose(mixed.m, plain.m, rtol=4e-9)
    grads = [h["grad_norm"] for h in newton.history]
    last = grads[-3:]  # the Newton steps: each gradient near the square of the one before
    assert last[2] < last[1] ** 1.5 and last[1] < last[0], grads
    if not model:
        m_x, b_x = _newton(X, y)
        err = max(np.abs(newton.m / m_x - 1).max(), abs(newton.b / b_x - 1))
        assert err <= newton.convergence["bound"] <= 1e-9


def test_l2_matches_scikit_learn_with_the_matching_C(client, tmp_path):
    X, y = _problem(seed=2)
    l2 = 0.05
    cfg = make_config(write_parquet(tmp_path / "d", X, y), tmp_path, model={"loss": "logistic", "l2": l2})
    res = fit(cfg, client)
    # Ours: mean log-loss + (l2/2)·‖m‖² on standardized features; scikit-learn's:
    # C·Σ log-loss + ½‖w‖². The same objective for C = 1/(l2·n).
    m_ref, b_ref = _sklearn(X, y, C=1 / (l2 * len(y)))
    assert res.converged
    np.testing.assert_allclose(res.m, m_ref, rtol=1e-6)
    assert res.b == pytest.approx(b_ref, rel=1e-6)


def test_sample_weights_match_scikit_learn(client, tmp_path):
    X, y = _problem(seed=3, n=4000)
    w = np.random.default_rng(3).uniform(0.2, 3.0, len(y))
    root = tmp_path / "d"
    data = write_parquet(root, np.column_stack([X, w]), y, names=["x0", "x1", "x2", "w"])
    data["features"], data["weight"] = ["x0", "x1", "x2"], "w"
    res = fit(make_config(data, tmp_path, model={"loss": "logistic"}), client)
    m_ref, b_ref = _sklearn(X, y, sample_weight=w)
    assert res.converged
    np.testing.assert_allclose(res.m, m_ref, rtol=1e-6)
    assert res.b == pytest.approx(b_ref, rel=1e-6)


def test_iterates_equal_a_plain_numpy_loop(client, tmp_path):
    X, y = _problem(seed=4, n=3000)
    lr, epochs = 0.8, 25
    cfg = make_config(write_parquet(tmp_path / "d", X, y, n_files=4), tmp_path,
                      model={"loss": "logistic", "standardize": False},
                      optimizer={"learning_rate": lr, "momentum": 0.0, "epochs": epochs, "tol": 0,
                                 "strategy": "stream"})
    res = fit(cfg, client)
    m, b, losses = np.zeros(3), 0.0, []
    for _ in range(epochs):
        z = X @ m + b
        p = _sigmoid(z)
        losses.append(np.mean(np.logaddexp(0, z) - y * z))
        m, b = m - lr * X.T @ (p - y) / len(y), b - lr * np.mean(p - y)
    assert res.epochs_run == epochs
    np.testing.assert_allclose([h["loss"] for h in res.history], losses, rtol=1e-10)
    np.testing.assert_allclose(res.m, m, rtol=1e-10)
    assert res.b == pytest.approx(b, rel=1e-10)


def test_the_gradient_sums_are_the_derivative_of_the_loss():
    rng = np.random.default_rng(5)
    Z = np.column_stack([rng.normal(size=(500, 2)), (rng.random(500) < 0.4).astype(float)])
    loss, m, b = Logistic(), np.array([0.7, -0.2]), 0.1

    def mean_loss(m, b):
        s = g.block_sums_std(Z, m, b, loss)
        return s.loss / s.n

    s = g.block_sums_std(Z, m, b, loss)
    h = 1e-6
    for j in range(2):
        e = np.eye(2)[j] * h
        fd = (mean_loss(m + e, b) - mean_loss(m - e, b)) / (2 * h)
        assert s.grad[j] / s.n == pytest.approx(fd, rel=1e-7)
    fd_b = (mean_loss(m, b + h) - mean_loss(m, b - h)) / (2 * h)
    assert s.err / s.n == pytest.approx(fd_b, rel=1e-7)
    # ψ and ℓ stay finite where exp would overflow.
    psi, total = loss.terms(np.array([800.0, -800.0]), np.array([0.0, 1.0]), None)
    assert np.allclose(psi, [1.0, -1.0]) and total == pytest.approx(1600.0)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_curvature_sums_are_the_derivative_of_the_gradient_sums(weighted):
    """The Hessian the certificate and the Newton steps use, over several slices of a
    block, against central differences of the gradient sums; R² is the largest ‖[xs, 1]‖²
    of the rows that count."""
    rng = np.random.default_rng(8)
    n = 2 * g.CURVATURE_ROWS + 123
    cols = [rng.normal(size=(n, 2)), (rng.random(n) < 0.4).astype(float)]
    w = rng.random(n) * (rng.random(n) > 0.1)
    Z = np.asfortranarray(np.column_stack(cols + ([w] if weighted else [])))
    loss, theta = Logistic(), np.array([0.7, -0.2, 0.1])
    c = g.block_curvature_std(Z, theta[:2], theta[2], loss, weighted)

    def grad(t):
        s = g.block_sums_std(Z, t[:2], t[2], loss, weighted)
        return np.append(s.grad, s.err)

    h = 1e-5
    fd = np.column_stack([(grad(theta + e) - grad(theta - e)) / (2 * h) for e in np.eye(3) * h])
    np.testing.assert_allclose(c.hess, fd, rtol=1e-7, atol=1e-9 * n)
    rows = Z[:, :2] if not weighted else Z[w > 0, :2]
    assert c.radius2 == pytest.approx((rows ** 2).sum(axis=1).max() + 1.0, rel=1e-15)
    assert c.n == pytest.approx(w.sum() if weighted else n)


def test_l1_satisfies_the_lasso_optimality_conditions(client, tmp_path):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(5000, 4))
    y = (rng.random(5000) < _sigmoid(X[:, :2] @ [1.5, -1.0])).astype(float)  # x2, x3 irrelevant
    l1 = 0.02
    cfg = make_config(write_parquet(tmp_path / "d", X, y), tmp_path,
                      model={"loss": "logistic", "l1": l1, "standardize": False},
                      optimizer={"tol": 1e-12, "epochs": 3000})
    res = fit(cfg, client)
    grad = X.T @ (_sigmoid(X @ res.m + res.b) - y) / len(y)
    zero = res.m == 0
    assert zero[2:].all() and not zero[:2].any()  # exact zeros where lasso puts them
    # l1 stops on the loss change (no certified bound for a non-quadratic loss with l1):
    # a relative change of 1e-12 leaves the gradient mapping near √1e-12.
    assert res.convergence["criterion"] == "loss_change" and res.converged
    np.testing.assert_allclose(grad[~zero], -l1 * np.sign(res.m[~zero]), atol=1e-6)
    assert (np.abs(grad[zero]) <= l1).all()
    assert abs(np.mean(_sigmoid(X @ res.m + res.b) - y)) < 1e-8  # the intercept is not penalized


def _cli_dataset(tmp_path, X, y, **optimizer):
    data = write_parquet(tmp_path / "d", X, y, n_files=4, row_group_rows=500)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "clf", "data": data, "model": {"loss": "logistic"},
                               "optimizer": optimizer, "output": {"dir": str(tmp_path / "out")}}))
    return data, cfg


def test_cli_train_evaluate_predict_report_a_classifier(tmp_path):
    from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, precision_score, recall_score
    from sklearn.metrics import roc_auc_score

    X, y = _problem(seed=7, n=8000)
    data, cfg = _cli_dataset(tmp_path, X, y)
    r = run_cli("train", cfg, "--no-plot")
    assert r.returncode == 0, r.stderr
    assert "final loss (log_loss)" in r.stdout and "local_curvature" in r.stdout
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert model["converged"] and set(model["metrics"]) >= {"log_loss", "roc_auc", "accuracy", "brier"}

    r = run_cli("evaluate", tmp_path / "out" / "model.json", data["path"])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    p = _sigmoid(X @ np.array(model["m"]) + model["b"])
    label = (p >= 0.5).astype(float)
    assert got["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-12)
    assert got["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, label), rel=1e-15)
    assert got["precision"] == pytest.approx(precision_score(y, label), rel=1e-15)
    assert got["recall"] == pytest.approx(recall_score(y, label), rel=1e-15)
    assert abs(got["roc_auc"] - roc_auc_score(y, p)) <= got["roc_auc_error"] < 1e-3

    out = tmp_path / "pred"
    r = run_cli("predict", tmp_path / "out" / "model.json", data["path"], out, "--threshold", "0.7")
    assert r.returncode == 0, r.stderr
    files = sorted(out.rglob("*.parquet"))
    table = pq.ParquetDataset(files).read().to_pandas() if len(files) > 1 else pq.read_table(files[0]).to_pandas()
    np.testing.assert_allclose(table["prediction"], p, rtol=1e-12)
    assert (table["label"].to_numpy() == (p >= 0.7)).all()


def test_a_target_that_is_not_0_or_1_is_one_line_naming_it(tmp_path):
    X, y = _problem(seed=8, n=600)
    y[[5, 77]] = [2.0, -1.0]
    _, cfg = _cli_dataset(tmp_path, X, y)
    r = run_cli("train", cfg, "--no-plot")
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "target 'y'" in line and "2 values" in line and "-1, 2" in line and "0 or 1" in line


def test_threshold_on_a_regression_model_is_a_usage_error(tmp_path):
    X, y = _problem(seed=9, n=300)
    data = write_parquet(tmp_path / "d", X, y)
    cfg = tmp_path / "r.yaml"
    cfg.write_text(json.dumps({"name": "r", "data": data, "output": {"dir": str(tmp_path / "out")}}))
    assert run_cli("train", cfg, "--no-plot").returncode == 0
    r = run_cli("predict", tmp_path / "out" / "model.json", data["path"], tmp_path / "p", "--threshold", "0.5")
    assert r.returncode == 2 and "--threshold" in r.stderr


def test_early_stopping_and_sweep_work_for_logistic(tmp_path):
    X, y = _problem(seed=10, n=4000)
    _, cfg = _cli_dataset(tmp_path, X, y, validation_fraction=0.2)
    r = run_cli("train", cfg, "--no-plot")
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert model["validation"]["rows"] > 0 and "log_loss" in model["validation"]["metrics"]
    r = run_cli("sweep", cfg, "--learning-rates", "0.5,auto", "--set", "optimizer.validation_fraction=0",
                "--set", "optimizer.epochs=60")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def cluster_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("logistic-cluster")
    X, y = _problem(seed=11, n=16000)
    data = write_parquet(root / "d", X, y, n_files=8, row_group_rows=1000)
    cfg = root / "run.yaml"
    cfg.write_text(json.dumps({"name": "clf", "data": data, "model": {"loss": "logistic"},
                               "optimizer": {"learning_rate": 0.5, "epochs": 60, "tol": 0, "cache": "memory"}}))
    return data, cfg, root


def test_one_two_and_three_workers_give_identical_weights(cluster_job, tmp_path):
    from distributed import Client, LocalCluster

    from gd_dask.config import load_config

    _, cfg, _ = cluster_job
    results = []
    for n in (1, 2, 3):
        with LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=":0") as lc, \
                Client(lc, set_as_default=False) as c:
            results.append(fit(load_config(cfg, [f"output.dir={tmp_path / str(n)}"]), c))
    for r in results[1:]:
        assert r.m.tobytes() == results[0].m.tobytes() and r.b == results[0].b
        assert [h["loss"] for h in r.history] == [h["loss"] for h in results[0].history]


def test_a_worker_killed_mid_training_changes_nothing(cluster_job, tmp_path):
    _, cfg, _ = cluster_job
    want, got = models_with_and_without_a_kill(cfg, tmp_path, 10, "--no-plot")
    assert got["m"] == want["m"] and got["b"] == want["b"]


def _add_class_day(root, day: int, corrupt: bool = False):
    from datetime import date, timedelta

    rng = np.random.default_rng(100 + day)
    folder = root / f"date={(date(2026, 11, 1) + timedelta(days=day)).isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    X = rng.normal(size=(1500, 2)) + [1.0, -1.0]
    y = (rng.random(1500) < _sigmoid(X @ [1.5 + 0.05 * day, -1.0] + 0.2)).astype(float)
    if corrupt:
        y = rng.permutation(y)  # labels no longer belong to their rows
    import pyarrow as pa

    pq.write_table(pa.table({"x1": X[:, 0], "x2": X[:, 1], "y": y}), folder / "part-0000.parquet")


@pytest.mark.parametrize("metric", ["log_loss", "roc_auc"])
def test_nightly_refits_of_a_classifier_warm_start_and_reject_shuffled_labels(client, tmp_path, metric):
    """roc_auc: the night's own checks quarantine the shuffled night the night it lands.
    log_loss, with the label checks off: the gate alone rejects the challenger that
    trained on it."""
    from datetime import date, timedelta

    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit
    from gd_dask.artifacts.registry import Registry

    raw = {"name": "churn", "model": {"loss": "logistic"},
           "data": {"path": str(tmp_path / "data"), "features": ["x1", "x2"], "target": "y", "window_days": 3},
           "registry": {"dir": str(tmp_path / "models"), "promote": {"metric": metric, "max_regression": 0.02}}}
    if metric == "log_loss":
        raw["registry"]["validate"] = {"r2_drop": None, "resid_sd_ratio": None}
    cfg = validate_config(raw)
    reg = Registry(cfg.registry.dir, cfg.name)
    night = lambda d: date(2026, 11, 1) + timedelta(days=d)  # noqa: E731
    for d in range(3):
        _add_class_day(tmp_path / "data", d)
    assert refit(cfg, client, night(2)).promoted
    _add_class_day(tmp_path / "data", 3)
    second = refit(cfg, client, night(3))
    assert second.promoted, second.message
    model = reg.current_model()
    assert model["converged"] and model["warm_start"] and metric in model["holdout_metrics"]
    assert reg.verdict(second.version)["metric"] == metric
    _add_class_day(tmp_path / "data", 4, corrupt=True)
    bad = refit(cfg, client, night(4))  # judged on the shuffled night, trained on clean ones
    good = reg.current()
    _add_class_day(tmp_path / "data", 5)
    outcome = refit(cfg, client, night(5))
    if metric == "roc_auc":
        # The night's own linear fit: its labels no longer follow its features (AUC alone
        # could not see it: half the window shuffled barely changes the ranking).
        assert bad.status == "quarantined" and "r2_drop" in {c["check"] for c in bad.verdict["checks"]}, \
            bad.message
        assert outcome.promoted and night(4).isoformat() not in outcome.verdict["train_dates"], outcome.message
        return
    assert not outcome.promoted and "rejected" in outcome.message  # the shuffled night now enters training
    assert reg.current() == good
