"""Categorical features end to end: Parquet with a text and an integer category,
`gd-dask train` at defaults, the model against least squares on a dense one-hot design,
and predict with known and unseen levels."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_config, predict_levels, run_cli

from gd_dask.jobs.training import fit

REGIONS = [f"region-{i:02d}" for i in range(12)]


def _write(root, rng, n=6000, files=3, regions=REGIONS, stores=150):
    """x0, x1 numeric; region text (12 levels, uneven); store int64 (150 levels)."""
    region = rng.choice(regions, size=n, p=np.linspace(1, 3, len(regions)) / np.linspace(1, 3, len(regions)).sum())
    store = rng.integers(0, stores, n) * 10 + 1000
    X = rng.normal(3, 1.5, (n, 2))
    effect_r = dict(zip(regions, rng.normal(0, 2, len(regions))))
    effect_s = rng.normal(0, 1, stores)
    y = (5 + X @ [1.5, -0.7] + np.array([effect_r[r] for r in region]) + effect_s[(store - 1000) // 10]
         + rng.normal(0, 0.2, n))
    root.mkdir(parents=True, exist_ok=True)
    for f, idx in enumerate(np.array_split(np.arange(n), files)):
        pq.write_table(pa.table({"x0": X[idx, 0], "x1": X[idx, 1], "region": region[idx].tolist(),
                                 "store": store[idx], "y": y[idx]}), root / f"part-{f}.parquet")
    return X, region, store, y


def _one_hot(X, region, store, y, model):
    """Dense least squares with the model's references dropped: (design, beta)."""
    cols = [np.ones(len(X)), *X.T]
    for doc, values in zip(model["categorical"], (region, store)):
        for level in doc["levels"]:
            if level != doc["reference"]:
                cols.append((values == level).astype(float))
    D = np.column_stack(cols)
    return D, np.linalg.lstsq(D, y, rcond=None)[0]


def test_a_text_and_an_integer_category_train_to_one_hot_least_squares(tmp_path, rng, threads):
    X, region, store, y = _write(tmp_path / "d", rng)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path)
    res = fit(cfg, threads)
    from gd_dask.artifacts.store import model_document

    model = json.loads(json.dumps(model_document(cfg, res)))
    assert model["format"] == "gd_dask.model/2" and model["features"] == ["x0", "x1"]
    assert [c["name"] for c in model["categorical"]] == ["region", "store"]
    region_doc = model["categorical"][0]
    assert sorted(region_doc["levels"]) == REGIONS
    # The reference is the most frequent level; its coefficient is 0.
    counts = dict(zip(region_doc["levels"], region_doc["counts"]))
    assert region_doc["reference"] == max(counts, key=counts.get)
    assert region_doc["coef"][region_doc["levels"].index(region_doc["reference"])] == 0
    D, beta = _one_hot(X, region, store, y, model)
    ours = predict_levels(model, X, region, store)
    assert np.max(np.abs(ours - D @ beta)) <= 1e-9 * np.max(np.abs(D @ beta))
    assert res.converged and model["convergence"]["bound"] <= 1e-9, model["convergence"]
    assert abs(model["metrics"]["r2"] - (1 - np.sum((y - D @ beta) ** 2) / np.sum((y - y.mean()) ** 2))) < 1e-9
    # The summary: statsmodels' OLS on the dense design (the same rows, references dropped).
    summary = model["summary"]
    assert summary["available"], summary
    resid = y - D @ beta
    df = len(y) - D.shape[1]
    cov = resid @ resid / df * np.linalg.inv(D.T @ D)
    se = np.sqrt(np.diag(cov))
    names = ["b", "x0", "x1"] + [f"{doc['name']}[{level}]" for doc in model["categorical"]
                                 for level in doc["levels"] if level != doc["reference"]]
    ours = {r["name"]: r for r in summary["coefficients"]}
    assert sorted(ours) == sorted(names)
    for name, want_coef, want_se in zip(names, beta, se):
        assert abs(ours[name]["coef"] - want_coef) <= 1e-8 * max(abs(want_coef), 1), name
        assert abs(ours[name]["std_err"] / want_se - 1) <= 1e-8, name
    assert summary["df_resid"] == df and abs(summary["r2"] - model["metrics"]["r2"]) < 1e-12


def test_train_and_predict_from_the_command_line(tmp_path, rng):
    """The same through `gd-dask train`, `evaluate` and `predict`: the metrics on the
    training rows are training's; known levels scored as the model says; an unseen
    level is one line naming column, level and file (exit 1), or scored as the
    reference with model.unseen_levels: reference."""
    X, region, store, y = _write(tmp_path / "d", rng, n=3000)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "cat", "data": {"path": str(tmp_path / "d"), "target": "y",
                                                        "features": ["x0", "region", "x1", "store"],
                                                        "categorical": ["store"]},
                               "output": {"dir": str(tmp_path / "out")}}))
    r = run_cli("train", str(cfg), "--no-plot")
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    # The line names the numeric slopes by their own names (a level column is not one).
    assert f"m: x0={model['m'][0]:.6g}, x1={model['m'][1]:.6g}; region: 12 levels" in r.stdout, r.stdout
    r = run_cli("evaluate", str(tmp_path / "out" / "model.json"), str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["n"] == 3000 and abs(metrics["mse"] / model["metrics"]["mse"] - 1) < 1e-9
    assert abs(metrics["r2"] - model["metrics"]["r2"]) < 1e-9 and metrics["mae"] > 0
    new = tmp_path / "new"
    new.mkdir()
    pq.write_table(pa.table({"x0": X[:50, 0], "x1": X[:50, 1], "region": region[:50].tolist(), "store": store[:50],
                             "id": np.arange(50)}), new / "p.parquet")
    r = run_cli("predict", str(tmp_path / "out" / "model.json"), str(new), str(tmp_path / "pred"))
    assert r.returncode == 0, r.stderr
    pred = pq.read_table(next((tmp_path / "pred").rglob("*.parquet"))).column("prediction").to_numpy()
    assert np.allclose(pred, predict_levels(model, X[:50], region[:50], store[:50]), rtol=1e-12)
    unseen = region[:50].astype(object)
    unseen[7] = "region-new"
    pq.write_table(pa.table({"x0": X[:50, 0], "x1": X[:50, 1], "region": unseen.tolist(), "store": store[:50]}),
                   new / "p.parquet")
    r = run_cli("predict", str(tmp_path / "out" / "model.json"), str(new), str(tmp_path / "pred2"))
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "'region'" in line and "region-new" in line and "p.parquet" in line
    assert not (tmp_path / "pred2").exists()
    model["config"]["model"]["unseen_levels"] = "reference"
    (tmp_path / "out" / "model.json").write_text(json.dumps(model))
    r = run_cli("predict", str(tmp_path / "out" / "model.json"), str(new), str(tmp_path / "pred3"))
    assert r.returncode == 0, r.stderr
    pred = pq.read_table(next((tmp_path / "pred3").rglob("*.parquet"))).column("prediction").to_numpy()
    as_reference = unseen.copy()
    as_reference[7] = model["categorical"][0]["reference"]
    assert np.allclose(pred, predict_levels(model, X[:50], as_reference, store[:50]), rtol=1e-12)


@pytest.mark.parametrize("section,value,culprit", [("optimizer", {"validation_fraction": 0.2},
                                                    "optimizer.validation_fraction > 0"),
                                                   ("model", {"l1": 0.1}, "model.l1 > 0")])
def test_what_is_not_supported_yet_is_named(tmp_path, rng, threads, section, value, culprit):
    _write(tmp_path / "d", rng, n=300)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "region"], "target": "y"}, tmp_path,
                      **{section: value})
    from gd_dask.errors import ConfigError

    with pytest.raises(ConfigError, match=culprit):
        fit(cfg, threads)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_the_stream_strategy_takes_levels_by_newton_passes(tmp_path, rng, threads, loss):
    """``optimizer.strategy: stream`` with levels streams the rows each pass and sums the
    gradient and Hessian per level (``categorical_newton``): least squares lands where the
    grouped moments' solve does (both certified to tol, 1e-9: the coefficients agree to
    2e-9; standard errors to 1e-8: OLS's σ²·(XᵀX)⁻¹ as statsmodels' Gaussian GLM gives
    it), logistic on the same bits as auto."""
    X, region, store, y = _write(tmp_path / "d", rng)
    if loss == "logistic":
        y = (y > np.median(y)).astype(float)
        for f in range(3):
            path = tmp_path / "d" / f"part-{f}.parquet"
            t = pq.read_table(path)
            pq.write_table(t.set_column(t.schema.get_field_index("y"), "y", pa.array(y[f * 2000:(f + 1) * 2000])),
                           path)
    data = {"path": str(tmp_path / "d"), "features": ["x0", "x1", "region", "store"], "target": "y",
            "categorical": ["store"]}
    runs = [fit(make_config(data, tmp_path, model={"loss": loss}, optimizer={"strategy": s}), threads)
            for s in ("auto", "stream")]
    auto, stream = runs
    assert stream.strategy == "newton" and stream.converged, stream.convergence
    if loss == "logistic":
        assert np.array_equal(auto.m, stream.m) and auto.b == stream.b
        assert [c["coef"] for c in auto.categorical] == [c["coef"] for c in stream.categorical]
        return
    assert auto.strategy == "gram" and auto.converged
    scale = max(np.max(np.abs(auto.m)), abs(auto.b))
    assert np.max(np.abs(np.asarray(stream.m) - auto.m)) <= 2e-9 * scale and abs(stream.b - auto.b) <= 2e-9 * scale
    for a, s in zip(auto.categorical, stream.categorical):
        assert np.max(np.abs(np.asarray(s["coef"]) - a["coef"])) <= 2e-9 * scale
    se = {r["name"]: r["std_err"] for r in auto.summary["coefficients"]}
    got = {r["name"]: r["std_err"] for r in stream.summary["coefficients"]}
    assert stream.summary["method"] == "GLM gaussian (identity link)" and set(se) <= set(got)
    assert max(abs(got[k] - se[k]) / se[k] for k in se) <= 1e-8


def test_levels_alone_are_their_means(tmp_path, threads):
    """No numeric feature: the intercept is the reference level's mean, each other
    level's coefficient its mean's difference from it, certified."""
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"a": ["x", "y", "z", "y", "y"], "y": [1.0, 2.0, 3.0, 4.0, 6.0]}),
                   tmp_path / "d" / "p.parquet")
    res = fit(make_config({"path": str(tmp_path / "d"), "features": ["a"], "target": "y"}, tmp_path), threads)
    doc = res.categorical[0]
    assert doc["reference"] == "y" and res.b == 4.0 and len(res.m) == 0
    assert dict(zip(doc["levels"], doc["coef"])) == {"x": -3.0, "y": 0.0, "z": -1.0}
    assert res.converged and res.convergence["bound"] <= 1e-12


def test_the_bits_are_the_same_on_one_and_three_workers(tmp_path, rng, client):
    """Groups merge in the fixed tree: the model's every number is identical on one and
    three threads and on the session's two worker processes."""
    from gd_dask.config import ClusterConfig
    from gd_dask.runtime.cluster import connect

    _write(tmp_path / "d", rng, n=9000, files=7)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path)
    results = [fit(cfg, client)]
    for n in (1, 3):
        with connect(ClusterConfig(n_workers=n, processes=False)) as c:
            results.append(fit(cfg, c))
    for r in results[1:]:
        assert list(r.m) == list(results[0].m) and r.b == results[0].b
        assert r.categorical == results[0].categorical and r.metrics == results[0].metrics


def test_newton_with_levels_gives_the_same_bits_from_kept_plans_and_from_the_files(tmp_path, rng, client, threads):
    """Logistic with a column of 150 levels (a diagonal block), one of them separated:
    the passes from the rows and level indices kept in cluster memory, those that read
    the files again (``optimizer.cache: none``) and those on the session's two worker
    processes give the same model, summary and metrics, bit for bit."""
    _, _, store, y = _logistic_files(tmp_path / "d", rng, 9000, 150)
    assert not y[store == 1070].all()
    for f in sorted((tmp_path / "d").iterdir()):  # every row of store 1070 a 1: set aside
        t = pq.read_table(f)
        s = t.column("store").to_numpy()
        y_new = pa.array(np.where(s == 1070, 1.0, t.column("y")))
        pq.write_table(t.set_column(t.column_names.index("y"), "y", y_new), f)
    data = {"path": str(tmp_path / "d"), "features": ["x0", "region", "x1", "store"], "target": "y",
            "categorical": ["store"]}
    results = [fit(make_config(data, tmp_path, model={"loss": "logistic"}, optimizer={"cache": cache}), c)
               for cache, c in (("memory", threads), ("none", threads), ("memory", client))]
    first = results[0]
    assert first.converged and first.categorical[1]["separated"] == [{"level": 1070, "target": 1, "round": 1}]
    for r in results[1:]:
        assert list(r.m) == list(first.m) and r.b == first.b and r.categorical == first.categorical
        assert r.summary == first.summary and r.metrics == first.metrics


def test_the_estimator_takes_pandas_text_and_category_columns(rng):
    """gd_dask.LinearRegression on a DataFrame with a text and a category column: the
    fit equals one-hot least squares, predict looks levels up (an unseen one is a
    ValueError, or the reference with unseen_levels='reference'), and the summary names
    the levels by the user's columns."""
    import pandas as pd

    import gd_dask

    n = 2000
    region = rng.choice(REGIONS[:6], size=n)
    shop = pd.Categorical(rng.choice(["a", "b", "c"], size=n))
    x = rng.normal(2, 1, n)
    y = 1 + 2 * x + pd.Series(region).map(dict(zip(REGIONS[:6], range(6)))).to_numpy() + (shop.codes == 1) * 3.0 \
        + rng.normal(0, 0.1, n)
    X = pd.DataFrame({"x": x, "region": region, "shop": shop})
    est = gd_dask.LinearRegression().fit(X, y)
    assert est.converged_ and list(est.feature_names_in_) == ["x", "region", "shop"]
    assert est.numeric_features_ == ["x"] and set(est.categorical_) == {"region", "shop"}
    cols = [np.ones(n), x]
    for c in ("region", "shop"):
        table = est.categorical_[c]
        ref = max(table, key=lambda level: (X[c].astype(str) == level).sum())
        assert table[ref] == 0
        cols += [(X[c].astype(str) == level).to_numpy(dtype=float) for level in table if level != ref]
    D = np.column_stack(cols)
    beta = np.linalg.lstsq(D, y, rcond=None)[0]
    assert np.max(np.abs(est.predict(X) - D @ beta)) <= 1e-9 * np.max(np.abs(D @ beta))
    new = X.head(5).copy()
    new.loc[2, "region"] = "nowhere"
    with pytest.raises(ValueError, match="'region' has level 'nowhere'"):
        est.predict(new)
    est.set_params(unseen_levels="reference")
    kept = X.head(5).copy()
    kept.loc[2, "region"] = next(level for level, v in est.categorical_["region"].items() if v == 0)
    assert np.allclose(est.predict(new), est.predict(kept))
    text = str(est.summary())
    assert "region[" in text and "shop[" in text and "(intercept)" in text
    # A dask DataFrame of the same rows: read where it lives, the same model to rounding.
    import dask.dataframe as dd

    X3, y3 = dd.from_pandas(X, npartitions=3), dd.from_pandas(pd.Series(y), npartitions=3)
    lazy = gd_dask.LinearRegression().fit(X3, y3)
    assert lazy.categorical_.keys() == est.categorical_.keys()
    got = lazy.predict(X3).compute()
    assert np.max(np.abs(got - est.predict(X))) <= 1e-9 * np.max(np.abs(est.predict(X)))


def test_logistic_with_categories_is_scikit_learns_one_hot_logistic_regression(tmp_path, rng, threads):
    """Newton passes from per-level sums (no one-hot): the model equals scikit-learn's
    OneHotEncoder + LogisticRegression (its Newton solver, no penalty) with the same
    reference levels dropped, converged with its bound holding; predict writes its
    probabilities."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    X, region, store, y_num = _write(tmp_path / "num", rng, n=9000, stores=20)
    eta = (y_num - y_num.mean()) / y_num.std()
    y = (rng.random(len(eta)) < 1 / (1 + np.exp(-eta))).astype(float)
    root = tmp_path / "d"
    root.mkdir()
    for f, idx in enumerate(np.array_split(np.arange(len(y)), 3)):
        pq.write_table(pa.table({"x0": X[idx, 0], "x1": X[idx, 1], "region": region[idx].tolist(),
                                 "store": store[idx], "y": y[idx]}), root / f"part-{f}.parquet")
    cfg = make_config({"path": str(root), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path, model={"loss": "logistic"})
    res = fit(cfg, threads)
    assert res.strategy == "newton" and res.converged and res.epochs_run <= 8
    frame = pd.DataFrame({"region": region, "store": store})
    refs = [doc["reference"] for doc in res.categorical]
    enc = OneHotEncoder(drop=refs, sparse_output=False).fit(frame)
    ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-14, max_iter=1000).fit(
        np.column_stack([X, enc.transform(frame)]), y)
    theirs = dict(zip(["x0", "x1", *enc.get_feature_names_out(["region", "store"])], ref.coef_[0]))
    ours = {"x0": res.m[0], "x1": res.m[1]}
    for doc in res.categorical:
        ours.update({f"{doc['name']}_{lv}": c for lv, c in zip(doc["levels"], doc["coef"]) if lv != doc["reference"]})
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert res.b == pytest.approx(ref.intercept_[0], rel=1e-6)
    assert res.metrics["n"] == len(y) and 0 < res.metrics["log_loss"] < np.log(2)
    from gd_dask.artifacts.store import model_document
    from gd_dask.data.write import LevelTable

    doc = model_document(cfg, res)
    assert doc["categorical"][0]["levels"]
    # The summary: statsmodels' GLM on the same one-hot design (z, SE, CI by name).
    import statsmodels.api as sm

    design = np.column_stack([np.ones(len(y)), X, enc.transform(frame)])
    sm_res = sm.GLM(y, design, family=sm.families.Binomial()).fit(tol=1e-14)
    one_hot = enc.get_feature_names_out(["region", "store"])
    sm_names = ["b", "x0", "x1", *(n.replace("_", "[", 1) + "]" for n in one_hot)]
    rows = {r["name"]: r for r in res.summary["coefficients"]}
    assert res.summary["available"] and set(rows) == set(sm_names)
    for name, se, z in zip(sm_names, sm_res.bse, sm_res.tvalues):
        assert rows[name]["std_err"] == pytest.approx(se, rel=1e-6), name
        assert rows[name]["t"] == pytest.approx(z, rel=1e-6), name
    assert res.summary["log_likelihood"] == pytest.approx(sm_res.llf, rel=1e-9)
    tables = [LevelTable(d["name"], d["levels"], d["coef"]) for d in res.categorical]
    offsets = sum(t.contribution(pa.array(v), "x") for t, v in zip(tables, (region.tolist(), store)))
    proba = 1 / (1 + np.exp(-(X @ res.m + res.b + offsets)))
    np.testing.assert_allclose(proba, ref.predict_proba(np.column_stack([X, enc.transform(frame)]))[:, 1],
                               rtol=1e-8)


def test_the_classifier_and_poisson_estimators_take_text_and_category_columns(rng):
    """gd_dask.LogisticRegression and PoissonRegressor on a DataFrame with a text and a
    category column: probabilities and means through the levels' coefficients, equal to
    scikit-learn's on the one-hot design (its Newton solver, no penalty)."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression as SkLogistic
    from sklearn.linear_model import PoissonRegressor as SkPoisson

    import gd_dask

    n = 4000
    X = pd.DataFrame({"x": rng.normal(size=n), "region": rng.choice(["a", "b", "c"], n),
                      "kind": pd.Categorical(rng.choice(["u", "v"], n))})
    eta = 0.7 * X.x + X.region.map({"a": 0.0, "b": 0.5, "c": -0.5}) + (X.kind == "v") * 0.3
    labels = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    counts = rng.poisson(np.exp(eta))
    for ours, theirs, y, predict in (
            (gd_dask.LogisticRegression(), SkLogistic(C=np.inf, solver="newton-cholesky", tol=1e-14), labels,
             lambda m, D: m.predict_proba(D)[:, 1]),
            (gd_dask.PoissonRegressor(), SkPoisson(alpha=0, solver="newton-cholesky", tol=1e-14), counts,
             lambda m, D: m.predict(D))):
        est = ours.fit(X, y)
        assert est.converged_ and set(est.categorical_) == {"region", "kind"}
        cols = [X.x.to_numpy()]
        for c in ("region", "kind"):
            cols += [(X[c].astype(str) == level).to_numpy(dtype=float) for level, v in est.categorical_[c].items()
                     if v != 0.0]
        D = np.column_stack(cols)
        ref = theirs.fit(D, y)
        mine = est.predict_proba(X)[:, 1] if isinstance(est, gd_dask.LogisticRegression) else est.predict(X)
        np.testing.assert_allclose(mine, predict(ref, D), rtol=1e-7)


def _logistic_files(root, rng, n, stores):
    X, region, store, y_num = _write(root.parent / (root.name + "-num"), rng, n=n, stores=stores)
    eta = (y_num - y_num.mean()) / y_num.std()
    y = (rng.random(len(eta)) < 1 / (1 + np.exp(-eta))).astype(float)
    root.mkdir()
    for f, idx in enumerate(np.array_split(np.arange(len(y)), 3)):
        pq.write_table(pa.table({"x0": X[idx, 0], "x1": X[idx, 1], "region": region[idx].tolist(),
                                 "store": store[idx], "y": y[idx]}), root / f"part-{f}.parquet")
    return X, region, store, y


@pytest.mark.parametrize("loss", ["logistic", "poisson"])
def test_a_high_cardinality_column_under_newton_is_a_diagonal_block(tmp_path, rng, threads, monkeypatch, loss):
    """Past the dense limit the largest column's levels stay a diagonal block of the
    Hessian (Schur complement): the same model, certificate and summary as the dense
    Hessian gives (the limit lowered so both run on the same rows)."""
    from gd_dask.jobs import categorical_newton

    _logistic_files(tmp_path / "d", rng, 9000, 20)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path, model={"loss": loss})
    dense = fit(cfg, threads)
    monkeypatch.setattr(categorical_newton, "MAX_NEWTON_LEVELS", 20)
    block = fit(cfg, threads)
    assert dense.converged and block.converged and block.epochs_run == dense.epochs_run
    np.testing.assert_allclose(block.m, dense.m, rtol=1e-10)
    assert block.b == pytest.approx(dense.b, rel=1e-10)
    for a, b in zip(block.categorical, dense.categorical):
        np.testing.assert_allclose(a["coef"], b["coef"], rtol=1e-10, atol=1e-12)
    assert block.convergence["bound"] == pytest.approx(dense.convergence["bound"], rel=1e-3)
    rows = {r["name"]: r for r in dense.summary["coefficients"]}
    assert block.summary["available"] and len(block.summary["coefficients"]) == len(rows)
    for r in block.summary["coefficients"]:
        assert r["std_err"] == pytest.approx(rows[r["name"]]["std_err"], rel=1e-9), r["name"]


def test_logistic_with_thousands_of_levels_is_scikit_learns(tmp_path, rng, threads):
    """A 3,000-level column of 20 rows a level (past the 2,000 a dense Hessian takes)
    with logistic loss: certified at the default tol (it stopped at 7 digits while the
    intercept's rounding reached every level: ``hessians.FoldedHessian``), every
    coefficient within the bound of Newton's in long double on the one-hot design, and
    equal to scikit-learn's Newton solver on the sparse one-hot design."""
    import pandas as pd
    from newton_reference import coefficients, newton_reference
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    X, region, store, y = _logistic_files(tmp_path / "d", rng, 60_000, 3000)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path, model={"loss": "logistic"})
    res = fit(cfg, threads)
    assert res.converged and res.epochs_run <= 8 and res.convergence["digits"] >= 9, res.convergence
    model = {"b": res.b, "m": res.m, "categorical": res.categorical}
    beta, names, _, _ = newton_reference(X, (region, store), y, None, None, model, "logistic")
    err = np.abs(coefficients(model, names) - beta)
    floor = 1e-6 * np.abs(beta).max()
    assert np.max(err / np.maximum(np.abs(beta) - err, floor)) <= res.convergence["bound"]
    frame = pd.DataFrame({"region": region, "store": store})
    refs = [doc["reference"] for doc in res.categorical]
    enc = OneHotEncoder(drop=refs, sparse_output=True).fit(frame)
    import scipy.sparse as sp

    design = sp.hstack([sp.csr_matrix(X), enc.transform(frame)]).tocsr()
    ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=100).fit(design, y)
    theirs = dict(zip(["x0", "x1", *enc.get_feature_names_out(["region", "store"])], ref.coef_[0]))
    ours = {"x0": res.m[0], "x1": res.m[1]}
    for doc in res.categorical:
        ours.update({f"{doc['name']}_{lv}": c for lv, c in zip(doc["levels"], doc["coef"]) if lv != doc["reference"]})
    assert set(ours) == set(theirs)
    worst = max(abs(ours[k] - v) / max(abs(v), 1e-3) for k, v in theirs.items())
    assert worst <= 1e-6, worst
    print("bound", res.convergence, "worst vs sklearn", worst)
    assert res.b == pytest.approx(ref.intercept_[0], rel=1e-6)


@pytest.mark.parametrize("limit", [None, 20], ids=["dense", "diagonal-block"])
def test_the_logistic_bound_with_levels_holds_against_long_double_newton(tmp_path, rng, threads, monkeypatch, limit):
    """The certificate of a logistic model with levels (Jacobi coordinates, and each
    coefficient's first-order error) is never below its error against Newton's method in
    long double on the one-hot design."""
    from gd_dask.jobs import categorical_newton

    if limit:
        monkeypatch.setattr(categorical_newton, "MAX_NEWTON_LEVELS", limit)
    X, region, store, y = _logistic_files(tmp_path / "d", rng, 6000, 40)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path, model={"loss": "logistic"})
    res = fit(cfg, threads)
    columns = [X[:, 0], X[:, 1]]
    names = ["x0", "x1"]
    for doc, values in zip(res.categorical, (region, store)):
        for level in doc["levels"]:
            if level != doc["reference"]:
                columns.append((values == level).astype(float))
                names.append((doc["name"], level))
    D = np.column_stack(columns)
    mu, sd = D.mean(axis=0), D.std(axis=0)
    Z = np.column_stack([(D - mu) / sd, np.ones(len(y))]).astype(np.longdouble)
    theta, yl = np.zeros(Z.shape[1], dtype=np.longdouble), y.astype(np.longdouble)
    for _ in range(30):
        p = 1 / (1 + np.exp(-(Z @ theta)))
        h = (p * (1 - p)).astype(float)
        theta -= np.linalg.solve((Z.astype(float) * h[:, None]).T @ Z.astype(float),
                                 (Z.T @ (p - yl)).astype(float)).astype(np.longdouble)
    coef = theta[:-1] / sd
    b = theta[-1] - (mu / sd) @ theta[:-1]
    ours = {"x0": res.m[0], "x1": res.m[1]}
    for doc in res.categorical:
        ours.update({(doc["name"], lv): c for lv, c in zip(doc["levels"], doc["coef"]) if lv != doc["reference"]})
    truth = dict(zip(names, coef))
    floor = 1e-6 * max(abs(float(v)) for v in truth.values())
    worst = max(float(abs(ours[k] - v) / max(abs(v) - abs(ours[k] - v), floor)) for k, v in truth.items())
    worst = max(worst, float(abs(res.b - b) / abs(b)))
    assert res.convergence["bound"] >= worst, (res.convergence, worst)
    assert res.converged and worst < 1e-9


def test_poisson_with_an_exposure_and_levels_is_statsmodels_glm(tmp_path, rng, threads):
    """Counts over an exposure with a text and an integer column: the coefficients equal
    statsmodels' GLM Poisson with offset log(exposure) on the one-hot design to 1e-8, the
    deviance too, and evaluate and predict add the exposure's log."""
    import statsmodels.api as sm

    from gd_dask.artifacts.model import load_model
    from gd_dask.jobs.score import evaluate

    n = 8000
    region = rng.choice(REGIONS[:6], n)
    store = rng.integers(0, 30, n) + 100
    X = rng.normal(0, 1, (n, 2))
    expo = rng.uniform(0.2, 3.0, n)
    eff_r = dict(zip(REGIONS[:6], np.linspace(-0.5, 0.5, 6)))
    eff_s = rng.normal(0, 0.3, 30)
    eta = -1 + X @ [0.3, -0.2] + np.array([eff_r[r] for r in region]) + eff_s[store - 100]
    y = rng.poisson(expo * np.exp(eta)).astype(float)
    root = tmp_path / "d"
    root.mkdir()
    for f, idx in enumerate(np.array_split(np.arange(n), 2)):
        pq.write_table(pa.table({"x0": X[idx, 0], "x1": X[idx, 1], "region": region[idx].tolist(),
                                 "store": store[idx], "e": expo[idx], "y": y[idx]}), root / f"part-{f}.parquet")
    cfg = make_config({"path": str(root), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"], "exposure": "e"}, tmp_path, model={"loss": "poisson"})
    res = fit(cfg, threads)
    assert res.converged and res.strategy == "newton"
    cols, names = [np.ones(n), X[:, 0], X[:, 1]], ["b", "x0", "x1"]
    for doc, values in zip(res.categorical, (region, store)):
        for level in doc["levels"]:
            if level != doc["reference"]:
                cols.append((values == level).astype(float))
                names.append((doc["name"], level))
    sm_res = sm.GLM(y, np.column_stack(cols), family=sm.families.Poisson(), offset=np.log(expo)).fit(tol=1e-15)
    ours = {"b": res.b, "x0": res.m[0], "x1": res.m[1]}
    for doc in res.categorical:
        ours.update({(doc["name"], lv): c for lv, c in zip(doc["levels"], doc["coef"]) if lv != doc["reference"]})
    for name, value in zip(names, sm_res.params):
        assert ours[name] == pytest.approx(value, rel=1e-8, abs=1e-12), name
    assert res.metrics["mean_poisson_deviance"] * n == pytest.approx(sm_res.deviance, rel=1e-9)
    from gd_dask.artifacts.store import model_document

    out = tmp_path / "model.json"
    out.write_text(json.dumps(model_document(cfg, res)))
    model = load_model(out)
    metrics = evaluate(model, str(root), threads)
    assert metrics["mean_poisson_deviance"] == pytest.approx(res.metrics["mean_poisson_deviance"], rel=1e-12)
    import pandas as pd

    frame = pd.DataFrame({"x0": X[:50, 0], "x1": X[:50, 1], "region": region[:50], "store": store[:50],
                          "e": expo[:50]})
    np.testing.assert_allclose(model.predict(frame), sm_res.predict(np.column_stack(cols)[:50],
                                                                    offset=np.log(expo[:50])), rtol=1e-8)
    from gd_dask.errors import ArtifactError

    with pytest.raises(ArtifactError, match="categorical features .region, store.: pass a pandas DataFrame"):
        model.predict(X[:50], offset=expo[:50])  # the levels would be silently left out


@pytest.mark.parametrize("level", [0.0, 50.0])
def test_thousands_of_level_effects_are_certified_against_long_double(tmp_path, rng, threads, level):
    """5,000 levels of 40 rows, effects down to 1e-4: the levels' means come from exact
    per-group sums, so the default tol is certified (where y is centered; at a level of 50
    float64 data themselves hold the smallest effects to 9.4 digits, and the bound says
    8.9), and the bound is never below the error against the exact within-level least
    squares computed in long double."""
    n, levels = 200_000, 5000
    X = rng.normal(3.0, 1.0, (n, 2))
    store = rng.integers(0, levels, n)
    effect = rng.normal(0, 1, levels) * 10.0 ** rng.uniform(-4, 0, levels)  # some effects tiny
    y = level + X @ [1.5, -0.7] + effect[store] + rng.normal(0, 0.5, n)
    root = tmp_path / "d"
    root.mkdir()
    pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1], "store": store, "y": y}), root / "part-0.parquet")
    cfg = make_config({"path": str(root), "features": ["x0", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path)
    res = fit(cfg, threads)
    assert res.convergence["digits"] >= (9.0 if level == 0 else 8.5), res.convergence
    assert res.converged or level != 0
    # The exact answer: within-level least squares in long double (refined float64 solves).
    Z = np.column_stack([X, y]).astype(np.longdouble)
    counts = np.bincount(store, minlength=levels).astype(np.longdouble)
    means = np.stack([np.bincount(store, weights=np.zeros(n), minlength=levels).astype(np.longdouble)
                      for _ in range(3)], axis=1)
    for j in range(3):
        np.add.at(means[:, j], store, Z[:, j])
    means /= counts[:, None]
    W = Z - means[store]
    A, rhs = W[:, :2].T @ W[:, :2], W[:, :2].T @ W[:, 2]
    beta = np.zeros(2, dtype=np.longdouble)
    for _ in range(4):
        beta += np.linalg.solve(A.astype(float), (rhs - A @ beta).astype(float)).astype(np.longdouble)
    a = means[:, 2] - means[:, :2] @ beta
    doc = res.categorical[0]
    ref = doc["levels"].index(doc["reference"])
    truth = np.concatenate([beta, [a[ref]], np.delete(a - a[ref], ref)])
    ours = np.concatenate([res.m, [res.b], np.delete(np.asarray(doc["coef"]), ref)])
    assert [int(v) for v in doc["levels"]] == list(range(levels))
    floor = 1e-6 * float(np.max(np.abs(truth[:2])))
    err = np.abs(ours - truth).astype(float)
    worst = float(np.max(err / np.maximum(np.abs(truth).astype(float) - err, floor)))
    assert worst <= res.convergence["bound"], (worst, res.convergence)


@pytest.mark.parametrize("family", ["gamma", "tweedie"])
def test_gamma_and_tweedie_summaries_with_levels_are_statsmodels(tmp_path, rng, threads, family):
    """Their information at the fitted coefficients from a pass of its own (Fisher's
    weights, not the observed curvature) and the scale from Pearson's χ²: the standard
    errors equal statsmodels' GLM on the one-hot design."""
    import statsmodels.api as sm

    n = 6000
    region = rng.choice(REGIONS[:5], n)
    store = rng.integers(0, 25, n) + 7
    X = rng.normal(0, 1, (n, 2))
    mu = np.exp(1 + X @ [0.2, -0.1] + np.array([dict(zip(REGIONS[:5], np.linspace(-.3, .3, 5)))[r] for r in region])
                + rng.normal(0, 0.2, 25)[store - 7])
    y = rng.gamma(2.0, mu / 2.0) if family == "gamma" else rng.poisson(mu) * rng.gamma(2.0, 0.5, n)
    root = tmp_path / "d"
    root.mkdir()
    pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1], "region": region.tolist(), "store": store, "y": y}),
                   root / "part-0.parquet")
    model = {"loss": family, **({"tweedie_power": 1.5} if family == "tweedie" else {})}
    cfg = make_config({"path": str(root), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path, model=model)
    res = fit(cfg, threads)
    assert res.converged and res.summary["available"], res.summary
    cols, names = [np.ones(n), X[:, 0], X[:, 1]], ["b", "x0", "x1"]
    for doc, values in zip(res.categorical, (region, store)):
        for level in doc["levels"]:
            if level != doc["reference"]:
                cols.append((values == level).astype(float))
                names.append(f"{doc['name']}[{level}]")
    fam = (sm.families.Gamma(sm.families.links.Log()) if family == "gamma"
           else sm.families.Tweedie(var_power=1.5, link=sm.families.links.Log()))
    sm_res = sm.GLM(y, np.column_stack(cols), family=fam).fit(tol=1e-15, maxiter=200)
    rows = {r["name"]: r for r in res.summary["coefficients"]}
    assert set(rows) == set(names)
    for name, coef, se in zip(names, sm_res.params, sm_res.bse):
        assert rows[name]["coef"] == pytest.approx(coef, rel=1e-8, abs=1e-12), name
        assert rows[name]["std_err"] == pytest.approx(se, rel=1e-6), name
    assert res.summary["scale"] == pytest.approx(sm_res.scale, rel=1e-9)
    assert res.summary["pearson_chi2"] == pytest.approx(sm_res.pearson_chi2, rel=1e-9)


def test_a_null_level_follows_data_missing(tmp_path, rng, threads):
    """A null text level is one line naming the column and the file at the default
    ``missing: error`` (it trained as a level of its own before), and its row is skipped
    with ``missing: drop``."""
    from gd_dask.errors import DataError

    n = 600
    region = rng.choice(REGIONS[:3], n).astype(object)
    region[17] = None
    x = rng.normal(size=n)
    root = tmp_path / "d"
    root.mkdir()
    pq.write_table(pa.table({"x": x, "region": pa.array(region.tolist(), pa.string()), "y": x + rng.normal(size=n)}),
                   root / "part-0.parquet")
    data = {"path": str(root), "features": ["x", "region"], "target": "y"}
    with pytest.raises(DataError, match=r"column 'region' has 1 NaN/inf/null values \(first in .*part-0.parquet\)"):
        fit(make_config(data, tmp_path), threads)
    res = fit(make_config({**data, "missing": "drop"}, tmp_path), threads)
    assert res.converged and sorted(res.categorical[0]["levels"]) == REGIONS[:3]
    assert sum(res.categorical[0]["counts"]) == n - 1


@pytest.mark.parametrize("rows", [2, 600])
def test_a_feature_constant_within_the_levels_is_one_line_naming_it(tmp_path, rng, threads, rows):
    """A store's own attribute (constant within each store), or one row a store: nothing
    is left of the feature once the stores are absorbed. It crashed on a NaN momentum
    (found by the fuzz test with 2 rows)."""
    from gd_dask.errors import DataError

    store = np.arange(rows) % max(rows // 3, 2)
    size = rng.normal(0, 1, store.max() + 1)[store]
    root = tmp_path / "d"
    root.mkdir()
    pq.write_table(pa.table({"size": size, "store": [f"s{v}" for v in store], "y": rng.normal(0, 1, rows)}),
                   root / "part-0.parquet")
    cfg = make_config({"path": str(root), "features": ["size", "store"], "target": "y"}, tmp_path)
    with pytest.raises(DataError, match="feature 'size' is constant within every level of 'store'"):
        fit(cfg, threads)


def test_the_estimators_warnings_and_errors_name_the_users_columns(rng, caplog):
    """A DataFrame's columns train under their own names: the warning on a level whose
    rows are all of one class and the error on a null level name 'city', not the x1 the
    estimator once trained under (and the error names the partition, not a Delayed's repr);
    a column named y (the target's) falls back to x0, x1, … and still trains."""
    import logging

    import pandas as pd

    import gd_dask

    n = 3000
    X = pd.DataFrame({"age": rng.normal(size=n), "city": rng.choice(["oslo", "rome", "lima", "kyiv"], n)})
    y = (rng.random(n) < 1 / (1 + np.exp(-X.age))).astype(int)
    y[X.city.to_numpy() == "lima"] = 1
    with caplog.at_level(logging.WARNING, logger="gd_dask"):
        est = gd_dask.LogisticRegression().fit(X, y)
    assert est.separated_ == {"city": {"lima": (1.0, 1)}}
    warned = [r.getMessage() for r in caplog.records if "one class" in r.getMessage()]
    assert warned and "'city'" in warned[0] and "'x1'" not in warned[0], warned
    nulls = X.assign(city=X.city.where(np.arange(n) % 50 != 0, None))
    with pytest.raises(ValueError, match=r"column 'city' has 60 NaN/inf/null values \(first in partition 0\)"):
        gd_dask.LogisticRegression().fit(nulls, y)
    clash = gd_dask.LinearRegression().fit(X.rename(columns={"age": "y"}), X.age.to_numpy())
    assert set(clash.categorical_) == {"city"} and clash.coef_[0] == pytest.approx(1.0)


@pytest.mark.parametrize("family,weights,exposure", [("poisson", True, True), ("gamma", False, False)])
def test_one_large_column_glm_bound_holds_against_long_double_newton(tmp_path, rng, threads, family, weights,
                                                                     exposure):
    """Poisson with sample weights and an exposure, and Gamma, on a column of 400 levels
    of some 15 rows (a diagonal block) beside a 5-level one: certified at the default
    tol, and every coefficient within that bound of Newton's in long double on the
    one-hot design (the certificate's rounding carried level by level, from long-double
    rows: ``hessians.FoldedHessian``)."""
    from newton_reference import coefficients, newton_reference

    n, levels = 6000, 400
    store = rng.integers(0, levels, n)
    kind = rng.choice(["a", "b", "c", "d", "e"], n)
    X = rng.normal(0, 1, (n, 2))
    eta = -0.3 + X @ [0.4, -0.25] + rng.normal(0, 0.5, levels)[store] + (kind == "b") * 0.3
    t = rng.uniform(0.5, 2.0, n) if exposure else np.ones(n)
    y = rng.poisson(t * np.exp(eta)).astype(float) if family == "poisson" else rng.gamma(2.0, t * np.exp(eta) / 2)
    w = rng.uniform(0.2, 3.0, n) if weights else None
    cols = {"x0": X[:, 0], "kind": kind.tolist(), "x1": X[:, 1], "store": store, "y": y}
    if exposure:
        cols["t"] = t
    if weights:
        cols["w"] = w
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table(cols), tmp_path / "d" / "part-0.parquet")
    data = {"path": str(tmp_path / "d"), "features": ["x0", "kind", "x1", "store"], "target": "y",
            "categorical": ["store"]}
    data.update({"exposure": "t"} if exposure else {}, **({"weight": "w"} if weights else {}))
    res = fit(make_config(data, tmp_path, model={"loss": family}), threads)
    assert res.converged and res.convergence["digits"] >= 9, res.convergence
    model = {"b": res.b, "m": res.m, "categorical": res.categorical}
    beta, names, _, _ = newton_reference(X, (kind, store), y, w, t if exposure else None, model, family)
    err = np.abs(coefficients(model, names) - beta)
    floor = 1e-6 * np.abs(beta).max()
    assert np.max(err / np.maximum(np.abs(beta) - err, floor)) <= res.convergence["bound"]


def test_ridge_with_levels_penalizes_every_level_as_scikit_learn_does(tmp_path, rng, threads):
    """model.l2 with a text and an integer column of 150 levels: least squares and
    logistic both minimize the documented objective over [standardized slopes, every
    non-reference level's coefficient, intercept] — scikit-learn's Ridge(alpha = n·l2)
    and LogisticRegression(C = 1/(n·l2)) on [StandardScaler(x), OneHotEncoder(drop =
    references)]. (Least squares had absorbed the largest column's levels unpenalized.)
    Huber with l2 and levels is refused by name."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import OneHotEncoder

    from gd_dask.errors import ConfigError

    X, region, store, y = _logistic_files(tmp_path / "d", rng, 6000, 150)
    y_num = pd.concat([pq.read_table(f).to_pandas() for f in sorted((tmp_path / "d-num").iterdir())])["y"].to_numpy()
    data = {"path": str(tmp_path / "d"), "features": ["x0", "region", "x1", "store"], "target": "y",
            "categorical": ["store"]}
    frame = pd.DataFrame({"region": region, "store": store})
    Xs = (X - X.mean(axis=0)) / X.std(axis=0)
    n, l2 = len(y), 0.01
    for loss, target in (("squared", y_num), ("logistic", y)):
        root = tmp_path / loss
        (root / "d").mkdir(parents=True)
        for i, f in enumerate(sorted((tmp_path / "d").iterdir())):  # the files' rows in order, 2,000 each
            t = pq.read_table(f)
            rows = slice(2000 * i, 2000 * (i + 1))
            pq.write_table(t.set_column(t.column_names.index("y"), "y", pa.array(target[rows])), root / "d" / f.name)
        res = fit(make_config(dict(data, path=str(root / "d")), root, model={"loss": loss, "l2": l2}), threads)
        assert res.converged and res.convergence["digits"] >= 9, res.convergence
        refs = [doc["reference"] for doc in res.categorical]
        enc = OneHotEncoder(drop=refs, sparse_output=False).fit(frame)
        design = np.column_stack([Xs, enc.transform(frame)])
        if loss == "squared":
            ref = Ridge(alpha=n * l2, solver="cholesky").fit(design, target)
        else:
            ref = LogisticRegression(C=1 / (n * l2), solver="newton-cholesky", tol=1e-12, max_iter=100).fit(design,
                                                                                                         target)
        coef = np.ravel(ref.coef_)
        names = ["x0", "x1", *enc.get_feature_names_out(["region", "store"])]
        theirs = dict(zip(names, coef))
        theirs["x0"], theirs["x1"] = coef[0] / X[:, 0].std(), coef[1] / X[:, 1].std()
        ours = {"x0": res.m[0], "x1": res.m[1]}
        for doc in res.categorical:
            ours.update({f"{doc['name']}_{lv}": c for lv, c in zip(doc["levels"], doc["coef"])
                         if lv != doc["reference"]})
        worst = max(abs(ours[k] - v) / max(abs(v), 1e-3) for k, v in theirs.items())
        assert worst <= (1e-9 if loss == "squared" else 1e-7), (loss, worst)
    with pytest.raises(ConfigError, match="model.l2 with model.loss huber"):
        fit(make_config(data, tmp_path, model={"loss": "huber", "l2": l2}), threads)
