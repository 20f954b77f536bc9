"""Issue 30: lakehouse tables read as their logs say: Delta Lake through the deltalake
package, Apache Iceberg through pyiceberg (a metadata file, a table folder, a SQL catalog
on sqlite). Each is checked against least squares on the rows the table's own reader
returns."""

import json
import struct
import time

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

    from gd_dask.jobs.training import fit

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


def _commit(path, *actions):
    """Append a commit of ``actions`` to a Delta table's log by hand (what Spark or
    Databricks write and delta-rs does not: deletion vectors, column mapping)."""
    log = path / "_delta_log"
    version = max(int(p.name.split(".")[0]) for p in log.glob("*.json")) + 1
    lines = [{"commitInfo": {"timestamp": int(time.time() * 1000), "operation": "WRITE"}}, *actions]
    (log / f"{version:020d}.json").write_text("".join(json.dumps(a) + "\n" for a in lines))


def _z85(data: bytes) -> str:
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
    data += b"\0" * (-len(data) % 4)
    out = []
    for i in range(0, len(data), 4):
        v, digits = int.from_bytes(data[i:i + 4], "big"), []
        for _ in range(5):
            v, r = divmod(v, 85)
            digits.append(alphabet[r])
        out += digits[::-1]
    return "".join(out)


def _deletion_vector(positions) -> dict:
    """An inline deletion vector (Delta protocol: Z85 of a magic number and a 64-bit
    roaring bitmap array of one 32-bit bucket)."""
    from pyroaring import BitMap

    blob = struct.pack("<iqI", 1681511377, 1, 0) + BitMap(positions).serialize()
    return {"storageType": "i", "pathOrInlineDv": _z85(blob), "sizeInBytes": len(blob),
            "cardinality": len(positions)}


def test_deletion_vectors_drop_exactly_their_rows(tmp_path, rng, threads):
    from deltalake import DeltaTable, write_deltalake

    from gd_dask.jobs.training import fit

    path = tmp_path / "dv"
    rows = _rows(rng, 3000, 1.0)
    write_deltalake(path, rows, configuration={"delta.enableDeletionVectors": "true"})
    add = json.loads(next(line for line in next((path / "_delta_log").glob("*0.json")).read_text().splitlines()
                          if line.startswith('{"add"')))["add"]
    positions = sorted(rng.choice(3000, size=700, replace=False).tolist())
    _commit(path, {"remove": {"path": add["path"], "deletionTimestamp": 1, "dataChange": True, "size": add["size"],
                              "partitionValues": {}}},
            {"add": {**add, "deletionVector": _deletion_vector(positions)}})
    keep = pa.table(DeltaTable(path).deletion_vectors()).column("selection_vector")[0].as_py()
    assert np.flatnonzero(~np.asarray(keep)).tolist() == positions  # the table's own reader agrees
    live = rows.filter(pa.array(np.isin(np.arange(3000), positions, invert=True)))
    res = fit(make_config(_data(path), tmp_path), threads)
    assert res.source.n_rows == live.num_rows == 2300
    np.testing.assert_allclose(np.append(res.m, res.b), _lstsq(live), rtol=1e-8)


def test_unsupported_reader_features_and_broken_iceberg_metadata_are_one_line(tmp_path, rng):
    from deltalake import write_deltalake

    cm = tmp_path / "cm"
    write_deltalake(cm, _rows(rng, 100, 1.0))
    _commit(cm, {"protocol": {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["columnMapping"],
                              "writerFeatures": ["columnMapping"]}})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "t", "data": _data(cm), "output": {"dir": str(tmp_path / "o")}}))
    res = run_cli("train", cfg)
    assert res.returncode == 2 and "columnMapping" in res.stderr.strip().splitlines()[-1], res.stderr
    ice = tmp_path / "ice" / "metadata"
    ice.mkdir(parents=True)
    (ice / "v1.metadata.json").write_text("{}")
    cfg.write_text(json.dumps({"name": "t", "data": _data(ice.parent), "output": {"dir": str(tmp_path / "o")}}))
    res = run_cli("train", cfg)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and "cannot load the Iceberg table" in last and "v1.metadata.json" in last, res.stderr


def test_nightly_refits_on_a_delta_table_read_its_live_files(tmp_path, rng, threads):
    """A table partitioned by date, a night appended each day; a night rewritten upstream
    (its rows deleted and written again) leaves its old file on disk, unread. A rerun of
    the date reads the snapshot its first run read; data.version names another."""
    from datetime import date, timedelta

    from deltalake import DeltaTable, write_deltalake

    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit
    from gd_dask.artifacts.registry import Registry

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
    from datetime import date

    from deltalake import DeltaTable, write_deltalake

    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit
    from gd_dask.artifacts.registry import Registry

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


# --------------------------------------------------------------------------- Iceberg


@pytest.fixture
def catalog(tmp_path):
    """A pyiceberg SQL catalog on sqlite, its warehouse in the test's folder."""
    pytest.importorskip("pyiceberg")
    from pyiceberg.catalog.sql import SqlCatalog

    props = {"uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/warehouse"}
    cat = SqlCatalog("test", **props)
    cat.create_namespace("nightly")
    return cat, {"name": "test", "properties": {"type": "sql", **props}}


def _iceberg_history(cat, rng):
    """Appends, an overwrite and a delete (pyiceberg rewrites the files it deletes from):
    snapshots whose old files stay on disk."""
    t = cat.create_table("nightly.sales", schema=_rows(rng, 1, 1.0).schema)
    t.append(_rows(rng, 3000, 5.0))          # slope 5
    t.overwrite(_rows(rng, 2000, 1.0))       # slope 1, the old rows gone
    t.append(_rows(rng, 1000, 1.0))
    t.delete("x0 > 1.0")
    return cat.load_table("nightly.sales")


def test_an_iceberg_table_is_read_as_its_metadata_says_with_and_without_a_catalog(catalog, tmp_path, rng):
    cat, props = catalog
    t = _iceberg_history(cat, rng)
    live = t.scan().to_arrow()
    on_disk = list((tmp_path / "warehouse").rglob("*.parquet"))
    assert len(on_disk) > len(list(t.scan().plan_files()))
    folder = t.location().removeprefix("file://")
    in_catalog = {"catalog": {**props, "table": "nightly.sales"}}
    for i, data in enumerate((_data(t.metadata_location), _data(folder), {**_data(folder), **in_catalog},
                              {"features": ["x0", "x1"], "target": "y", **in_catalog})):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(json.dumps({"name": "t", "data": data, "output": {"dir": str(tmp_path / f"o{i}")}}))
        res = run_cli("train", cfg)
        assert res.returncode == 0, res.stderr
        doc = json.loads((tmp_path / f"o{i}" / "model.json").read_text())
        assert doc["data"]["table"] == {"format": "iceberg", "version": t.current_snapshot().snapshot_id}
        assert doc["data"]["n_rows"] == live.num_rows
        np.testing.assert_allclose(doc["m"] + [doc["b"]], _lstsq(live), rtol=1e-8)


def test_an_iceberg_snapshot_id_or_time_gives_the_older_rows(catalog, tmp_path, rng):
    cat, _ = catalog
    t = _iceberg_history(cat, rng)
    first = t.snapshots()[0]
    old = t.scan(snapshot_id=first.snapshot_id).to_arrow()
    from datetime import datetime, timezone

    from gd_dask.config import DataConfig
    from gd_dask.data import open_source

    at = datetime.fromtimestamp(first.timestamp_ms / 1000, timezone.utc).isoformat()
    for extra in ({"version": first.snapshot_id}, {"as_of_time": at}):
        src = open_source(DataConfig(**_data(t.metadata_location, **extra)))
        assert src.n_rows == old.num_rows == 3000
        assert src.table == {"format": "iceberg", "version": first.snapshot_id}
    from gd_dask.errors import DataError

    with pytest.raises(DataError, match="no such snapshot"):
        open_source(DataConfig(**_data(t.metadata_location, version=12345)))


def test_iceberg_position_deletes_are_applied_and_renamed_columns_refused(catalog, tmp_path, rng, threads):
    """pyiceberg writes deletes by rewriting files; a position delete file (as Spark's
    merge-on-read writes) is added here by hand and must drop exactly its rows."""
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record
    from pyiceberg.types import DoubleType

    from gd_dask.config import DataConfig
    from gd_dask.data import open_source
    from gd_dask.errors import ConfigError
    from gd_dask.jobs.training import fit

    cat, _ = catalog
    t = cat.create_table("nightly.pd", schema=_rows(rng, 1, 1.0).schema)
    t.append(_rows(rng, 2000, 1.0))
    target = next(iter(t.scan().plan_files())).file.file_path
    positions = np.sort(rng.choice(2000, size=300, replace=False))
    deletes = tmp_path / "deletes.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"file_path": [target] * 300, "pos": pa.array(positions, pa.int64())}), deletes)
    df = DataFile.from_args(content=DataFileContent.POSITION_DELETES, file_path=f"file://{deletes}",
                            file_format=FileFormat.PARQUET, partition=Record(), record_count=300,
                            file_size_in_bytes=deletes.stat().st_size)
    df.spec_id = 0
    with t.transaction() as tx, tx.update_snapshot().fast_append() as snap:
        snap.append_data_file(df)
    t = cat.load_table("nightly.pd")
    live = t.scan().to_arrow()
    assert live.num_rows == 1700  # the table's own reader applies them
    res = fit(make_config(_data(t.metadata_location), tmp_path), threads)
    assert res.source.n_rows == 1700
    np.testing.assert_allclose(np.append(res.m, res.b), _lstsq(live), rtol=1e-8)

    with t.update_schema() as up:
        up.rename_column("x1", "x9")
    with t.update_schema() as up:
        up.add_column("x1", DoubleType())
    t = cat.load_table("nightly.pd")
    with pytest.raises(ConfigError, match="column 'x1' was renamed or replaced"):
        open_source(DataConfig(**_data(t.metadata_location)))


def test_nightly_refits_on_an_iceberg_table_take_the_window_from_its_partitions(catalog, tmp_path, rng, threads):
    """A table partitioned by date (identity): the window comes from the manifests'
    partition values, each refit pins its snapshot and records it."""
    from datetime import date, timedelta

    from pyiceberg.transforms import IdentityTransform

    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit
    from gd_dask.artifacts.registry import Registry

    cat, props = catalog

    def night(day):
        t = _rows(rng, 400, 1.0)
        return t.append_column("date", pa.array([(date(2026, 11, 1) + timedelta(days=day)).isoformat()] * 400))

    schema = night(0).schema
    t = cat.create_table("nightly.byday", schema=schema)
    with t.update_spec() as up:
        up.add_field("date", IdentityTransform(), "date")
    cfg = validate_config({"name": "ice", "data": {"features": ["x0", "x1"], "target": "y", "window_days": 3,
                                                   "catalog": {**props, "table": "nightly.byday"}},
                           "registry": {"dir": str(tmp_path / "models")}})
    for day in range(4):
        cat.load_table("nightly.byday").append(night(day))
        assert refit(cfg, threads, date(2026, 11, 1) + timedelta(days=day)).status == "promoted"
    snap = cat.load_table("nightly.byday").current_snapshot().snapshot_id
    reg = Registry(cfg.registry.dir, cfg.name)
    assert reg.events()[-1]["table"] == {"format": "iceberg", "version": snap}
    model = reg.current_model()
    assert sorted({f["path"].split("date=")[1][:10] for f in model["data"]["files"]}) == ["2026-11-02", "2026-11-03"]
    cat.load_table("nightly.byday").append(night(3))  # a later commit to the night
    assert "nothing to do" in refit(cfg, threads, date(2026, 11, 4)).message  # a rerun reads its first snapshot


def test_a_table_of_many_files_is_planned_from_its_log_without_reading_footers(tmp_path, rng, threads):
    """1,200 small files (a table's log written by hand, the files hard links of one):
    the rows come from the log's statistics; behind latency:// planning makes 3 requests
    (the folder, the log folder, the first file's footer), not one per file."""
    import pyarrow.parquet as pq

    from gd_dask.config import DataConfig
    from gd_dask.data import open_source
    from gd_dask.data.latency import LatencyFileSystem

    root = tmp_path / "t"
    (root / "_delta_log").mkdir(parents=True)
    seed = tmp_path / "seed.parquet"
    pq.write_table(_rows(rng, 50, 1.0), seed)
    fields = [{"name": c, "type": "double", "nullable": True, "metadata": {}} for c in ("x0", "x1", "y")]
    lines = [{"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}},
             {"metaData": {"id": "t", "format": {"provider": "parquet", "options": {}}, "partitionColumns": [],
                           "schemaString": json.dumps({"type": "struct", "fields": fields}), "configuration": {}}}]
    for i in range(1200):
        (root / f"part-{i:05d}.parquet").hardlink_to(seed)
        lines.append({"add": {"path": f"part-{i:05d}.parquet", "partitionValues": {}, "size": seed.stat().st_size,
                              "modificationTime": 0, "dataChange": True, "stats": json.dumps({"numRecords": 50})}})
    (root / "_delta_log" / f"{0:020d}.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    before = LatencyFileSystem.requests
    src = open_source(DataConfig(**_data(f"latency://{root}", storage_options={"delay": 0.0})))
    assert src.n_rows == 60_000 and len(src.files) == 1200
    assert LatencyFileSystem.requests - before <= 3
    from gd_dask.jobs.training import fit

    res = fit(make_config(_data(root), tmp_path), threads)  # the tasks read the footers, check the log's rows
    np.testing.assert_allclose(np.append(res.m, res.b), _lstsq(pq.read_table(seed)), rtol=1e-8)
    lines[2]["add"]["stats"] = json.dumps({"numRecords": 40})  # a log that does not describe its file
    (root / "_delta_log" / f"{0:020d}.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    from gd_dask.errors import DataError

    with pytest.raises(DataError, match="holds 50 rows but the table's log says 40"):
        fit(make_config(_data(root), tmp_path / "again"), threads)


def test_vacuum_and_an_added_column(history, tmp_path, threads):
    """After a vacuum the live snapshot reads as before, and an old version whose files
    are gone is one line naming the file; a column added later (schema merge) leaves the
    old columns readable across old and new files."""
    from deltalake import DeltaTable, write_deltalake

    from gd_dask.config import DataConfig
    from gd_dask.errors import DataError
    from gd_dask.jobs.training import fit

    dt = DeltaTable(history)
    removed = dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    assert removed
    live = DeltaTable(history).to_pyarrow_table()
    res = fit(make_config(_data(history), tmp_path / "a"), threads)
    np.testing.assert_allclose(np.append(res.m, res.b), _lstsq(live), rtol=1e-8)
    with pytest.raises(DataError, match=r"table's version 0 names part-.*\.parquet, which is gone"):
        fit(make_config(_data(history, version=0), tmp_path / "b"), threads)

    more = _rows(np.random.default_rng(5), 500, 1.0)
    write_deltalake(history, more.append_column("z", pa.array(np.ones(500))), mode="append", schema_mode="merge")
    live = DeltaTable(history).to_pyarrow_table()
    res = fit(make_config(_data(history), tmp_path / "c"), threads)
    assert res.source.n_rows == live.num_rows
    np.testing.assert_allclose(np.append(res.m, res.b), _lstsq(live), rtol=1e-8)
    with pytest.raises(DataError, match="column 'z' not found"):
        from gd_dask.data import open_source

        open_source(DataConfig(path=str(history), features=["x0", "z"], target="y"))


def test_without_the_pyiceberg_package_a_table_is_one_line_naming_the_extra(catalog, tmp_path, rng, monkeypatch):
    import sys

    from gd_dask.config import DataConfig
    from gd_dask.data import open_source
    from gd_dask.errors import ConfigError

    cat, _ = catalog
    t = cat.create_table("nightly.bare", schema=_rows(rng, 1, 1.0).schema)
    t.append(_rows(rng, 50, 1.0))
    t = cat.load_table("nightly.bare")
    for name in [m for m in sys.modules if m == "pyiceberg" or m.startswith("pyiceberg.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyiceberg", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"is an Apache Iceberg table: install the pyiceberg package .*\[iceberg\]"):
        open_source(DataConfig(**_data(t.metadata_location)))
