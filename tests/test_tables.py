"""Issue 30: lakehouse tables read as their logs say (Delta Lake through the deltalake
package); Iceberg is recognized and refused, not read wrong."""

import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import make_config, run_cli

deltalake = pytest.importorskip("deltalake")


def _rows(rng, n, slope):
    x = rng.normal(size=(n, 2))
    return pa.table({"x0": x[:, 0], "x1": x[:, 1], "y": x @ [slope, -1.0] + 2 + rng.normal(size=n)})


def _lstsq(table):
    X = np.column_stack([table["x0"].to_numpy(), table["x1"].to_numpy(), np.ones(table.num_rows)])
    return np.linalg.lstsq(X, table["y"].to_numpy(), rcond=None)[0]


def _data(path, **extra):
    return {"path": str(path), "features": ["x0", "x1"], "target": "y", **extra}


@pytest.fixture
def history(tmp_path, rng):
    """A table overwritten, appended to, deleted from and compacted: five versions whose
    old files stay on disk."""
    from deltalake import DeltaTable, write_deltalake

    path = tmp_path / "table"
    write_deltalake(path, _rows(rng, 3000, 5.0))                 # v0: 3,000 rows, slope 5
    write_deltalake(path, _rows(rng, 2000, 1.0), mode="overwrite")  # v1: 2,000 rows, slope 1
    write_deltalake(path, _rows(rng, 1000, 1.0), mode="append")     # v2: 3,000 rows
    DeltaTable(path).delete("x0 > 1.0")                              # v3: fewer
    DeltaTable(path).optimize.compact()                              # v4: one file
    return path


def test_a_delta_table_is_read_as_its_log_says_not_as_its_folder(history, tmp_path, threads):
    from deltalake import DeltaTable

    from gd_dask.training import fit

    live = DeltaTable(history).to_pyarrow_table()
    on_disk = len(list(history.rglob("*.parquet")))
    res = fit(make_config(_data(history), tmp_path), threads)
    assert res.source.n_rows == live.num_rows and on_disk > len(res.source.files)
    np.testing.assert_allclose(np.append(res.m, res.b), _lstsq(live), rtol=1e-8)
    assert res.source.fingerprint()["table"] == {"format": "delta", "version": DeltaTable(history).version()}


def test_a_version_gives_the_older_rows_and_is_recorded_in_the_model(history, tmp_path):
    from deltalake import DeltaTable

    old = DeltaTable(history, version=0).to_pyarrow_table()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "t", "data": _data(history, version=0), "output": {"dir": str(tmp_path / "o")}}))
    res = run_cli("train", cfg)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "o" / "model.json").read_text())
    assert doc["data"]["table"] == {"format": "delta", "version": 0} and doc["data"]["n_rows"] == old.num_rows
    np.testing.assert_allclose(doc["m"] + [doc["b"]], _lstsq(old), rtol=1e-8)
    # format: parquet reads every file as listed (today's behaviour, asked for by name)
    every = make_config(_data(history, format="parquet"), tmp_path)
    from gd_dask.data import open_source

    assert open_source(every.data).n_rows > DeltaTable(history).to_pyarrow_table().num_rows


def test_unsupported_reader_features_and_iceberg_are_refused_in_one_line(tmp_path, rng):
    from deltalake import write_deltalake

    dv = tmp_path / "dv"
    write_deltalake(dv, _rows(rng, 100, 1.0), configuration={"delta.enableDeletionVectors": "true"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "t", "data": _data(dv), "output": {"dir": str(tmp_path / "o")}}))
    res = run_cli("train", cfg)
    assert res.returncode == 2 and "deletionVectors" in res.stderr.strip().splitlines()[-1], res.stderr
    ice = tmp_path / "ice" / "metadata"
    ice.mkdir(parents=True)
    (ice / "v1.metadata.json").write_text("{}")
    cfg.write_text(json.dumps({"name": "t", "data": _data(ice.parent), "output": {"dir": str(tmp_path / "o")}}))
    res = run_cli("train", cfg)
    assert res.returncode == 2 and "Iceberg" in res.stderr, res.stderr


def test_nightly_refits_on_a_delta_table_read_its_live_files(tmp_path, rng, threads):
    """A table partitioned by date, a night appended each day; a night rewritten upstream
    (its rows deleted and written again) leaves its old file on disk, unread. A rerun of
    the date reads the snapshot its first run read; data.version names another."""
    from datetime import date, timedelta

    from deltalake import DeltaTable, write_deltalake

    from gd_dask.config import validate_config
    from gd_dask.refit import refit
    from gd_dask.registry import Registry

    path = tmp_path / "table"

    def night(day, slope=1.0):
        t = _rows(rng, 500, slope)
        return t.append_column("date", pa.array([(date(2026, 11, 1) + timedelta(days=day)).isoformat()] * 500))

    cfg = validate_config({"name": "delta", "data": {**_data(path), "window_days": 3},
                           "registry": {"dir": str(tmp_path / "models")}})
    for day in range(4):
        write_deltalake(path, night(day), mode="append", partition_by=["date"])
        assert refit(cfg, threads, date(2026, 11, 1) + timedelta(days=day)).status == "promoted"
    DeltaTable(path).delete("date = '2026-11-04'")  # night 3 rewritten upstream
    write_deltalake(path, night(3, slope=1.02), mode="append", partition_by=["date"])
    assert "nothing to do" in refit(cfg, threads, date(2026, 11, 4)).message  # a rerun: its first snapshot
    newest = cfg.model_copy(update={"data": cfg.data.model_copy(update={"version": DeltaTable(path).version()})})
    again = refit(newest, threads, date(2026, 11, 4))  # told otherwise: the rewritten night is judged
    assert again.status in ("promoted", "rejected") and "nothing to do" not in again.message
    assert again.verdict["challenger"]["n"] == 500  # judged on the live night, not its deleted file too
    live = DeltaTable(path).to_pyarrow_table().filter(pa.compute.field("date") >= "2026-11-02")
    model = Registry(cfg.registry.dir, cfg.name).current_model()
    assert model["data"]["table"]["format"] == "delta"
    assert sum(f["rows"] for f in model["data"]["files"]) == live.num_rows - 500  # the training nights only


def test_a_rerun_reads_the_snapshot_its_first_run_read(tmp_path, rng, threads):
    """Idempotence on a table: a commit after the night's refit (here the night's rows
    rewritten) does not change what a rerun of that date reads, or its verdict."""
    from datetime import date, timedelta

    from deltalake import DeltaTable, write_deltalake

    from gd_dask.config import validate_config
    from gd_dask.refit import refit
    from gd_dask.registry import Registry

    path = tmp_path / "table"
    for day in range(3):
        t = _rows(rng, 300, 1.0)
        write_deltalake(path, t.append_column("date", pa.array([f"2026-11-0{day + 1}"] * 300)), mode="append",
                        partition_by=["date"])
    cfg = validate_config({"name": "delta", "data": _data(path), "registry": {"dir": str(tmp_path / "models")}})
    first = refit(cfg, threads, date(2026, 11, 3))
    DeltaTable(path).delete("date = '2026-11-02'")  # a later commit changes a night of the window
    again = refit(cfg, threads, date(2026, 11, 3))
    assert "nothing to do" in again.message and again.status == first.status
    event = Registry(cfg.registry.dir, cfg.name).events()[-1]
    assert event["table"] == {"format": "delta", "version": 2}


def test_without_the_deltalake_package_a_table_is_one_line_naming_the_extra(tmp_path, rng, monkeypatch):
    import sys

    from deltalake import write_deltalake

    from gd_dask.config import DataConfig
    from gd_dask.data import open_source
    from gd_dask.errors import ConfigError

    write_deltalake(tmp_path / "t", _rows(rng, 50, 1.0))
    monkeypatch.setitem(sys.modules, "deltalake", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"is a Delta table: install the deltalake package .*gd_dask\[delta\]"):
        open_source(DataConfig(**_data(tmp_path / "t")))
