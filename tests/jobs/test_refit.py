"""Nightly refits: ten simulated nights of appended partitions, the gate, the registry."""

import json
import shutil
from pathlib import Path
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from nights import DAY_ROWS as ROWS
from nights import START, add_day, slope
from gd_dask.config import validate_config
from gd_dask.artifacts.registry import Registry
from gd_dask.jobs.refit import refit


NO_CHECKS = {"rows": None, "mean_shift": None, "sd_ratio": None, "r2_drop": None, "resid_sd_ratio": None}


def config(tmp_path, registry="models", checks=True, **extra):
    raw = {"name": "nightly",
           "data": {"path": str(tmp_path / "data"), "features": ["x1", "x2"], "target": "y", "window_days": 4},
           "optimizer": {},
           "registry": {"dir": str(tmp_path / registry), "promote": {"metric": "rmse", "max_regression": 0.02}}}
    if not checks:
        raw["registry"]["validate"] = NO_CHECKS
    for k, v in extra.items():
        raw.setdefault(k, {}).update(v)
    return validate_config(raw)


def night(day: int) -> date:
    return START + timedelta(days=day)


def test_ten_nights_read_only_new_files_track_the_drift_and_match_a_scratch_fit(client, tmp_path):
    cfg = config(tmp_path)
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(3):
        add_day(tmp_path / "data", day)
    reads = []
    for day in range(3, 13):
        add_day(tmp_path / "data", day)
        outcome = refit(cfg, client, night(day))
        reads.append(outcome.files_read)
        assert outcome.promoted, outcome.message
        current = reg.current_model()
        trained_on = [slope(d) for d in range(day - 3, day)]  # window of 4, newest day held out
        assert current["m"][0] == pytest.approx(np.mean(trained_on), abs=0.05)
    assert reads[0] == 8 and reads[1:] == [2] * 9  # first night: 4 days; then the newest day only
    assert len(reg.versions()) == 10

    # Incremental statistics give the model of a fit from scratch on the same days.
    scratch = config(tmp_path, registry="scratch")
    refit(scratch, client, night(12))
    fresh = Registry(scratch.registry.dir, scratch.name).current_model()
    np.testing.assert_allclose(fresh["m"], current["m"], rtol=1e-9)
    assert fresh["b"] == pytest.approx(current["b"], rel=1e-9)


def test_a_corrupted_night_is_rejected_and_reruns_change_nothing(client, tmp_path):
    """The gate alone (night checks off): a corrupted night that enters training makes a
    worse challenger, which is rejected."""
    cfg = config(tmp_path, checks=False)
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(4):
        add_day(tmp_path / "data", day)
    assert refit(cfg, client, night(3)).promoted
    add_day(tmp_path / "data", 4, corrupt=True)
    refit(cfg, client, night(4))  # judged on the corrupted day, trained on clean ones
    good = reg.current()
    add_day(tmp_path / "data", 5)
    outcome = refit(cfg, client, night(5))  # the corrupted day now enters training
    assert not outcome.promoted and "rejected" in outcome.message
    assert reg.current() == good
    assert reg.verdict(outcome.version)["promoted"] is False

    before = (Path(reg.root) / "current.json").read_bytes(), reg.versions()
    again = refit(cfg, client, night(5))
    assert "nothing to do" in again.message and again.status == "rejected"  # the same verdict: exit 3 again
    assert ((Path(reg.root) / "current.json").read_bytes(), reg.versions()) == before


def test_a_second_refit_is_refused_while_one_holds_the_lock(tmp_path):
    cfg = config(tmp_path)
    for day in range(3):
        add_day(tmp_path / "data", day)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    with Registry(cfg.registry.dir, cfg.name).lock():
        res = run_cli("refit", path, "--as-of", night(2).isoformat())
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert "another refit holds the lock" in line and "pid" in line


def test_models_list_show_and_promote_roll_back(client, tmp_path):
    cfg = config(tmp_path)
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(5):
        add_day(tmp_path / "data", day)
    first = refit(cfg, client, night(3)).version
    second = refit(cfg, client, night(4)).version
    assert reg.current() == second
    model = str(reg.root)
    res = run_cli("models", "promote", model, first)
    assert res.returncode == 0 and reg.current() == first
    listed = run_cli("models", "list", model).stdout.splitlines()
    assert listed[0].startswith(f"* {first}") and listed[1].startswith(f"  {second}")
    shown = json.loads(run_cli("models", "show", model).stdout)
    assert shown["version"] == first and shown["model"]["m"] == reg.current_model()["m"]
    bad = run_cli("models", "promote", model, "1999-01-01T000000Z")
    assert bad.returncode == 2 and "no version" in bad.stderr  # a version name is a usage error (issue 29)


def test_a_warm_start_from_a_model_with_other_features_is_refused(client, tmp_path):
    cfg = config(tmp_path)
    for day in range(4):
        add_day(tmp_path / "data", day)
    refit(cfg, client, night(3))
    other = config(tmp_path, data={"features": ["x1"]})
    from gd_dask.errors import ArtifactError

    with pytest.raises(ArtifactError, match=r"current model has features \['x1', 'x2'\]"):
        refit(other, client, night(3))


def test_weighted_refits_use_weighted_statistics(client, tmp_path):
    """With data.weight the cached per-file statistics are weighted: night two, built
    from the cache plus one new day, equals weighted least squares on its training days."""
    rng = np.random.default_rng(5)
    rows = {}
    for day in range(4):
        folder = tmp_path / "data" / f"date={night(day).isoformat()}"
        folder.mkdir(parents=True)
        X = rng.normal(size=(ROWS, 2)) + [3.0, -1.0]
        y = X @ [1.0 + day, -0.5] + 2.0 + rng.normal(scale=0.3, size=ROWS)
        w = rng.uniform(0.1, 3.0, size=ROWS)
        pq.write_table(pa.table({"x1": X[:, 0], "x2": X[:, 1], "y": y, "w": w}), folder / "part-0000.parquet")
        rows[day] = (X, y, w)
    cfg = config(tmp_path, checks=False, data={"weight": "w", "window_days": 3})  # its truth jumps nightly
    refit(cfg, client, night(2))
    second = refit(cfg, client, night(3))  # trains on days 1, 2 (day 1 from the cache); holds out 3
    assert second.files_read == 1  # only the new day; day 2 came with the holdout pass of night one
    X, y, w = (np.concatenate([rows[d][i] for d in (1, 2)]) for i in range(3))
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]) * sw[:, None], y * sw, rcond=None)
    reg = Registry(cfg.registry.dir, cfg.name)
    doc = json.loads(Path(reg.version_dir(second.version), "model.json").read_text())
    np.testing.assert_allclose(doc["m"], coef[:2], rtol=1e-8)
    assert doc["b"] == pytest.approx(coef[2], rel=1e-8)


def test_the_first_night_of_a_new_pipeline_trains_on_what_there_is_and_promotes_it(client, tmp_path):
    """One date partition and no current model used to exit 1 ("a refit needs at least
    2"): a cron job must work from day one."""
    cfg = config(tmp_path)
    reg = Registry(cfg.registry.dir, cfg.name)
    add_day(tmp_path / "data", 0)
    first = refit(cfg, client, night(0))
    assert first.promoted and "first model" in first.message and reg.current() == first.version
    assert first.verdict["holdout_dates"] == [] and first.verdict["challenger"]["n"] == 2 * ROWS
    assert reg.current_model()["m"][0] == pytest.approx(slope(0), abs=0.05)
    add_day(tmp_path / "data", 1)
    second = refit(cfg, client, night(1))  # from now on: trained on day 0, judged on day 1
    assert second.verdict["holdout_dates"] == [night(1).isoformat()] and second.verdict["current"] is not None
    res = run_cli("models", "list", str(tmp_path / "models" / "nightly"))
    assert res.returncode == 0 and first.version in res.stdout


def test_exit_codes_events_history_and_diff_tell_monitoring_what_happened(tmp_path):
    cfg = config(tmp_path, checks=False)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({**cfg.model_dump(mode="json"), "cluster": {"n_workers": 1}}))
    for day in range(4):
        add_day(tmp_path / "data", day)
    ok = run_cli("refit", path, "--as-of", night(3).isoformat())
    assert ok.returncode == 0 and "promoted" in ok.stdout
    assert "threads of this process" in ok.stderr  # a small window: no worker processes to start
    again = run_cli("refit", path, "--as-of", night(3).isoformat())
    assert again.returncode == 0 and "nothing to do" in again.stdout
    add_day(tmp_path / "data", 4, corrupt=True)
    assert run_cli("refit", path, "--as-of", night(4).isoformat()).returncode in (0, 3)
    add_day(tmp_path / "data", 5)
    rejected = run_cli("refit", path, "--as-of", night(5).isoformat())
    assert rejected.returncode == 3 and "rejected" in rejected.stdout  # current untouched

    reg = Registry(cfg.registry.dir, cfg.name)
    events = reg.events()
    assert len(events) == 3, events  # the rerun repeated night 3's verdict and wrote nothing
    assert events[0]["status"] == "promoted" and events[-1]["status"] == "rejected"
    assert events[-1]["metric"] == "rmse" and events[-1]["files_read"] >= 1 and events[-1]["seconds"] > 0
    model = str(reg.root)
    hist = run_cli("models", "history", model, "--plot", tmp_path / "h.png")
    assert hist.returncode == 0 and (tmp_path / "h.png").exists()
    assert len(hist.stdout.splitlines()) == 1 + len(events) + 1 and "rejected" in hist.stdout
    v1, v2 = reg.versions()[0], reg.versions()[-1]
    diff = run_cli("models", "diff", model, v1, v2)
    assert diff.returncode == 0 and "x1" in diff.stdout and "holdout rmse" in diff.stdout
    doc = json.loads(run_cli("models", "diff", model, v1, v2, "--json").stdout)
    assert doc["promoted"] == [True, False] and doc["windows"][1]["holdout"] == [night(5).isoformat()]


def _bad_night(root, day: int, kind: str):
    """Night ``day`` gone wrong in one way."""
    rng = np.random.default_rng(7000 + day)
    folder = root / f"date={(START + timedelta(days=day)).isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(2):
        n = ROWS // 2 if kind == "half" else ROWS
        X = rng.normal(size=(n, 2)) + [3.0, -1.0]
        y = slope(day) * X[:, 0] - 0.5 * X[:, 1] + 2.0 + rng.normal(scale=0.3, size=n)
        if kind == "shuffled":
            y = rng.permutation(y)
        if kind == "unit":
            X[:, 1] *= 1000  # x2 now in other units
        cols = {"x1": X[:, 0], "x2": X[:, 1], "y": y}
        if kind == "missing":
            del cols["x2"]
        if kind == "integer":
            cols["x2"] = np.round(X[:, 1] * 100).astype(np.int64)  # x2 now int64, in cents
        table = pa.table(cols)
        if kind == "duplicated":
            table = pa.concat_tables([table, table])
        pq.write_table(table, folder / f"part-{f:04d}.parquet")


@pytest.mark.parametrize("kind", ["shuffled", "unit", "half", "missing", "integer", "duplicated"])
def test_a_bad_night_is_quarantined_the_night_it_lands(client, tmp_path, kind):
    cfg = config(tmp_path)
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(5):
        add_day(tmp_path / "data", day)
    assert refit(cfg, client, night(3)).promoted and refit(cfg, client, night(4)).promoted
    good = reg.current()
    _bad_night(tmp_path / "data", 5, kind)
    outcome = refit(cfg, client, night(5))
    assert outcome.status == "quarantined" and reg.current() == good, outcome.message
    assert night(5).isoformat() in reg.quarantined()
    checks = {c["check"] for c in outcome.verdict["checks"]}
    expected = {"shuffled": {"r2_drop", "resid_sd_ratio"}, "unit": {"mean_shift", "sd_ratio"},
                "half": {"rows"}, "missing": {"schema"}, "integer": {"schema"}, "duplicated": {"rows"}}[kind]
    assert checks & expected, outcome.verdict["checks"]
    add_day(tmp_path / "data", 6)
    after = refit(cfg, client, night(6))  # trained without the bad night, judged on a good one
    assert after.promoted, after.message
    assert night(5).isoformat() not in after.verdict["train_dates"] + after.verdict["holdout_dates"]


def test_sixty_nights_of_slow_drift_raise_no_false_alarm(client, tmp_path):
    cfg = config(tmp_path)
    for day in range(3):
        add_day(tmp_path / "data", day)
    statuses = []
    for day in range(3, 63):
        add_day(tmp_path / "data", day)
        statuses.append(refit(cfg, client, night(day)).status)
    assert statuses.count("quarantined") == 0, statuses


def test_cli_exits_3_on_a_quarantined_night(tmp_path):
    cfg = config(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({**cfg.model_dump(mode="json"), "cluster": {"n_workers": 1}}))
    for day in range(4):
        add_day(tmp_path / "data", day)
    assert run_cli("refit", path, "--as-of", night(3).isoformat()).returncode == 0
    _bad_night(tmp_path / "data", 4, "unit")
    res = run_cli("refit", path, "--as-of", night(4).isoformat())
    assert res.returncode == 3 and "quarantined" in res.stdout and "'x2'" in res.stdout


def test_a_night_reads_its_new_files_and_a_few_cache_objects_whatever_the_window(client, tmp_path, monkeypatch):
    """Issue 21: a night reads the new night's files (footers included) and at most
    CONSOLIDATE_NIGHTS + 1 cache objects, not one per night of the window or per file;
    what came from the cache, and how it was grouped, leaves the model's bits alone."""
    from gd_dask.artifacts import stats_cache
    from gd_dask.data import footers as footer_module

    def add_night(day: int, scale: float = 1.0):
        rng = np.random.default_rng(day)
        folder = tmp_path / "data" / f"date={night(day).isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(10):
            X = rng.normal(size=(50, 2)) * scale + [3.0, -1.0]
            y = X @ [1.0, -0.5] + 2.0 + rng.normal(scale=0.3, size=50)
            pq.write_table(pa.table({"x1": X[:, 0], "x2": X[:, 1], "y": y}), folder / f"part-{f:04d}.parquet")

    footers = []
    real_footer = footer_module._read_footer
    monkeypatch.setattr(footer_module, "_read_footer", lambda fs, p, info=None: footers.append(p) or real_footer(fs, p, info))
    cfg = config(tmp_path, checks=False, data={"window_days": 6})
    for day in range(6):
        add_night(day)
    first = refit(cfg, client, night(5))
    assert first.files_read == 60 and len(footers) == 60
    stats = tmp_path / "models" / "nightly" / "stats"
    assert [p.name.startswith("base-") for p in stats.iterdir()] == [True]  # consolidated at once
    for day in range(6, 13):
        if day == 12:  # the same registry without its cache: every file read again
            shutil.copytree(tmp_path / "models", tmp_path / "uncached")
            shutil.rmtree(tmp_path / "uncached" / "nightly" / "stats")
        footers.clear()
        add_night(day)
        if day == 9:  # a file of a night the base holds is rewritten: read again
            add_night(7, scale=1.5)
        outcome = refit(cfg, client, night(day))
        rewritten = 10 if day == 9 else 0
        assert outcome.promoted and outcome.files_read == 10 + rewritten, outcome.message
        assert len(footers) == 10 + rewritten
        assert all(f"date={night(day).isoformat()}" in p or rewritten for p in footers)
        event = Registry(cfg.registry.dir, cfg.name).events()[-1]
        assert event["cache_objects_read"] <= stats_cache.CONSOLIDATE_NIGHTS + 1, event
        assert len(list(stats.iterdir())) <= stats_cache.CONSOLIDATE_NIGHTS  # the base and the nights since
    cached = Registry(cfg.registry.dir, cfg.name).current_model()
    again = refit(config(tmp_path, registry="uncached", checks=False, data={"window_days": 6}), client, night(12))
    assert again.files_read == 60
    uncached = Registry(str(tmp_path / "uncached"), "nightly").current_model()
    assert cached["m"] == uncached["m"] and cached["b"] == uncached["b"]


def test_a_refit_over_files_planned_from_the_listing_gives_the_same_model(client, tmp_path, monkeypatch):
    """Issue 21: a window of many small files is planned from the listing (the tasks read
    the footers); each file's statistics, and so the model, are those of reading every
    footer on the client."""
    from gd_dask.data import footers

    for day in range(5):
        add_day(tmp_path / "data", day)
    with_footers = refit(config(tmp_path, registry="footers"), client, night(4))
    monkeypatch.setattr(footers, "FOOTERLESS_MIN_FILES", 3)  # 8 files in the window: from the listing
    planned = refit(config(tmp_path, registry="listing"), client, night(4))
    assert with_footers.promoted and planned.promoted and planned.files_read == with_footers.files_read
    a = Registry(str(tmp_path / "footers"), "nightly").current_model()
    b = Registry(str(tmp_path / "listing"), "nightly").current_model()
    assert a["m"] == b["m"] and a["b"] == b["b"]
    again = refit(config(tmp_path, registry="listing"), client, night(4))  # the same night: nothing new
    assert again.files_read == 0


def test_cached_moments_come_back_to_the_bit_and_earlier_releases_entries_still_count(tmp_path):
    """Entries keep float64 values as base64 of their bytes (exact, half the size of JSON
    numbers); a per-night object an earlier release wrote, with JSON lists, still reads."""
    from gd_dask.kernels.moments import Moments

    rng = np.random.default_rng(3)
    mom = Moments(1234, rng.normal(size=3) * 1e7, rng.normal(size=(3, 3)) / 3)
    key = {"path": "/d/date=2026-11-01/a.parquet", "size": 10, "stamp": 1.5, "columns": ["x1", "x2", "y"],
           "missing": "error", "row_filters": [], "partition": {"date": "2026-11-01"}}
    reg = Registry(str(tmp_path / "models"), "m")
    reg.stats.put(key, mom)
    reg.stats.flush()
    back = Registry(str(tmp_path / "models"), "m").stats.moments(key)
    assert back.n == 1234 and np.array_equal(back.mean, mom.mean) and np.array_equal(back.comoment, mom.comoment)

    (path,) = (tmp_path / "models" / "m" / "stats").iterdir()
    path.write_text(json.dumps({"files": {key["path"]: {"key": key, "moments": {
        "n": 1234, "mean": mom.mean.tolist(), "comoment": mom.comoment.tolist()}}}}))
    legacy = Registry(str(tmp_path / "models"), "m").stats.moments(key)
    assert np.array_equal(legacy.mean, mom.mean) and np.array_equal(legacy.comoment, mom.comoment)
    assert Registry(str(tmp_path / "models"), "m").stats.moments({**key, "size": 11}) is None  # rewritten
