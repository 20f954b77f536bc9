"""Sample weights and robust standard errors with categorical features: weighted least
squares and the weighted families against statsmodels' WLS and GLM (``var_weights``) on
the one-hot design, integer weights against the repeated rows, the estimators'
``sample_weight``, and HC1 summaries against statsmodels' ``cov_type="HC1"``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_config

from gd_dask.jobs.training import fit

REGIONS = [f"r{i}" for i in range(6)]


def _data(rng, n, family="squared"):
    """x0, x1; region text (6 levels); store int (40 levels, absorbed); y; weights w."""
    region = rng.choice(REGIONS, n)
    store = rng.integers(0, 40, n) + 500
    X = rng.normal(0, 1, (n, 2))
    eta = X @ [0.3, -0.2] + np.array([dict(zip(REGIONS, np.linspace(-0.4, 0.4, 6)))[r] for r in region])
    eta += rng.normal(0, 0.3, 40)[store - 500]
    w = rng.uniform(0.2, 3.0, n)
    if family == "squared":
        y = 4 + 2 * eta + rng.normal(0, 1, n) / np.sqrt(w)
    elif family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    else:
        mu = np.exp(1 + eta)
        y = rng.gamma(2.0, mu / 2.0)
    return X, region, store, y, w


def _files(root, X, region, store, y, w, files=3):
    root.mkdir(parents=True, exist_ok=True)
    for f, idx in enumerate(np.array_split(np.arange(len(y)), files)):
        cols = {"x0": X[idx, 0], "x1": X[idx, 1], "region": region[idx].tolist(), "store": store[idx], "y": y[idx]}
        if w is not None:
            cols["w"] = w[idx]
        pq.write_table(pa.table(cols), root / f"part-{f}.parquet")
    return root


def _design(X, region, store, categorical):
    """The one-hot design with the model's references dropped, and its column names."""
    cols, names = [np.ones(len(X)), X[:, 0], X[:, 1]], ["b", "x0", "x1"]
    for doc, values in zip(categorical, (region, store)):
        for level in doc["levels"]:
            if level != doc["reference"]:
                cols.append((values == level).astype(float))
                names.append(f"{doc['name']}[{level}]")
    return np.column_stack(cols), names


def _ours(res) -> dict:
    out = {"b": res.b, "x0": res.m[0], "x1": res.m[1]}
    for doc in res.categorical:
        out.update({f"{doc['name']}[{lv}]": c for lv, c in zip(doc["levels"], doc["coef"]) if lv != doc["reference"]})
    return out


def _eta(res, X, region, store):
    eta = res.b + X @ np.asarray(res.m)
    for doc, values in zip(res.categorical, (region, store)):
        table = dict(zip(doc["levels"], doc["coef"]))
        eta = eta + np.array([table[v] for v in values.tolist()])
    return eta


def _config(root, tmp_path, weight="w", **sections):
    data = {"path": str(root), "features": ["x0", "region", "x1", "store"], "target": "y", "categorical": ["store"]}
    if weight:
        data["weight"] = weight
    return make_config(data, tmp_path, **sections)


def test_weighted_least_squares_with_levels_is_statsmodels_wls(tmp_path, rng, threads):
    """Coefficients to 1e-9 of the certified tolerance, standard errors, nobs and the
    log-likelihood as statsmodels' WLS prints them; the model certified."""
    import statsmodels.api as sm

    X, region, store, y, w = _data(rng, 6000)
    res = fit(_config(_files(tmp_path / "d", X, region, store, y, w), tmp_path), threads)
    assert res.converged and res.convergence["bound"] <= 1e-9, res.convergence
    D, names = _design(X, region, store, res.categorical)
    want = sm.WLS(y, D, weights=w).fit()
    ours = _ours(res)
    for name, coef in zip(names, want.params):
        assert ours[name] == pytest.approx(coef, rel=1e-9, abs=1e-10), name
    s = res.summary
    assert s["available"] and s["method"] == "WLS", s
    rows = {r["name"]: r for r in s["coefficients"]}
    for name, se in zip(names, want.bse):
        assert rows[name]["std_err"] == pytest.approx(se, rel=1e-8), name
    assert s["nobs"] == len(y) and s["df_resid"] == want.df_resid
    assert s["log_likelihood"] == pytest.approx(want.llf, rel=1e-10)
    assert s["r2"] == pytest.approx(want.rsquared, rel=1e-10)
    # The counts in model.json are rows, the reference the level with the most rows.
    doc = res.categorical[0]
    counts = dict(zip(doc["levels"], doc["counts"]))
    assert sum(counts.values()) == len(y) and doc["reference"] == max(counts, key=counts.get)


@pytest.mark.parametrize("weighted", [False, True])
def test_hc1_summaries_with_levels_are_statsmodels(tmp_path, rng, threads, weighted):
    """White's sandwich without one-hot columns (``kernels.level_meat``): every standard
    error (numeric, the dense column's levels, the absorbed column's, the intercept)
    equals statsmodels' OLS/WLS ``cov_type="HC1"`` on the one-hot design to 1e-8."""
    import statsmodels.api as sm

    X, region, store, y, w = _data(rng, 5000)
    y = y + rng.normal(0, 1, len(y)) * np.abs(X[:, 0])  # heteroscedastic: HC1 differs from nonrobust
    root = _files(tmp_path / "d", X, region, store, y, w)
    res = fit(_config(root, tmp_path, weight="w" if weighted else None, summary={"cov_type": "HC1"}), threads)
    assert res.converged and res.summary["available"] and res.summary["cov_type"] == "HC1", res.summary
    D, names = _design(X, region, store, res.categorical)
    want = (sm.WLS(y, D, weights=w) if weighted else sm.OLS(y, D)).fit(cov_type="HC1")
    plain = (sm.WLS(y, D, weights=w) if weighted else sm.OLS(y, D)).fit()
    rows = {r["name"]: r for r in res.summary["coefficients"]}
    for name, se, se_plain in zip(names, want.bse, plain.bse):
        assert rows[name]["std_err"] == pytest.approx(se, rel=1e-8), name
    assert np.max(np.abs(want.bse / plain.bse - 1)) > 0.05


@pytest.mark.parametrize("loss", ["squared", "logistic", "poisson"])
def test_integer_weights_are_repeated_rows(tmp_path, rng, threads, loss):
    """A row of weight k trains as k copies of it: the same model, to the certificate."""
    X, region, store, y, _ = _data(rng, 3000, "poisson" if loss != "squared" else "squared")
    if loss == "logistic":
        y = (y > 0).astype(float)
    w = rng.integers(1, 4, len(y)).astype(float)
    weighted = fit(_config(_files(tmp_path / "w", X, region, store, y, w), tmp_path, model={"loss": loss}),
                   threads)
    rep = np.repeat(np.arange(len(y)), w.astype(int))
    repeated = fit(_config(_files(tmp_path / "r", X[rep], region[rep], store[rep], y[rep], None), tmp_path,
                           weight=None, model={"loss": loss}), threads)
    assert weighted.converged and repeated.converged
    # The references may differ (the most rows): the linear predictors may not.
    np.testing.assert_allclose(weighted.m, repeated.m, rtol=1e-9)
    eta_w, eta_r = _eta(weighted, X, region, store), _eta(repeated, X, region, store)
    assert np.max(np.abs(eta_w - eta_r)) <= 1e-9 * np.max(np.abs(eta_r))
    metric = {"squared": "mse", "logistic": "log_loss", "poisson": "mean_poisson_deviance"}[loss]
    assert weighted.metrics[metric] == pytest.approx(repeated.metrics[metric], rel=1e-9)
    assert [d["counts"] for d in weighted.categorical] != [d["counts"] for d in repeated.categorical]


@pytest.mark.parametrize("family", ["poisson", "gamma"])
def test_weighted_families_with_levels_are_statsmodels_glm(tmp_path, rng, threads, family):
    """Coefficients to 1e-8 and standard errors to 1e-6 of statsmodels' GLM with
    ``var_weights`` on the one-hot design; Gamma's scale from the weighted Pearson χ²."""
    import statsmodels.api as sm

    X, region, store, y, w = _data(rng, 6000, family)
    res = fit(_config(_files(tmp_path / "d", X, region, store, y, w), tmp_path, model={"loss": family}), threads)
    assert res.converged and res.summary["available"], res.summary
    D, names = _design(X, region, store, res.categorical)
    fam = sm.families.Poisson() if family == "poisson" else sm.families.Gamma(sm.families.links.Log())
    want = sm.GLM(y, D, family=fam, var_weights=w).fit(tol=1e-15, maxiter=200)
    ours = _ours(res)
    rows = {r["name"]: r for r in res.summary["coefficients"]}
    for name, coef, se in zip(names, want.params, want.bse):
        assert ours[name] == pytest.approx(coef, rel=1e-8, abs=1e-12), name
        assert rows[name]["std_err"] == pytest.approx(se, rel=1e-6), name
    assert res.summary["nobs"] == len(y) and res.summary["df_resid"] == want.df_resid
    assert res.summary["deviance"] == pytest.approx(want.deviance, rel=1e-9)
    if family == "gamma":
        assert res.summary["scale"] == pytest.approx(want.scale, rel=1e-9)


def test_the_estimator_takes_sample_weight_with_text_columns(rng):
    """``gd_dask.LinearRegression().fit(df, y, sample_weight=w)`` with a text column:
    scikit-learn's one-hot pipeline with the same weights predicts the same."""
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LinearRegression as SkLinear
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    import gd_dask

    X, region, store, y, w = _data(rng, 4000)
    df = pd.DataFrame({"x0": X[:, 0], "region": region, "x1": X[:, 1]})
    ours = gd_dask.LinearRegression().fit(df, y, sample_weight=w)
    sk = make_pipeline(make_column_transformer((OneHotEncoder(drop="first"), ["region"]), remainder="passthrough"),
                       SkLinear()).fit(df, y, linearregression__sample_weight=w)
    np.testing.assert_allclose(ours.predict(df), sk.predict(df), rtol=1e-9)
    unweighted = gd_dask.LinearRegression().fit(df, y)
    assert np.max(np.abs(unweighted.predict(df) - ours.predict(df))) > 1e-3


def test_a_weighted_refit_with_levels_is_a_weighted_fit_of_its_window(tmp_path, client):
    """Nightly refits with a weight column: each night's grouped moments cached
    weighted; the promoted model equals a cold weighted fit of its training nights."""
    import json
    from datetime import date, timedelta
    from pathlib import Path

    from gd_dask.artifacts.registry import Registry
    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit

    start = date(2026, 11, 1)
    data = tmp_path / "data"
    for day in range(5):
        rng = np.random.default_rng(day)
        X, region, store, y, w = _data(rng, 1500)
        _files(data / f"date={(start + timedelta(days=day)).isoformat()}", X, region, store, y, w, files=2)
    section = {"path": str(data), "features": ["x0", "region", "x1", "store"], "categorical": ["store"],
               "target": "y", "weight": "w", "window_days": 3}
    cfg = validate_config({"name": "weighted", "data": section, "registry": {"dir": str(tmp_path / "models")}})
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(1, 5):
        outcome = refit(cfg, client, start + timedelta(days=day))
        assert outcome.status in ("promoted", "rejected"), outcome.message
    assert outcome.files_read == 2, outcome.message  # the training nights' moments came from the cache
    model = json.loads((Path(reg.version_dir(outcome.version)) / "model.json").read_text())
    assert model["converged"], model["convergence"]
    train = outcome.verdict["train_dates"]
    cold = make_config({k: v for k, v in section.items() if k != "window_days"} | {
        "filters": [["date", ">=", train[0]], ["date", "<=", train[1]]]}, tmp_path)
    res = fit(cold, client)
    np.testing.assert_allclose(model["m"], res.m, rtol=1e-9)
    assert model["b"] == pytest.approx(res.b, rel=1e-9)
    for doc, want in zip(model["categorical"], res.categorical):
        np.testing.assert_allclose(doc["coef"], want["coef"], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("features", [["x0", "x1"], ["x0", "region", "x1", "store"]])
def test_a_negative_weight_is_one_line_naming_the_column_and_file(tmp_path, rng, threads, features):
    """As scikit-learn's LinearRegression refuses them: read by the workers, refused
    before any training, with and without categorical features, and by the estimators."""
    from gd_dask.errors import DataError

    X, region, store, y, w = _data(rng, 500)
    w[123] = -0.5
    root = _files(tmp_path / "d", X, region, store, y, w, files=1)
    cfg = make_config({"path": str(root), "features": features, "target": "y", "weight": "w",
                       "categorical": ["store"] if "store" in features else []}, tmp_path)
    with pytest.raises(DataError, match=r"part-0.parquet: weight column 'w' has 1 negative values \(e.g. -0.5\)"):
        fit(cfg, threads)
    import gd_dask

    df = pd.DataFrame({"x0": X[:, 0], "region": region})
    for data in (df, X):
        with pytest.raises(ValueError, match="Negative values in data passed to `sample_weight`"):
            gd_dask.LinearRegression().fit(data, y, sample_weight=w)


def _huber_irls(D, y, delta, w=None, rounds=500):
    """Huber's minimizer on a dense design by IRLS, written out independently."""
    w = np.ones(len(y)) if w is None else w
    beta = np.linalg.lstsq(D * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    for _ in range(rounds):
        a = np.abs(D @ beta - y)
        omega = w * np.where(a <= delta, 1.0, delta / np.maximum(a, delta))
        new = np.linalg.solve((D * omega[:, None]).T @ D, (D * omega[:, None]).T @ y)
        if np.max(np.abs(new - beta)) <= 1e-15 * np.max(np.abs(new)):
            return new
        beta = new
    return beta


@pytest.mark.parametrize("weighted", [False, True])
def test_huber_with_levels_is_the_huber_minimizer_of_the_one_hot_design(tmp_path, rng, threads, weighted):
    """IRLS on grouped moments: against IRLS on the dense one-hot design iterated to its
    fixed point, with outliers that least squares would chase; every coefficient to 1e-7
    relative, the gradient of the Huber objective there about zero."""
    X, region, store, y, w = _data(rng, 5000)
    y = y + np.where(rng.random(len(y)) < 0.05, rng.normal(0, 30, len(y)), 0.0)  # 5 % gross outliers
    root = _files(tmp_path / "d", X, region, store, y, w)
    res = fit(_config(root, tmp_path, weight="w" if weighted else None, model={"loss": "huber"}), threads)
    assert res.converged and res.convergence["criterion"] == "coefficient_change", res.convergence
    assert not res.summary["available"]
    D, names = _design(X, region, store, res.categorical)
    want = _huber_irls(D, y, 1.35, w if weighted else None)
    ours = _ours(res)
    got = np.array([ours[name] for name in names])
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)
    ww = w if weighted else np.ones(len(y))
    psi = ww * np.clip(D @ got - y, -1.35, 1.35)
    assert np.max(np.abs(D.T @ psi)) <= 1e-6 * np.max(np.abs(D).T @ np.abs(psi))
    losses = [h["loss"] for h in res.history]
    assert losses == sorted(losses, reverse=True) and len(losses) <= 40, losses  # each round lowers it
    ls = np.linalg.lstsq(D, y, rcond=None)[0]
    assert np.max(np.abs(ls - want)) > 1e-2  # least squares is elsewhere: the rounds moved the model
    assert res.metrics["mse"] == pytest.approx(np.average((D @ got - y) ** 2, weights=w if weighted else None),
                                               rel=1e-9)
