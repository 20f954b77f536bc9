"""Three and four categorical columns, two of them of thousands of levels (user × item
beside region and device): the two-column solver with the others' levels as indicator
columns (``optimization.many_way``), against a direct solve of the one-hot normal
equations; its certificate against the true errors; the limits refused by name."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_bounds_hold, make_config, one_hot_least_squares, predict_levels, run_cli
from scipy.linalg import cho_solve

from gd_dask.artifacts.store import model_document
from gd_dask.jobs.training import fit

USERS, ITEMS = 2300, 2100  # past the dense reduced problem's 2,000 levels besides the largest
REGIONS, DEVICES = 7, 4


def _write(root, rng, n=24000, weights=False, regions=REGIONS):
    """x0, x1 numeric; user text, item int64 (every level seen), region text of
    ``regions`` levels and device int64 of 4, each with its own effect."""
    user = np.concatenate([np.arange(USERS), rng.integers(0, USERS, n - USERS)])
    item = rng.integers(0, ITEMS, n)
    item[:ITEMS] = rng.permutation(ITEMS)
    region = rng.integers(0, regions, n)
    device = rng.integers(0, DEVICES, n)
    X = rng.normal(2, 1, (n, 2)) + rng.normal(0, 0.5, USERS)[user][:, None]
    y = (3 + X @ [1.2, -0.8] + rng.normal(0, 1, USERS)[user] + rng.normal(0, 0.7, ITEMS)[item]
         + rng.normal(0, 1, regions)[region] + np.array([0.0, 0.5, -0.3, 1.1])[device] + rng.normal(0, 0.3, n))
    w = rng.uniform(0.2, 3.0, n) if weights else None
    root.mkdir(parents=True, exist_ok=True)
    users = np.array([f"u{u:04d}" for u in range(USERS)])
    regions_txt = np.array([f"r{r:03d}" for r in range(regions)])
    for f, idx in enumerate(np.array_split(rng.permutation(n), 3)):
        cols = {"x0": X[idx, 0], "region": regions_txt[region[idx]].tolist(), "user": users[user[idx]].tolist(),
                "x1": X[idx, 1], "item": item[idx], "device": device[idx], "y": y[idx]}
        if weights:
            cols["w"] = w[idx]
        pq.write_table(pa.table(cols), root / f"part-{f}.parquet")
    return X, (regions_txt[region], users[user], item, device), y, w


DATA = {"features": ["x0", "region", "user", "x1", "item", "device"], "target": "y",
        "categorical": ["item", "device"]}


def _command_config(tmp_path, **sections):
    """A run config for ``gd-dask train`` on ``tmp_path / "d"``, the output in ``tmp_path / "out"``."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "four", "data": dict(DATA, path=str(tmp_path / "d")),
                               "output": {"dir": str(tmp_path / "out")}, **sections}))
    return cfg


@pytest.mark.parametrize("weights", [False, True])
def test_four_columns_two_large_train_to_one_hot_least_squares(tmp_path, rng, threads, weights):
    X, columns, y, w = _write(tmp_path / "d", rng, weights=weights)
    data = dict(DATA, path=str(tmp_path / "d"), **({"weight": "w"} if weights else {}))
    cfg = make_config(data, tmp_path)
    res = fit(cfg, threads)
    model = json.loads(json.dumps(model_document(cfg, res)))
    conv = model["convergence"]
    assert conv["solver"] == "conjugate gradients" and res.converged and conv["bound"] <= 1e-9, conv
    assert [len(c["levels"]) for c in model["categorical"]] == [REGIONS, USERS, ITEMS, DEVICES]
    D, beta, factor = one_hot_least_squares(X, columns, y, w, model)
    ref = D @ beta
    assert np.max(np.abs(predict_levels(model, X, *columns) - ref)) <= 1e-9 * np.max(np.abs(ref))
    ours = np.concatenate([[model["b"]], model["m"]] + [
        [c for lv, c in zip(doc["levels"], doc["coef"]) if lv != doc["reference"] and lv not in doc.get("pinned", ())]
        for doc in model["categorical"]])
    assert np.max(np.abs(ours - beta)) <= 1e-9 * np.max(np.abs(beta))
    # Rows for the slopes and for region's and device's levels (user and item absorbed):
    # σ²·[(DᵀWD)⁻¹] from the factorization, as statsmodels' OLS on the one-hot design.
    summary = model["summary"]
    assert summary["available"] and summary["absorbed"] == ["user", "item"], summary
    names = ["x0", "x1"] + [f"region[{lv}]" for lv in model["categorical"][0]["levels"]
                            if lv != model["categorical"][0]["reference"]]
    names += [f"device[{lv}]" for lv in model["categorical"][3]["levels"] if lv != model["categorical"][3]["reference"]]
    assert [r["name"] for r in summary["coefficients"]] == names
    # D's columns: [1, x0, x1, region's, user's, item's, device's levels].
    at = np.r_[1:3, 3:3 + REGIONS - 1, D.shape[1] - (DEVICES - 1):D.shape[1]]
    block = cho_solve(factor, np.eye(D.shape[1])[:, at])[at]
    sse = float(((y - ref) ** 2) @ (w if weights else np.ones(len(y))))
    sigma2 = sse / (len(y) - D.shape[1])
    assert summary["df_resid"] == len(y) - D.shape[1]
    for r, var in zip(summary["coefficients"], np.diag(block)):
        assert abs(r["std_err"] - np.sqrt(sigma2 * var)) <= 1e-8 * r["std_err"], (r, np.sqrt(sigma2 * var))


def test_the_certificate_bounds_an_unrefined_solution(rng, monkeypatch):
    """Each coefficient's certified absolute error, the smaller columns' levels among the
    dense block's, against its true error: the solution before any correction against
    the refined one (whose own bound is far below them)."""
    from gd_dask.kernels.groups import group_moments
    from gd_dask.optimization import categorical as cat
    from gd_dask.optimization import many_way, two_way

    n, LA, LB = 40000, 3000, 2500
    a, b = rng.integers(0, LA, n), rng.integers(0, LB, n)
    c = rng.choice(6, size=n, p=[0.5, 0.3, 0.1, 0.07, 0.02, 0.01])
    X = rng.normal(5, 2, (n, 2))
    y = X @ [2.0, -1.0] + rng.normal(0, 1, LA)[a] + rng.normal(0, 1, LB)[b] + rng.normal(0, 1, 6)[c] \
        + rng.normal(0, 0.5, n)
    g = group_moments(np.column_stack([a, c, b, X, y]).astype(float), [0, 1, 2])
    enc = cat.encode(g, ["a", "c", "b"])
    lifted = many_way.lift(g, enc)
    assert lifted.big == [0, 2] and lifted.d == 2 and lifted.groups.within.shape[0] == 2 + 5 + 1
    exact = two_way.fit_two_way(lifted.groups, lifted.enc, 1e-14)
    monkeypatch.setattr(two_way, "MAX_REFINEMENTS", 0)
    monkeypatch.setattr(two_way, "SOLVE_RTOL", 1e-7)
    early = two_way.fit_two_way(lifted.groups, lifted.enc, 1e-14)
    assert_bounds_hold(early, exact)
    # Each coefficient of the dense block has its own bound: the rare levels' larger.
    assert early.errors.m[2 + 4] > 3 * early.errors.m[0]
    coef = many_way.lower(exact.coef, lifted, enc)
    assert [len(v) for v in coef.levels] == [LA, 6, LB] and coef.levels[1][enc.reference[1]] == 0


def test_the_command_trains_and_evaluates_four_columns(tmp_path, rng):
    X, columns, y, _ = _write(tmp_path / "d", rng, n=8000)
    r = run_cli("train", str(_command_config(tmp_path)), "--no-plot")
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert model["converged"] and model["convergence"]["solver"] == "conjugate gradients"
    r = run_cli("evaluate", str(tmp_path / "out" / "model.json"), str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    mse = float(np.mean((y - predict_levels(model, X, *columns)) ** 2))
    assert abs(json.loads(r.stdout)["mse"] - mse) <= 1e-9 * mse, r.stdout


def test_too_many_levels_beside_the_two_largest_are_refused_by_name(tmp_path, rng):
    """More than ``many_way.MAX_INDICATORS`` levels outside the two largest columns: one
    line naming both and the limit, no model."""
    _write(tmp_path / "d", rng, n=8000, regions=200)
    r = run_cli("train", str(_command_config(tmp_path)), "--no-plot")
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "levels outside 'user' and 'item'" in line and "at most 128 together" in line, line
    assert not (tmp_path / "out" / "model.json").exists()


def test_a_level_nested_in_a_large_column_is_refused_by_name(tmp_path, rng):
    """A region level all of whose rows belong to one user cannot be told from that
    user's coefficient: one line naming the level."""
    X, columns, y, _ = _write(tmp_path / "d", rng, n=8000)
    for f in range(3):
        path = tmp_path / "d" / f"part-{f}.parquet"
        t = pq.read_table(path)
        region = np.array(t.column("region").to_pylist(), dtype=object)
        region[np.array(t.column("user").to_pylist()) == "u0007"] = "solo"
        pq.write_table(t.set_column(t.schema.get_field_index("region"), "region", pa.array(region.tolist())), path)
    for f in range(3):  # and no other user's row is in "solo"
        t = pq.read_table(tmp_path / "d" / f"part-{f}.parquet")
        users = np.array(t.column("user").to_pylist())
        assert set(np.array(t.column("region").to_pylist())[users != "u0007"]) <= {f"r{r:03d}" for r in range(7)}
    r = run_cli("train", str(_command_config(tmp_path)), "--no-plot")
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert ("categorical feature 'region': level 'solo' cannot be told from the levels of 'user' and 'item'"
            in line), line


def _write_glm(root, rng, family: str, n: int, users: int, items: int):
    """Four columns as ``_write``'s, y logistic or Poisson; user u0003's rows all 0."""
    user = np.concatenate([np.arange(users), rng.integers(0, users, n - users)])
    item = rng.integers(0, items, n)
    item[:items] = rng.permutation(items)
    region, device = rng.integers(0, REGIONS, n), rng.integers(0, DEVICES, n)
    X = rng.normal(0, 1, (n, 2))
    eta = (-0.4 + X @ [0.7, -0.5] + rng.normal(0, 0.5, users)[user] + rng.normal(0, 0.4, items)[item]
           + rng.normal(0, 0.5, REGIONS)[region] + np.array([0.0, 0.3, -0.2, 0.6])[device])
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float) if family == "logistic" else rng.poisson(np.exp(eta))
    y = y.astype(float)
    y[user == 3] = 0.0
    root.mkdir(parents=True, exist_ok=True)
    names = np.array([f"u{u:04d}" for u in range(users)])
    regions = np.array([f"r{r:03d}" for r in range(REGIONS)])
    for f, idx in enumerate(np.array_split(rng.permutation(n), 3)):
        pq.write_table(pa.table({"x0": X[idx, 0], "region": regions[region[idx]].tolist(),
                                 "user": names[user[idx]].tolist(), "x1": X[idx, 1], "item": item[idx],
                                 "device": device[idx], "y": y[idx]}), root / f"part-{f}.parquet")
    return X, (regions[region], names[user], item, device), y


@pytest.mark.parametrize("family", ["logistic", "poisson"])
def test_four_columns_glm_against_newton_in_long_double(tmp_path, rng, threads, monkeypatch, family):
    """IRLS steps with the smaller columns' levels as indicators (``jobs.categorical_irls``
    routed there by lowering the dense Newton path's limits, so that the one-hot reference
    stays small): every coefficient within its certified bound of Newton's on the one-hot
    design, and the slopes' and levels' standard errors Fisher's."""
    from newton_reference import coefficients, newton_reference

    import gd_dask.jobs.categorical_irls as irls
    import gd_dask.jobs.categorical_newton as dense

    monkeypatch.setattr(dense, "MAX_NEWTON_LEVELS", 100)
    monkeypatch.setattr(dense, "MAX_PAIR_CELLS", 1000)
    X, columns, y = _write_glm(tmp_path / "d", rng, family, n=20000, users=300, items=250)
    cfg = make_config(dict(DATA, path=str(tmp_path / "d")), tmp_path, model={"loss": family})
    steps = []
    certify = irls.certify

    def recorded(fit_, model, new, groups, enc, *rest):
        bound, errors = certify(fit_, model, new, groups, enc, *rest)
        steps.append((new, bound, errors))
        return bound, errors

    monkeypatch.setattr(irls, "certify", recorded)
    monkeypatch.setattr(irls, "CERTIFY_BELOW", 1.0)
    res = fit(cfg, threads)
    assert res.converged and res.convergence["solver"] == "IRLS, conjugate gradients", res.convergence
    model = {"b": res.b, "m": res.m, "categorical": res.categorical}
    assert {s["level"] for s in model["categorical"][1]["separated"]} == {"u0003"}
    beta, names, fisher, phi = newton_reference(X, columns, y, None, None, model, family)
    ours = coefficients(model, names)
    assert np.max(np.abs(ours - beta)) <= 1e-11 * np.max(np.abs(beta))
    # Each certified step's every coefficient (in the solver's order: b, slopes and the
    # smaller columns' levels, then user's and item's) within its bound of the reference's.
    certified = [s for s in steps if np.isfinite(s[1])]
    assert certified
    order = [len(model["m"])] + [len(v) for v in names]
    parts = np.split(beta, np.cumsum([1] + order[:-1]))[1:]  # slopes, region, user, item, device
    ref_dense = np.concatenate([parts[0], parts[1], parts[4]])
    for new, _, errors in certified:
        dense_block = np.asarray(new.m)
        assert np.all(np.abs(dense_block - ref_dense) <= errors.m), np.max(np.abs(dense_block - ref_dense) - errors.m)
    # Standard errors: the slopes' and region's and device's levels', Fisher's inverse.
    d = len(model["m"])
    k = [1 + d, len(names[0]), len(names[1]) + len(names[2]), len(names[3])]
    at = np.r_[1:1 + d, k[0]:k[0] + k[1], sum(k[:3]):sum(k)]
    se = np.sqrt(phi * np.diag(np.linalg.inv(fisher))[at])
    rows = res.summary["coefficients"]
    assert res.summary["absorbed"] == ["user", "item"]
    assert [r["name"] for r in rows][:3] == ["x0", "x1", f"region[{names[0][0]}]"] and len(rows) == len(at)
    assert np.allclose([r["std_err"] for r in rows], se, rtol=1e-7, atol=0)


def test_the_command_trains_logistic_with_four_columns(tmp_path, rng):
    """At the real limits (2,100 × 1,950 levels: pairs past the dense Newton path's), by
    command: converged, and evaluate reads the four columns' levels back to training's
    log loss."""
    _write_glm(tmp_path / "d", rng, "logistic", n=50000, users=2100, items=1950)
    r = run_cli("train", str(_command_config(tmp_path, model={"loss": "logistic"})), "--no-plot")
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert model["converged"] and model["convergence"]["solver"] == "IRLS, conjugate gradients", model["convergence"]
    assert model["summary"]["available"] and model["summary"]["absorbed"] == ["user", "item"]
    r = run_cli("evaluate", str(tmp_path / "out" / "model.json"), str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    got, trained = json.loads(r.stdout)["log_loss"], model["metrics"]["log_loss"]
    assert abs(got - trained) <= 1e-12 * trained, (got, trained)


@pytest.mark.parametrize("weights", [False, True])
def test_hc1_standard_errors_of_the_dense_block(tmp_path, rng, threads, weights):
    """``summary.cov_type: HC1``: the slopes' and the smaller columns' levels' rows equal
    the one-hot design's sandwich (DᵀWD)⁻¹·Dᵀ diag((w·e)²) D·(DᵀWD)⁻¹·n/(n − p)."""
    X, columns, y, w = _write(tmp_path / "d", rng, n=12000, weights=weights)
    data = dict(DATA, path=str(tmp_path / "d"), **({"weight": "w"} if weights else {}))
    cfg = make_config(data, tmp_path, summary={"cov_type": "HC1"})
    res = fit(cfg, threads)
    model = json.loads(json.dumps(model_document(cfg, res)))
    summary = model["summary"]
    assert summary["available"] and summary["cov_type"] == "HC1", summary
    D, beta, factor = one_hot_least_squares(X, columns, y, w, model)
    e = y - D @ beta
    s = e * e if w is None else (w * e) ** 2
    meat = (D.multiply(s[:, None])).T @ D
    at = np.r_[1:3, 3:3 + REGIONS - 1, D.shape[1] - (DEVICES - 1):D.shape[1]]
    left = cho_solve(factor, np.eye(D.shape[1])[:, at])
    cov = left.T @ (meat @ left) * len(y) / (len(y) - D.shape[1])
    se = np.sqrt(np.diag(cov))
    assert len(summary["coefficients"]) == len(at)
    for r, want in zip(summary["coefficients"], se):
        assert abs(r["std_err"] - want) <= 1e-8 * want, (r, want)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_a_nightly_refit_with_four_columns(tmp_path, threads, monkeypatch, loss):
    """Nightly refits through the many-way solvers (routed there by lowering the dense
    paths' limits, so that a night stays small): least squares from the cached grouped
    moments equals the one-hot fit of the window; logistic warm-starts from the current
    model over all four columns and lands where a cold fit of the same nights does."""
    from datetime import date, timedelta

    import gd_dask.jobs.categorical_newton as dense
    import gd_dask.optimization.categorical as cat
    from gd_dask.artifacts.registry import Registry
    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit

    monkeypatch.setattr(cat, "MAX_DENSE_LEVELS", 20)
    monkeypatch.setattr(dense, "MAX_NEWTON_LEVELS", 20)
    monkeypatch.setattr(dense, "MAX_PAIR_CELLS", 100)
    start = date(2026, 11, 1)

    def night(day):
        rng = np.random.default_rng(day)
        n = 3000
        user, item = rng.integers(0, 60, n), rng.integers(0, 40, n)
        region, device = rng.integers(0, 5, n), rng.integers(0, 3, n)
        x = rng.normal(0, 1, n)
        eta = (0.5 + 0.1 * day) * x + np.sin(user) + np.cos(item) * 0.5 + 0.3 * region - 0.4 * device
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float) if loss == "logistic" \
            else eta + rng.normal(0, 0.3, n)
        folder = tmp_path / "data" / f"date={(start + timedelta(days=day)).isoformat()}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"x": x, "user": [f"u{u}" for u in user], "item": item,
                                 "region": [f"r{r}" for r in region], "device": device, "y": y}),
                       folder / "part-0.parquet")

    features = ["x", "user", "item", "region", "device"]
    cfg = validate_config({"name": "four", "model": {"loss": loss},
                           "data": {"path": str(tmp_path / "data"), "features": features,
                                    "categorical": ["item", "device"], "target": "y", "window_days": 3},
                           "registry": {"dir": str(tmp_path / "models")}})
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(2):
        night(day)
    for day in range(1, 5):
        if day > 1:
            night(day)
        outcome = refit(cfg, threads, start + timedelta(days=day))
        assert outcome.status in ("promoted", "rejected"), outcome.message
    model = reg.current_model()
    assert model["converged"], model["convergence"]
    assert model["convergence"].get("solver") in ("conjugate gradients", "IRLS, conjugate gradients")
    train = outcome.verdict["train_dates"]
    data = {"path": str(tmp_path / "data"), "features": features, "categorical": ["item", "device"], "target": "y",
            "filters": [["date", ">=", train[0]], ["date", "<=", train[1]]]}
    cold = fit(make_config(data, tmp_path, model={"loss": loss}), threads)
    import json as _json
    from pathlib import Path

    latest = _json.loads((Path(reg.version_dir(outcome.version)) / "model.json").read_text())
    scale = max(np.max(np.abs(cold.m)), abs(cold.b))
    assert np.max(np.abs(np.asarray(latest["m"]) - cold.m)) <= 2e-9 * scale
    for doc, cold_doc in zip(latest["categorical"], cold.categorical):
        assert doc["levels"] == cold_doc["levels"] and doc["reference"] == cold_doc["reference"]
        assert np.max(np.abs(np.asarray(doc["coef"]) - cold_doc["coef"])) <= 2e-9 * scale


def test_logistic_with_four_columns_has_the_same_bits_on_threads_and_processes(tmp_path, rng, threads, client,
                                                                               monkeypatch):
    """The IRLS steps, float64 ones and certified ones, on threads of this process and on
    two worker processes: the same model, bit for bit (the passes merge in a fixed tree)."""
    import gd_dask.jobs.categorical_newton as dense

    monkeypatch.setattr(dense, "MAX_NEWTON_LEVELS", 100)
    monkeypatch.setattr(dense, "MAX_PAIR_CELLS", 1000)
    _write_glm(tmp_path / "d", rng, "logistic", n=20000, users=300, items=250)
    cfg = make_config(dict(DATA, path=str(tmp_path / "d")), tmp_path, model={"loss": "logistic"})
    a, b = fit(cfg, threads), fit(cfg, client)
    assert a.convergence["solver"] == "IRLS, conjugate gradients" and a.converged
    assert np.array_equal(a.m, b.m) and a.b == b.b and a.epochs_run == b.epochs_run
    assert [c["coef"] for c in a.categorical] == [c["coef"] for c in b.categorical]
