"""From Python: the scikit-learn estimators (scikit-learn's own checks, Pipeline,
GridSearchCV, the CLI's bits) and ``gd_dask.train``."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, write_parquet

import gd_dask
from gd_dask import LinearRegression, LogisticRegression
from gd_dask.errors import ConfigError, DataError

#: Checks LinearRegression fails on purpose, and why (scikit-learn's expected failures):
#: none. (n < d + 1 was refused until issue 29 D12; it is fitted as scikit-learn fits it.)
EXPECTED_FAILED_CHECKS: dict = {}


@pytest.fixture
def current(client):
    with client.as_current():
        yield client


def _data(seed=0, n=600):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 10.0]
    return X, X @ [1.5, -0.7, 2.0] + 3.0 + rng.normal(size=n)


def test_linear_regression_passes_scikit_learns_checks(current):
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(LinearRegression(), expected_failed_checks=EXPECTED_FAILED_CHECKS, on_fail=None)
    failed = [(r["check_name"], str(r["exception"]).splitlines()[0]) for r in results if r["status"] == "failed"]
    assert not failed
    assert sum(r["status"] == "passed" for r in results) >= 50


#: PoissonRegressor's (and the other log-link regressors') expected failures, and why.
GLM_EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data":
        "its rows are fitted exactly by many coefficients: no unique unpenalized maximum of the likelihood "
        "(scikit-learn's PoissonRegressor defaults to alpha=1; ours to l2=0), so weighted and repeated rows "
        "stall at different points, each saved with converged: false"}


def test_poisson_regressor_passes_scikit_learns_checks_and_matches_its_solution(current):
    from sklearn.linear_model import PoissonRegressor as Reference
    from sklearn.utils.estimator_checks import check_estimator

    from gd_dask import GammaRegressor, PoissonRegressor, TweedieRegressor

    results = check_estimator(PoissonRegressor(), expected_failed_checks=GLM_EXPECTED_FAILED_CHECKS, on_fail=None)
    failed = [(r["check_name"], str(r["exception"]).splitlines()[0]) for r in results if r["status"] == "failed"]
    assert not failed
    assert sum(r["status"] == "passed" for r in results) >= 50
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 3))
    mu = np.exp(X @ [0.3, -0.2, 0.1] + 0.2)
    for ours, y, power in ((PoissonRegressor(), rng.poisson(mu), 1), (GammaRegressor(), rng.gamma(2.0, mu / 2), 2),
                           (TweedieRegressor(tweedie_power=1.5), rng.gamma(2.0, mu / 2) * (rng.random(3000) < 0.6),
                            1.5)):
        from sklearn.linear_model import TweedieRegressor as Tweedie

        ref = Tweedie(power=power, alpha=0, link="log", tol=1e-12, max_iter=10_000).fit(X, y)
        est = ours.fit(X, y)
        assert est.converged_ and est.n_iter_ <= 8
        np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-7)
        assert est.intercept_ == pytest.approx(ref.intercept_, rel=1e-7)
        np.testing.assert_allclose(est.predict(X), ref.predict(X), rtol=1e-7)
        assert est.score(X, y) == pytest.approx(ref.score(X, y), rel=1e-7)  # D², as scikit-learn's
        assert "P>|z|" in str(est.summary())
    w = rng.uniform(0.2, 3.0, 3000)  # sample weights, as scikit-learn's
    y = rng.poisson(mu)
    ref = Reference(alpha=0, tol=1e-12, max_iter=10_000).fit(X, y, sample_weight=w)
    est = PoissonRegressor().fit(X, y, sample_weight=w)
    assert est.converged_
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-7)
    assert est.intercept_ == pytest.approx(ref.intercept_, rel=1e-7)
    assert est.score(X, y, sample_weight=w) == pytest.approx(ref.score(X, y, sample_weight=w), rel=1e-7)
    others = {"loss", "huber_delta", "tweedie_power"}  # its own loss's options only
    assert PoissonRegressor().get_params().keys() == set(LinearRegression().get_params()) - others
    assert TweedieRegressor().get_params()["tweedie_power"] == 1.5


def test_parameters_are_the_configs_keys_and_defaults():
    from gd_dask.config import ModelConfig, OptimizerConfig

    params = LinearRegression().get_params()
    assert set(params) == set(ModelConfig.model_fields) | set(OptimizerConfig.model_fields)
    assert params["tol"] == OptimizerConfig().tol and params["learning_rate"] == "auto"
    assert "loss" not in LogisticRegression().get_params()


def test_bit_identical_to_the_cli_on_the_same_rows(current, tmp_path):
    X, y = _data()
    data = write_parquet(tmp_path / "d", X, y, n_files=1)  # one file, one row group: the estimator's layout
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "cli", "data": data, "output": {"dir": str(tmp_path / "out")}}))
    assert run_cli("train", cfg, "--no-plot").returncode == 0
    doc = json.loads((tmp_path / "out" / "model.json").read_text())
    est = LinearRegression().fit(X, y)
    assert est.coef_.tolist() == doc["m"] and est.intercept_ == doc["b"]
    assert est.converged_ and est.n_iter_ == doc["epochs_run"]


def test_columns_of_read_parquet_train_on_the_files_as_the_cli_does(current, tmp_path):
    """A dask DataFrame that is nothing but dd.read_parquet's columns is read as the CLI
    reads those files: the CLI's bits on several files of several row groups; a frame
    computed from them is read as a frame, and agrees to rounding."""
    import dask.dataframe as dd

    from gd_dask.interfaces.estimator import parquet_data

    X, y = _data(seed=4, n=3000)
    data = write_parquet(tmp_path / "d", X, y, n_files=3, row_group_rows=400)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "cli", "data": data, "output": {"dir": str(tmp_path / "out")}}))
    assert run_cli("train", cfg, "--no-plot").returncode == 0
    doc = json.loads((tmp_path / "out" / "model.json").read_text())
    ddf = dd.read_parquet(data["path"])
    features = data["features"]
    assert parquet_data(ddf[features], ddf[data["target"]], None)["path"] == data["path"]
    est = LinearRegression().fit(ddf[features], ddf[data["target"]])
    assert est.coef_.tolist() == doc["m"] and est.intercept_ == doc["b"]
    assert list(est.feature_names_in_) == features
    scaled = ddf[features] * 1.0
    assert parquet_data(scaled, ddf[data["target"]], None) is None
    np.testing.assert_allclose(LinearRegression().fit(scaled, ddf[data["target"]]).coef_, est.coef_, rtol=1e-9)
    labels = (ddf[data["target"]] > ddf[data["target"]].mean()).astype(int)
    clf = LogisticRegression().fit(ddf[features], labels)  # computed labels: read as a frame
    assert clf.classes_.tolist() == [0, 1] and clf.converged_


def test_pandas_dask_array_and_dask_dataframe_inputs(current):
    import dask.array as da
    import dask.dataframe as dd

    X, y = _data(seed=1)
    frame = pd.DataFrame(X, columns=["height", "age", "score"])
    est = LinearRegression().fit(frame, y)
    assert list(est.feature_names_in_) == ["height", "age", "score"] and est.n_features_in_ == 3
    on_dask = LinearRegression().fit(da.from_array(X, chunks=200), da.from_array(y, chunks=200))
    np.testing.assert_allclose(on_dask.coef_, est.coef_, rtol=1e-9)
    ddf = dd.from_pandas(frame, npartitions=3)
    on_ddf = LinearRegression().fit(ddf, dd.from_pandas(pd.Series(y), npartitions=3))
    np.testing.assert_allclose(on_ddf.coef_, est.coef_, rtol=1e-9)
    assert list(on_ddf.feature_names_in_) == ["height", "age", "score"]
    lazy = on_ddf.predict(ddf)
    np.testing.assert_allclose(lazy.compute(), est.predict(frame), rtol=1e-9)
    assert est.score(frame, y) > 0.8


def test_pipeline_and_grid_search(current):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _data(seed=2, n=300)
    pipe = make_pipeline(StandardScaler(), LinearRegression(standardize=False))
    assert pipe.fit(X, y).score(X, y) > 0.8
    search = GridSearchCV(LinearRegression(), {"l2": [0.0, 0.1, 10.0]}, cv=3).fit(X, y)
    assert search.best_params_["l2"] == 0.0


def test_summary_and_convergence_from_python(current):
    X, y = _data(seed=3)
    est = LinearRegression().fit(X, y)
    s = est.summary()
    assert s["available"] and len(s["coefficients"]) == 4 and "std err" in str(s)
    assert est.convergence_["criterion"] == "coefficients" and est.loss_curve_[-1] < est.loss_curve_[0]
    assert "penalized" in str(LinearRegression(l2=1.0).fit(X, y).summary())


def test_logistic_regression_probabilities_and_labels(current):
    from sklearn.linear_model import LogisticRegression as SkLogistic

    rng = np.random.default_rng(4)
    X = rng.normal(size=(800, 2))
    labels = np.where(rng.random(800) < 1 / (1 + np.exp(-(X @ [1.0, -0.5] + 0.2))), "churn", "stay")
    est = LogisticRegression().fit(X, labels)
    sk = SkLogistic(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, labels)
    assert list(est.classes_) == ["churn", "stay"] and est.converged_
    np.testing.assert_allclose(est.predict_proba(X), sk.predict_proba(X), rtol=1e-6)
    assert (est.predict(X) == sk.predict(X)).all()
    with pytest.raises(ValueError, match="binary"):
        LogisticRegression().fit(X, rng.integers(0, 3, 800))


def test_train_from_python_returns_the_model_and_raises_the_clis_errors(tmp_path):
    X, y = _data(seed=5, n=200)
    data = write_parquet(tmp_path / "d", X, y)
    raw = {"name": "py", "data": data, "output": {"dir": str(tmp_path / "out")}, "cluster": {"n_workers": 1}}
    model = gd_dask.train(raw, overrides=["optimizer.tol=1e-10"])
    doc = json.loads((tmp_path / "out" / "model.json").read_text())
    assert model.m.tolist() == doc["m"] and doc["config"]["optimizer"]["tol"] == 1e-10
    with pytest.raises(ConfigError, match="optimizer.learning_rate"):
        gd_dask.train(raw, overrides=["optimizer.learning_rate=-1"])
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(json.dumps({**raw, "data": {**data, "features": ["nope"]}}))
    with pytest.raises(DataError) as err:
        gd_dask.train(cfg)
    cli = run_cli("train", cfg)
    assert cli.returncode == 1 and str(err.value) in cli.stderr


def test_minibatch_from_python_runs_whole_epochs_over_partitions_of_unknown_size(current):
    X, y = _data(seed=6, n=5000)
    once = LinearRegression(method="minibatch", batch_size=50, epochs=3).fit(X, y)
    synced = LinearRegression(method="minibatch", batch_size=50, epochs=3, sync_every=10).fit(X, y)
    # One partition: averaging after every 10 steps changes nothing, and every round of
    # the epoch runs although the partition's size is unknown in advance.
    np.testing.assert_allclose(synced.coef_, once.coef_, rtol=1e-12)
    assert est_mse(once, X, y) < 1.1


def est_mse(est, X, y):
    return float(np.mean((est.predict(X) - y) ** 2))
