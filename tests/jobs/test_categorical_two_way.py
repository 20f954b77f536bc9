"""Two categorical columns of thousands of levels each (user × item): trained without a
dense level block (``optimization.two_way``), against a direct solve of the one-hot
normal equations, with and without sample weights; its certificate against the
true errors; data whose levels split into unlinked sets, refused by name."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_bounds_hold, make_config, one_hot_least_squares, predict_levels, run_cli
from scipy import sparse
from scipy.linalg import cho_factor, cho_solve

from gd_dask.artifacts.store import model_document
from gd_dask.jobs.training import fit

USERS, ITEMS = 2300, 2100  # 2,099 non-reference items: past the dense reduced problem's 2,000


def _write(root, rng, n=24000, weights=False, link=True, users=USERS, items=ITEMS):
    """x0, x1 numeric; user text (``users`` levels), item int64 (``items`` levels); every
    level seen (each user and item has a row of its own first); ``link`` False: users 0–9
    and items 0–4 share no rows with the rest."""
    USERS, ITEMS = users, items
    user = np.concatenate([np.arange(USERS), rng.integers(0, USERS, n - USERS)])
    item = np.concatenate([rng.integers(0, ITEMS, USERS), rng.integers(0, ITEMS, n - USERS)])
    item[:ITEMS] = np.arange(ITEMS)
    if not link:  # users 0–9 buy only items 0–4, and nobody else does
        inner = np.isin(item, np.arange(5)) | (user < 10)
        user[inner & (user >= 10)] = rng.integers(0, 10, int((inner & (user >= 10)).sum()))
        item[inner & (item >= 5)] = rng.integers(0, 5, int((inner & (item >= 5)).sum()))
    X = rng.normal(2, 1, (n, 2)) + rng.normal(0, 0.5, USERS)[user][:, None]
    y = 3 + X @ [1.2, -0.8] + rng.normal(0, 1, USERS)[user] + rng.normal(0, 0.7, ITEMS)[item] + rng.normal(0, 0.3, n)
    w = rng.uniform(0.2, 3.0, n) if weights else None
    root.mkdir(parents=True, exist_ok=True)
    names = np.array([f"u{u:04d}" for u in range(users)])
    for f, idx in enumerate(np.array_split(rng.permutation(n), 3)):
        cols = {"x0": X[idx, 0], "user": names[user[idx]].tolist(), "x1": X[idx, 1], "item": item[idx], "y": y[idx]}
        if weights:
            cols["w"] = w[idx]
        pq.write_table(pa.table(cols), root / f"part-{f}.parquet")
    return X, names[user], item, y, w


@pytest.mark.parametrize("weights", [False, True])
def test_two_large_columns_train_to_one_hot_least_squares(tmp_path, rng, threads, weights):
    X, user, item, y, w = _write(tmp_path / "d", rng, weights=weights)
    data = {"path": str(tmp_path / "d"), "features": ["x0", "user", "x1", "item"], "target": "y",
            "categorical": ["item"]}
    if weights:
        data["weight"] = "w"
    cfg = make_config(data, tmp_path)
    res = fit(cfg, threads)
    model = json.loads(json.dumps(model_document(cfg, res)))
    conv = model["convergence"]
    assert conv["solver"] == "conjugate gradients" and res.converged and conv["bound"] <= 1e-9, conv
    assert [len(c["levels"]) for c in model["categorical"]] == [USERS, ITEMS]
    D, beta, factor = one_hot_least_squares(X, (user, item), y, w, model)
    ref = D @ beta
    assert np.max(np.abs(predict_levels(model, X, user, item) - ref)) <= 1e-9 * np.max(np.abs(ref))
    ours = np.concatenate([[model["b"]], model["m"]] + [
        [c for lv, c in zip(doc["levels"], doc["coef"]) if lv != doc["reference"] and lv not in doc.get("pinned", ())]
        for doc in model["categorical"]])
    assert np.max(np.abs(ours - beta)) <= 1e-9 * np.max(np.abs(beta))
    # The slopes' standard errors, the levels absorbed: σ²·[(DᵀWD)⁻¹]_xx from the
    # factorization, σ² = SSR/(n − p) (as reghdfe and pyfixest report them).
    summary = model["summary"]
    assert summary["available"] and summary["nobs"] == len(y), summary
    assert [r["name"] for r in summary["coefficients"]] == ["x0", "x1"]
    block = cho_solve(factor, np.eye(D.shape[1])[:, 1:3])[1:3]
    sse = float(((y - ref) ** 2) @ (w if weights else np.ones(len(y))))
    sigma2 = sse / (len(y) - D.shape[1])
    assert summary["df_resid"] == len(y) - D.shape[1]
    for r, var in zip(summary["coefficients"], np.diag(block)):
        assert abs(r["std_err"] - np.sqrt(sigma2 * var)) <= 1e-8 * r["std_err"], (r, np.sqrt(sigma2 * var))
    assert abs(model["metrics"]["mse"] * model["metrics"]["n"] - sse) <= 1e-9 * sse


def test_the_level_bound_holds_entry_by_entry(rng):
    """``two_way_bounds.inverse_bound`` against S_BB⁻¹ v formed densely, on a small problem with Σw."""
    from gd_dask.kernels.groups import group_moments
    from gd_dask.optimization import categorical as cat
    from gd_dask.optimization.two_way import TwoWay
    from gd_dask.optimization.two_way_bounds import inverse_bound

    n, LA, LB = 3000, 120, 90
    a, b = rng.integers(0, LA, n), rng.integers(0, LB, n)
    z = np.column_stack([a, b, rng.normal(size=n), rng.normal(size=n), rng.uniform(0.5, 2, n)]).astype(float)
    g = group_moments(z, [0, 1], weighted=True)
    enc = cat.encode(g, ["a", "b"])
    tw = TwoWay(g, enc)
    dense = np.column_stack([tw.s_bb(np.eye(tw.E)[:, [j]])[:, 0] for j in range(tw.E)])
    assert np.all(dense - np.diag(np.diag(dense)) <= 1e-12)          # a Z-matrix, as the proof needs
    v = rng.uniform(0, 1, (tw.E, 2))
    v[::7, 1] = 0
    P = inverse_bound(tw, v)
    exact = np.linalg.solve(dense, v)
    assert np.all(P >= exact) and np.all(P <= 1.5 * exact + 1e-3 * exact.mean(axis=0))


@pytest.mark.parametrize("skewed", [False, True])
def test_the_certificate_bounds_an_unrefined_solution(rng, monkeypatch, skewed):
    """Each coefficient's certified absolute error against its true error: the solution
    before any correction (its errors some 1e-12) against the refined one (whose own bound
    is far below them). ``skewed``: B's levels Zipf-popular (many with a row or two), y
    far from 0, and sample weights."""
    from gd_dask.kernels.groups import group_moments
    from gd_dask.optimization import categorical as cat
    from gd_dask.optimization import two_way

    n, LA, LB = 40000, 3000, 2500
    a = rng.integers(0, LA, n)
    if skewed:
        p = 1 / np.arange(1, LB + 1) ** 1.1
        b = rng.choice(LB, size=n, p=p / p.sum())
    else:
        b = rng.integers(0, LB, n)
    X = rng.normal(5, 2, (n, 2))
    y = X @ [2.0, -1.0] + rng.normal(0, 1, LA)[a] + rng.normal(0, 1, LB)[b] + rng.normal(0, 0.5, n)
    columns = [a, b, X, y + 1000.0 if skewed else y] + ([rng.uniform(0.1, 5, n)] if skewed else [])
    g = group_moments(np.column_stack(columns).astype(float), [0, 1], weighted=skewed)
    enc = cat.encode(g, ["a", "b"])
    exact = two_way.fit_two_way(g, enc, 1e-14)
    monkeypatch.setattr(two_way, "MAX_REFINEMENTS", 0)
    monkeypatch.setattr(two_way, "SOLVE_RTOL", 1e-7)
    early = two_way.fit_two_way(g, enc, 1e-14)
    assert_bounds_hold(early, exact)


def _cli_config(tmp_path, data):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "two", "data": {"path": str(data), "target": "y", "categorical": ["item"],
                                                        "features": ["x0", "user", "x1", "item"]},
                               "output": {"dir": str(tmp_path / "out")}}))
    return cfg


def test_the_command_trains_and_evaluates_two_large_columns(tmp_path, rng):
    X, user, item, y, _ = _write(tmp_path / "d", rng, n=8000)
    r = run_cli("train", str(_cli_config(tmp_path, tmp_path / "d")), "--no-plot")
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert model["converged"] and model["convergence"]["solver"] == "conjugate gradients"
    # Users and items seen once, together: sets of their own, each with a pinned item.
    assert "share no rows with the rest" in r.stderr and model["categorical"][1]["pinned"]
    r = run_cli("evaluate", str(tmp_path / "out" / "model.json"), str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    mse = float(np.mean((y - predict_levels(model, X, user, item)) ** 2))
    assert abs(json.loads(r.stdout)["mse"] - mse) <= 1e-9 * mse, r.stdout


@pytest.mark.parametrize("users, items", [(USERS, ITEMS), (300, 200)])
def test_levels_in_unlinked_sets_get_a_reference_each(tmp_path, rng, threads, users, items):
    """Users 0–9 and items 0–4 share no rows with the rest: their set shifts freely against
    the rest, so one of its items is held at 0 (``pinned``), on the two-column solver and
    on the dense reduced problem alike, and the model is least squares'."""
    X, user, item, y, _ = _write(tmp_path / "d", rng, link=False, users=users, items=items)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "user", "x1", "item"], "target": "y",
                       "categorical": ["item"]}, tmp_path)
    res = fit(cfg, threads)
    model = json.loads(json.dumps(model_document(cfg, res)))
    item_doc = model["categorical"][1]
    # One reference in each set: the pinned item in the set the reference is not in.
    assert len(item_doc["pinned"]) == 1 and "pinned" not in model["categorical"][0]
    assert (item_doc["pinned"][0] < 5) != (item_doc["reference"] < 5)
    assert all(item_doc["coef"][item_doc["levels"].index(lv)] == 0 for lv in item_doc["pinned"])
    assert res.converged, model["convergence"]
    # The dense reduced problem's summary has every level's row; the two-column one, the
    # slopes' only.
    assert model["summary"]["available"], model["summary"]
    assert ("absorbed" in model["summary"]) == (items == ITEMS)
    D, beta, _ = one_hot_least_squares(X, (user, item), y, None, model)
    ref = D @ beta
    assert np.max(np.abs(predict_levels(model, X, user, item) - ref)) <= 1e-9 * np.max(np.abs(ref))


def test_ridge_with_two_large_columns_is_refused_by_name(tmp_path, rng, threads):
    _write(tmp_path / "d", rng, n=6000)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "user", "item"], "target": "y",
                       "categorical": ["item"]}, tmp_path, model={"l2": 0.1})
    from gd_dask.errors import ConfigError

    with pytest.raises(ConfigError, match="model.l2 with the categorical features"):
        fit(cfg, threads)


def test_levels_alone_without_numeric_features(rng):
    """No numeric feature (d = 0): the levels' coefficients equal a direct solve's."""
    from gd_dask.kernels.groups import group_moments
    from gd_dask.optimization import categorical as cat
    from gd_dask.optimization.two_way import fit_two_way

    n, LA, LB = 20000, 2600, 2300
    a, b = rng.integers(0, LA, n), rng.integers(0, LB, n)
    y = rng.normal(size=LA)[a] + rng.normal(size=LB)[b] + 1 + rng.normal(size=n) * 0.1
    g = group_moments(np.column_stack([a, b, y]).astype(float), [0, 1])
    enc = cat.encode(g, ["a", "b"])
    fit = fit_two_way(g, enc, 1e-9)
    assert fit.bound <= 1e-9 and len(fit.coef.m) == 0
    la, lb = np.searchsorted(enc.levels[0], a), np.searchsorted(enc.levels[1], b)
    keep_a, keep_b = enc.non_reference(0), enc.non_reference(1)
    pos_a = np.full(len(enc.levels[0]), -1)
    pos_a[keep_a] = np.arange(len(keep_a))
    pos_b = np.full(len(enc.levels[1]), -1)
    pos_b[keep_b] = len(keep_a) + np.arange(len(keep_b))
    rows, cols = [np.arange(n)], [np.zeros(n, dtype=int)]
    for pos, lv in ((pos_a, la), (pos_b, lb)):
        hit = pos[lv] >= 0
        rows.append(np.nonzero(hit)[0])
        cols.append(1 + pos[lv][hit])
    D = sparse.csc_matrix((np.ones(sum(len(r) for r in rows)), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n, 1 + len(keep_a) + len(keep_b)))
    beta = cho_solve(cho_factor((D.T @ D).toarray()), D.T @ y)
    pred = fit.coef.b + fit.coef.levels[0][la] + fit.coef.levels[1][lb]
    assert np.max(np.abs(pred - D @ beta)) <= 1e-9 * np.max(np.abs(D @ beta))


def test_the_estimator_takes_two_large_text_columns(tmp_path, rng):
    """``gd_dask.LinearRegression().fit(df, y)`` with two text columns of thousands of
    levels: the one-hot least squares, its summary naming the user's columns."""
    import pandas as pd

    import gd_dask

    X, user, item, y, _ = _write(tmp_path / "d", rng, n=12000)
    df = pd.DataFrame({"x0": X[:, 0], "user": user, "x1": X[:, 1], "item": [f"i{v}" for v in item]})
    est = gd_dask.LinearRegression().fit(df, y)
    assert est.converged_ and est.convergence_["solver"] == "conjugate gradients"
    model = {"b": est.intercept_, "m": est.coef_,
             "categorical": [{"levels": list(est.categorical_[c]), "coef": list(est.categorical_[c].values())}
                             for c in ("user", "item")]}
    pred = est.predict(df)
    assert np.max(np.abs(pred - predict_levels(model, X, user, df["item"].to_numpy()))) <= 1e-12 * np.max(np.abs(pred))
    summary = est.summary()
    assert [r["name"] for r in summary["coefficients"]] == ["x0", "x1"] and summary["absorbed"] == ["user", "item"]
    assert "levels of user, item absorbed" in str(summary)


@pytest.mark.parametrize("weights", [False, True])
def test_hc1_standard_errors_of_the_slopes_with_two_large_columns(tmp_path, rng, threads, weights):
    """``summary.cov_type: HC1``: the slopes' White sandwich on the one-hot design,
    A⁻¹·Dᵀdiag((w·e)²)D·A⁻¹·n/(n − p) with A = DᵀWD, as statsmodels' WLS HC1 forms it."""
    X, user, item, y, w = _write(tmp_path / "d", rng, n=12000, weights=weights)
    data = {"path": str(tmp_path / "d"), "features": ["x0", "user", "x1", "item"], "target": "y",
            "categorical": ["item"]}
    if weights:
        data["weight"] = "w"
    cfg = make_config(data, tmp_path, summary={"cov_type": "HC1"})
    res = fit(cfg, threads)
    model = json.loads(json.dumps(model_document(cfg, res)))
    summary = model["summary"]
    assert summary["available"] and summary["cov_type"] == "HC1", summary
    D, beta, factor = one_hot_least_squares(X, (user, item), y, w, model)
    e = y - D @ beta
    s = e ** 2 if w is None else (w * e) ** 2
    meat = (D.multiply(s[:, None]).T @ D).toarray()
    cov = cho_solve(factor, cho_solve(factor, meat).T) * len(y) / (len(y) - D.shape[1])
    for r, var in zip(summary["coefficients"], np.diag(cov)[1:3]):
        assert abs(r["std_err"] - np.sqrt(var)) <= 1e-8 * r["std_err"], (r, np.sqrt(var))


def test_logistic_with_unlinked_sets_of_levels(tmp_path, rng, threads):
    """Newton passes take the same encoding: users 0–9 and items 0–4 share no rows with the
    rest, one of their items is pinned, and the probabilities are scikit-learn's Newton
    solver's on the one-hot design with the references and the pinned level dropped."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    X, user, item, y_num, _ = _write(tmp_path / "num", rng, n=12000, link=False, users=60, items=40)
    eta = (y_num - y_num.mean()) / y_num.std()
    y = (rng.random(len(eta)) < 1 / (1 + np.exp(-eta))).astype(float)
    pq.write_table(pa.table({"x0": X[:, 0], "user": user.tolist(), "x1": X[:, 1], "item": item, "y": y}),
                   tmp_path / "num" / "part-0.parquet")
    for f in (1, 2):
        (tmp_path / "num" / f"part-{f}.parquet").unlink()
    cfg = make_config({"path": str(tmp_path / "num"), "features": ["x0", "user", "x1", "item"], "target": "y",
                       "categorical": ["item"]}, tmp_path, model={"loss": "logistic"})
    res = fit(cfg, threads)
    # Certified to 8–9 digits on such data (9.4 with every level linked): the set's own
    # reference costs the per-coefficient bound some of its precision.
    assert res.strategy == "newton" and res.convergence["digits"] >= 8, res.convergence
    item_doc = res.categorical[1]
    assert len(item_doc["pinned"]) == 1 and item_doc["coef"][item_doc["levels"].index(item_doc["pinned"][0])] == 0
    cols = [X]
    for doc, values in zip(res.categorical, (user, item)):
        keep = [lv for lv in doc["levels"] if lv != doc["reference"] and lv not in doc.get("pinned", ())]
        cols.append((pd.Series(values).to_numpy()[:, None] == np.array(keep, dtype=object)[None, :]).astype(float))
    ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-14, max_iter=1000).fit(np.hstack(cols), y)
    model = {"b": res.b, "m": res.m, "categorical": res.categorical}
    ours = 1 / (1 + np.exp(-predict_levels(model, X, user, item)))
    assert np.max(np.abs(ours - ref.predict_proba(np.hstack(cols))[:, 1])) <= 1e-8
    assert ref.n_iter_[0] < 1000
