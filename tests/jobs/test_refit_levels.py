"""Nightly refits and sweeps of models with categorical features (issue 33): per-file
moments by level cached, a level first seen on a night scored as its reference until a
later night trains it, the guard's report of new and vanished levels, logistic warm
starts across a change of reference level, and a sweep of rates on the grouped moments."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_config, predict_levels

from gd_dask.artifacts.registry import Registry
from gd_dask.config import validate_config
from gd_dask.jobs.refit import refit

START = date(2026, 11, 1)
ROWS = 1500
EFFECT = {"north": 0.0, "south": 1.5, "east": -2.0, "west": 0.7, "central": 3.0}
STORE_EFFECT = np.array([0.0, 0.4, -0.3, 1.1, -0.8, 0.2])


def _regions(day: int) -> list[str]:
    """Which regions a night has: 'central' opens on night 4, 'west' closes after night 4."""
    regions = ["north", "south", "east"] + (["west"] if day <= 4 else []) + (["central"] if day >= 4 else [])
    return regions


def _write_night(root, day: int, logistic: bool = False) -> None:
    """Two files a night: y = (1 + 0.2·day)·x + region's and store's effects + noise
    (0/1 from the same score, for logistic). North is the most frequent region until
    night 3, south from then on (the reference level changes)."""
    rng = np.random.default_rng(day)
    folder = root / f"date={(START + timedelta(days=day)).isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    regions = _regions(day)
    weights = np.ones(len(regions))
    weights[regions.index("north" if day < 3 else "south")] = 4.0
    for f in range(2):
        x = rng.normal(2.0, 1.0, ROWS)
        region = rng.choice(regions, ROWS, p=weights / weights.sum())
        store = rng.integers(0, len(STORE_EFFECT), ROWS)
        score = (1 + 0.2 * day) * x + np.array([EFFECT[r] for r in region]) + STORE_EFFECT[store]
        y = (rng.random(ROWS) < 1 / (1 + np.exp(-(score - 3)))).astype(float) if logistic \
            else score + rng.normal(0, 0.3, ROWS)
        pq.write_table(pa.table({"x": x, "region": region.tolist(), "store": store, "y": y}),
                       folder / f"part-{f}.parquet")


def _config(tmp_path, **model):
    return validate_config({"name": "levels", "model": model,
                            "data": {"path": str(tmp_path / "data"), "features": ["x", "region", "store"],
                                     "categorical": ["store"], "target": "y", "window_days": 3},
                            "registry": {"dir": str(tmp_path / "models")}})


def _rows(tmp_path, dates):
    tables = [pq.read_table(p) for d in dates for p in sorted((tmp_path / "data" / f"date={d}").glob("*.parquet"))]
    t = pa.concat_tables(tables)
    return (t["x"].to_numpy(), np.array(t["region"].to_pylist()), t["store"].to_numpy(), t["y"].to_numpy())


def _one_hot_lstsq(model, x, region, store, y):
    cols = [np.ones(len(x)), x]
    for doc, values in zip(model["categorical"], (region, store)):
        cols += [(values == level).astype(float) for level in doc["levels"] if level != doc["reference"]]
    D = np.column_stack(cols)
    return D @ np.linalg.lstsq(D, y, rcond=None)[0]


def test_refit_with_levels_follows_the_drift_from_cached_grouped_moments(tmp_path, client):
    cfg = _config(tmp_path)
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(2):
        _write_night(tmp_path / "data", day)
    slopes = []
    for day in range(1, 7):
        if day > 1:
            _write_night(tmp_path / "data", day)
        outcome = refit(cfg, client, START + timedelta(days=day))
        assert outcome.promoted, outcome.message
        model = reg.current_model()
        assert model["format"] == "gd_dask.model/2" and model["converged"], model["convergence"]
        # The challenger is least squares on the one-hot design of its training nights.
        train = outcome.verdict["train_dates"]
        dates = [d for d in ((START + timedelta(days=i)).isoformat() for i in range(day + 1))
                 if train[0] <= d <= train[1]]
        x, region, store, y = _rows(tmp_path, dates)
        expect = _one_hot_lstsq(model, x, region, store, y)
        assert np.max(np.abs(predict_levels(model, x, region, store, unseen=0.0) - expect)) <= 1e-9 * np.max(np.abs(expect))
        slopes.append(model["m"][0])
        if day >= 3:  # the training nights' grouped moments came from the cache
            assert outcome.files_read == 2, outcome.message
        levels = {c["column"]: c for c in outcome.verdict.get("levels", [])}
        if day == 4:  # central opens on the held-out night: scored as the reference, reported
            assert levels["region"]["new"] == ["central"] and "new level" in outcome.message
            assert "central" not in dict(zip(*[model["categorical"][0][k] for k in ("levels", "coef")]))
        if day >= 5:  # west closed after night 4, which still trains; central has entered training
            assert levels["region"]["vanished"] == ["west"] and levels["region"]["new_count"] == 0
            assert "central" in model["categorical"][0]["levels"]
        if day < 4:
            assert "region" not in levels
    assert slopes == sorted(slopes)  # the slope grows every night: the refits follow it
    event = reg.events(last=1)[0]
    assert event["levels"] == outcome.verdict.get("levels", [])


def test_a_logistic_refit_with_levels_warm_starts_across_a_new_reference(tmp_path, client):
    """Logistic trains by Newton passes from the current model; the window's reference
    region changes from north to south on night 4 and central is new: the warm start
    re-expresses the levels and the challenger equals a cold fit of the same nights."""
    from gd_dask.jobs.training import fit

    cfg = _config(tmp_path, loss="logistic")
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(2):
        _write_night(tmp_path / "data", day, logistic=True)
    for day in range(1, 6):
        if day > 1:
            _write_night(tmp_path / "data", day, logistic=True)
        outcome = refit(cfg, client, START + timedelta(days=day))
        assert outcome.status in ("promoted", "rejected"), outcome.message
    model = reg.current_model()
    assert model["strategy"] == "newton" and model["converged"]
    region = model["categorical"][0]
    assert region["reference"] == "south" and "central" in region["levels"]
    train = outcome.verdict["train_dates"]
    cold_cfg = make_config({"path": str(tmp_path / "data"), "features": ["x", "region", "store"],
                            "categorical": ["store"], "target": "y",
                            "filters": [["date", ">=", train[0]], ["date", "<=", train[1]]]},
                           tmp_path, model={"loss": "logistic"})
    cold = fit(cold_cfg, client)
    import json
    from pathlib import Path

    latest = json.loads((Path(reg.version_dir(outcome.version)) / "model.json").read_text())
    assert np.allclose(latest["m"], cold.m, rtol=1e-8) and abs(latest["b"] - cold.b) <= 1e-8 * max(1, abs(cold.b))
    for doc, cold_doc in zip(latest["categorical"], cold.categorical):
        assert doc["levels"] == cold_doc["levels"] and doc["reference"] == cold_doc["reference"]
        assert np.allclose(doc["coef"], cold_doc["coef"], rtol=1e-8, atol=1e-10)
    # Warm: fewer passes than the cold fit from the intercept-only model.
    assert latest["epochs_run"] <= cold.epochs_run


def test_a_sweep_with_levels_descends_on_the_grouped_moments(tmp_path, client):
    from gd_dask.errors import ConfigError
    from gd_dask.jobs.sweep import sweep

    _write_night(tmp_path / "data", 0)
    cfg = make_config({"path": str(tmp_path / "data"), "features": ["x", "region", "store"],
                       "categorical": ["store"], "target": "y"}, tmp_path, optimizer={"strategy": "gram"})
    rows = sweep(cfg, client, [0.001, 0.1, "auto"])
    status = {r["rate"]: r for r in rows}
    assert status["auto"]["status"] == "converged"
    assert status["0.001"]["epochs"] > status["auto"]["epochs"]
    logistic = make_config({"path": str(tmp_path / "data"), "features": ["x", "region", "store"],
                            "categorical": ["store"], "target": "y"}, tmp_path, model={"loss": "logistic"})
    with pytest.raises(ConfigError, match="Newton steps, which have no learning rate"):
        sweep(logistic, client, [0.1])


def test_a_warm_start_keeps_every_prediction_under_a_new_reference():
    """The current model's levels re-expressed against the window's reference: each
    known level predicts what it did; a new level starts at the old reference's effect."""
    from types import SimpleNamespace

    from gd_dask.data.read import level_key
    from gd_dask.jobs.categorical_newton import warm_levels

    new = ["a", "b", "c", "d"]
    keys = np.array(sorted(level_key(v) for v in new))
    text = {level_key(v): v for v in new}
    enc = SimpleNamespace(columns=["r"], levels=[keys], reference=[int(np.flatnonzero(keys == level_key("b"))[0])])
    coef, b = warm_levels([{"name": "r", "levels": ["a", "b", "c"], "coef": [0.0, 1.0, -2.0]}], enc, 5.0)
    predicted = {text[k]: b + a for k, a in zip(keys, coef)}
    assert predicted == {"a": 5.0, "b": 6.0, "c": 3.0, "d": 5.0}
    assert coef[enc.reference[0]] == 0.0
