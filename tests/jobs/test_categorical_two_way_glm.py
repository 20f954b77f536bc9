"""Logistic and Poisson with two categorical columns of thousands of levels each (user ×
item), by IRLS steps solved with the two-column solver (``jobs.categorical_irls``):
against Newton's method on the one-hot design with its gradient in long double, every
coefficient within its certified bound (on every step the certificate is tried on, not
only the last); levels whose rows are all of one class (or all 0) set aside as fixest
does, their rows predicted exactly; by command, model.json (format 3) and predict."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_config, run_cli
from newton_reference import coefficients, newton_reference

import gd_dask.jobs.categorical_irls as irls
from gd_dask.data.write import LevelTable
from gd_dask.jobs.training import fit

# 2,100 × 1,950 levels: their pairs (4.1M) are past the dense Newton path's 4M cells.
USERS, ITEMS = 2100, 1950


def _write(root, rng, family: str, n=50000, weights=False, exposure=False):
    """x0, x1 numeric; user text, item int64; every level seen; y logistic or Poisson
    (with ``exposure``: a column ``t`` of exposures); a few users and items whose every
    row is 0 (and, for logistic, 1)."""
    user = np.concatenate([np.arange(USERS), rng.integers(0, USERS, n - USERS)])
    item = np.concatenate([rng.integers(0, ITEMS, USERS), rng.integers(0, ITEMS, n - USERS)])
    item[:ITEMS] = np.arange(ITEMS)
    X = rng.normal(0, 1, (n, 2)) + rng.normal(0, 0.3, USERS)[user][:, None]
    eta = -0.4 + X @ [0.7, -0.5] + rng.normal(0, 0.5, USERS)[user] + rng.normal(0, 0.4, ITEMS)[item]
    t = rng.uniform(0.5, 2.0, n) if exposure else np.ones(n)
    if family == "logistic":
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
        y[user == 7] = 1.0
    elif family == "poisson":
        y = rng.poisson(t * np.exp(eta)).astype(float)
    else:  # gamma, shape 2: positive, nothing separated
        y = rng.gamma(2.0, t * np.exp(eta) / 2.0)
    if family != "gamma":
        y[user == 3] = 0.0
        y[item == 11] = 0.0
    w = rng.uniform(0.2, 3.0, n) if weights else None
    root.mkdir(parents=True, exist_ok=True)
    names = np.array([f"u{u:04d}" for u in range(USERS)])
    for f, idx in enumerate(np.array_split(rng.permutation(n), 3)):
        cols = {"x0": X[idx, 0], "user": names[user[idx]].tolist(), "x1": X[idx, 1], "item": item[idx], "y": y[idx]}
        if exposure:
            cols["t"] = t[idx]
        if weights:
            cols["w"] = w[idx]
        pq.write_table(pa.table(cols), root / f"part-{f}.parquet")
    return X, names[user], item, y, w, (t if exposure else None)


def _table(doc) -> dict:
    t = LevelTable.of_doc(doc)
    return dict(zip(t.keys.tolist(), t.coef.tolist()))


def _eta(model, X, user, item, t=None):
    """model.json's linear predictor, separated levels at their ±2^k (``of_doc``)."""
    from gd_dask.data.read import level_key

    eta = model["b"] + X @ np.asarray(model["m"])
    for doc, values in zip(model["categorical"], (user, item)):
        table = _table(doc)
        eta = eta + np.array([table[level_key(v)] for v in values.tolist()])
    return eta + (np.log(t) if t is not None else 0.0)


def _check_steps(steps, beta, model, names, at_least: int) -> None:
    """Every step whose certificate held: each coefficient within its bound of the
    reference's (``at_least`` such steps)."""
    certified = [s for s in steps if np.isfinite(s[1])]
    assert len(certified) >= at_least, [s[1] for s in steps]
    for new, bound, errors, enc in certified:
        docs = [{"levels": [enc.label(c, i) for i in range(len(enc.levels[c]))]} for c in range(2)]
        got = np.concatenate(([new.b], new.m, *[[dict(zip(docs[c]["levels"], new.levels[c]))[lv] for lv in levels]
                                               for c, levels in enumerate(names)]))
        err = _absolute_errors(errors, model, names, docs)
        assert np.all(np.abs(got - beta) <= err), (bound, np.max(np.abs(got - beta) - err))


def _absolute_errors(errors, model, names, enc_docs):
    """A ``TwoWayFit.errors`` in the reference's order."""
    out = [errors.b, *errors.m]
    for c, (doc, levels) in enumerate(zip(enc_docs, names)):
        table = dict(zip(doc["levels"], errors.levels[c]))
        out += [table[lv] for lv in levels]
    return np.array(out)


@pytest.mark.parametrize("family,weights,exposure", [("logistic", False, False), ("poisson", True, True),
                                                     ("gamma", False, False)])
def test_two_large_columns_glm_against_newton_in_long_double(tmp_path, rng, threads, monkeypatch, family, weights,
                                                             exposure):
    """Every step whose certificate holds (tried on every step here) bounds each
    coefficient's true error; the last meets tol; the probabilities or rates are
    Newton's to 1e-12; the separated levels are the ones the data set aside."""
    X, user, item, y, w, t = _write(tmp_path / "d", rng, family, weights=weights, exposure=exposure)
    data = {"path": str(tmp_path / "d"), "features": ["x0", "user", "x1", "item"], "target": "y",
            "categorical": ["item"]}
    if weights:
        data["weight"] = "w"
    if exposure:
        data["exposure"] = "t"
    cfg = make_config(data, tmp_path, model={"loss": family})
    steps = []
    certify = irls.certify

    def recorded(fit_, model, new, groups, enc, *rest):
        bound, errors = certify(fit_, model, new, groups, enc, *rest)
        steps.append((new, bound, errors, enc))
        return bound, errors

    monkeypatch.setattr(irls, "certify", recorded)
    monkeypatch.setattr(irls, "CERTIFY_BELOW", 1.0)  # the certificate on every step, far ones too
    res = fit(cfg, threads)
    assert res.converged and res.convergence["digits"] >= 9, res.convergence
    model = {"b": res.b, "m": res.m, "categorical": res.categorical}
    sep = {doc["name"]: {s["level"]: s["target"] for s in doc.get("separated", ())} for doc in res.categorical}
    if family != "gamma":
        assert sep["user"]["u0003"] == 0 and sep["item"][11] == 0
    if family == "logistic":
        assert sep["user"]["u0007"] == 1
    beta, names, fisher, phi = newton_reference(X, (user, item), y, w, t, model, family)
    ours = coefficients(model, names)
    assert np.max(np.abs(ours - beta)) <= 1e-11 * np.max(np.abs(beta))
    # The slopes' standard errors: Fisher's information on the one-hot design, inverted.
    d = len(model["m"])
    se = np.sqrt(phi * np.diag(np.linalg.inv(fisher))[1:1 + d])
    rows = res.summary["coefficients"]
    assert res.summary["absorbed"] == ["user", "item"] and [r["name"] for r in rows] == ["x0", "x1"]
    assert np.allclose([r["std_err"] for r in rows], se, rtol=1e-8, atol=0)
    _check_steps(steps, beta, model, names, at_least=1)
    # The rows at separated levels are predicted exactly: probability or rate 0 (1).
    eta = _eta(model, X, user, item, t)
    mu = 1 / (1 + np.exp(-eta)) if family == "logistic" else np.exp(eta)
    away = np.isin(user, list(sep.get("user", ()))) | np.isin(item, list(sep.get("item", ())))
    assert np.array_equal(mu[away], y[away]) and not np.isin(user, list(sep["user"]))[~away].any()
    if family != "logistic":
        return
    # From the reference moved by some 1e-8: the first step's certificate carries the
    # Hessian's change along the way (its quadratic term, far above the rounding's), and
    # still bounds the truth.
    steps.clear()
    moved = rng.normal(0, 1e-8, len(beta)) * np.abs(beta).max()
    init_levels = []
    at = 1 + d
    for doc, levels in zip(model["categorical"], names):
        table = dict(zip(levels, beta[at:at + len(levels)] + moved[at:at + len(levels)]))
        init_levels.append({"name": doc["name"], "levels": doc["levels"],
                            "coef": [table.get(lv, 0.0) for lv in doc["levels"]]})
        at += len(levels)
    fit(cfg, threads, init=(beta[1:1 + d] + moved[1:1 + d], beta[0] + moved[0]), init_levels=init_levels)
    assert np.isfinite(steps[0][1]) and steps[0][1] > 1e3 * res.convergence["bound"], steps[0][1]
    _check_steps(steps, beta, model, names, at_least=2)


def test_the_command_trains_predicts_and_evaluates_with_separated_levels(tmp_path, rng):
    """model.json is format 3 with each separated level's target and round; predict
    writes probabilities that are exactly 0 or 1 at those levels; evaluate reads it."""
    X, user, item, y, _, _ = _write(tmp_path / "d", rng, "logistic", n=30000)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "t", "data": {"path": str(tmp_path / "d"), "target": "y",
                                                     "features": ["x0", "user", "x1", "item"],
                                                     "categorical": ["item"]},
                               "model": {"loss": "logistic"}, "output": {"dir": str(tmp_path / "out")}}))
    r = run_cli("train", cfg)
    assert r.returncode == 0, r.stderr
    assert "separated" in r.stderr and "as fixest does" in r.stderr
    doc = json.loads((tmp_path / "out" / "model.json").read_text())
    assert doc["format"] == "gd_dask.model/3" and doc["converged"]
    users = {s["level"]: s for s in doc["categorical"][0]["separated"]}
    assert users["u0003"]["target"] == 0 and users["u0007"]["target"] == 1 and users["u0007"]["round"] == 1
    r = run_cli("predict", tmp_path / "out" / "model.json", tmp_path / "d", tmp_path / "pred", "--keys", "user,y")
    assert r.returncode == 0, r.stderr
    pred = pq.read_table(str(tmp_path / "pred")).to_pandas()
    col = [c for c in pred.columns if c not in ("user", "y")][0]
    at = pred["user"].isin(["u0003", "u0007"]).to_numpy()
    assert at.sum() > 20 and np.array_equal(pred[col].to_numpy()[at], pred["y"].to_numpy()[at])
    r = run_cli("evaluate", tmp_path / "out" / "model.json", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert np.isfinite(json.loads(r.stdout)["log_loss"])


def test_the_logistic_estimator_takes_two_large_text_columns_with_separated_levels(tmp_path, rng):
    """``gd_dask.LogisticRegression().fit(df, y)``: ``categorical_`` holds ±inf for the
    separated levels, ``separated_`` their target and round, ``predict_proba`` is exactly
    the target at their rows, and the summary names the user's columns as absorbed."""
    import pandas as pd

    import gd_dask

    X, user, item, y, _, _ = _write(tmp_path / "d", rng, "logistic", n=30000)
    df = pd.DataFrame({"x0": X[:, 0], "user": user, "x1": X[:, 1], "item": [f"i{v}" for v in item]})
    est = gd_dask.LogisticRegression().fit(df, y)
    assert est.converged_, est.convergence_
    assert est.categorical_["user"]["u0007"] == np.inf and est.categorical_["user"]["u0003"] == -np.inf
    assert est.separated_["user"]["u0007"] == (1, 1) and est.separated_["item"]["i11"][0] == 0
    p = est.predict_proba(df)[:, 1]
    at = np.isin(user, list(est.separated_["user"])) | np.isin(df["item"], list(est.separated_["item"]))
    assert np.array_equal(p[at], y[at]) and np.all((p[~at] > 0) & (p[~at] < 1))
    summary = est.summary()
    assert [r["name"] for r in summary["coefficients"]] == ["x0", "x1"] and summary["absorbed"] == ["user", "item"]
