"""Levels of a GLM's categorical features whose rows are all of one class (or all 0) have
no finite optimum: set aside round by round (``jobs.separation``) on the dense Newton
path too, their coefficients ±inf in model.json (format 3), the rest scikit-learn's
unpenalized fit of the rows left; with l2 nothing is set aside."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_config

from gd_dask.artifacts.model import load_model
from gd_dask.artifacts.store import save_run
from gd_dask.jobs.training import fit


def _write(root, rng, n=8000):
    """x0, x1; region (12 text levels), store (40 integers): store 3 all 0 (round 1);
    region 'r0' all 1 but for its rows at store 3 (round 2, once store 3 is set aside);
    store 7 all 0 but for its rows in 'r0' (round 3)."""
    region = rng.integers(0, 12, n)
    store = rng.integers(0, 40, n)
    X = rng.normal(0, 1, (n, 2))
    eta = X @ [0.8, -0.5] + rng.normal(0, 0.5, 12)[region] + rng.normal(0, 0.5, 40)[store]
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    y[region == 0] = 1.0
    y[store == 3] = 0.0
    y[store == 7] = np.where(region[store == 7] == 0, 1.0, 0.0)
    names = np.array([f"r{i}" for i in range(12)])
    root.mkdir(parents=True)
    pq.write_table(pa.table({"x0": X[:, 0], "region": names[region].tolist(), "x1": X[:, 1], "store": store,
                             "y": y}), root / "part-0.parquet")
    return X, names[region], store, y


def test_separated_levels_are_set_aside_on_the_dense_newton_path(tmp_path, rng, threads):
    from sklearn.linear_model import LogisticRegression

    X, region, store, y = _write(tmp_path / "d", rng)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path, model={"loss": "logistic"})
    res = fit(cfg, threads)
    assert res.strategy == "newton" and res.converged, res.convergence
    sep = {doc["name"]: {s["level"]: (s["target"], s["round"]) for s in doc.get("separated", ())}
           for doc in res.categorical}
    assert sep == {"region": {"r0": (1, 2)}, "store": {3: (0, 1), 7: (0, 3)}}
    # The rest: scikit-learn's unpenalized Newton fit of the rows at no separated level.
    keep = (region != "r0") & (store != 3) & (store != 7)
    frame = pd.DataFrame({"region": region[keep], "store": store[keep]})
    cols = [X[keep]]
    for doc in res.categorical:
        levels = [lv for lv in doc["levels"] if lv != doc["reference"] and lv not in doc.get("pinned", ())]
        cols.append((frame[doc["name"]].to_numpy()[:, None] == np.array(levels, dtype=object)[None, :]).astype(float))
    ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-14, max_iter=1000).fit(np.hstack(cols),
                                                                                               y[keep])
    assert np.allclose(res.m, ref.coef_[0][:2], rtol=1e-6, atol=1e-9)
    assert res.b == pytest.approx(ref.intercept_[0], rel=1e-6)
    # model.json: format 3; the saved model predicts the separated rows exactly.
    save_run(tmp_path / "out", cfg, res, plot=False)
    doc = json.loads((tmp_path / "out" / "model.json").read_text())
    assert doc["format"] == "gd_dask.model/3"
    model = load_model(tmp_path / "out" / "model.json")
    p = model.predict(pd.DataFrame({"x0": X[:, 0], "region": region, "x1": X[:, 1], "store": store}))
    away = ~keep
    assert np.array_equal(p[away], y[away]) and np.all((p[keep] > 0) & (p[keep] < 1))
    assert 0 < res.metrics["log_loss"] < np.log(2)


def test_with_l2_nothing_is_set_aside(tmp_path, rng, threads):
    _write(tmp_path / "d", rng)
    cfg = make_config({"path": str(tmp_path / "d"), "features": ["x0", "region", "x1", "store"], "target": "y",
                       "categorical": ["store"]}, tmp_path, model={"loss": "logistic", "l2": 0.01})
    res = fit(cfg, threads)
    assert res.converged and not any(doc.get("separated") for doc in res.categorical)
