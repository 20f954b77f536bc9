"""The catalogue of bad input: one clear line naming the culprit, the right exit status,
and no damage to earlier artifacts."""

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_config, write_parquet
from gd_dask.interfaces.cli import main
from gd_dask.errors import DataError
from gd_dask.jobs.training import fit


def _config(tmp_path, data, **sections) -> Path:
    raw = {"name": "bad", "data": data, "output": {"dir": str(tmp_path / "out")}, "cluster": {"n_workers": 1}}
    raw.update(sections)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(raw))
    return path


def _run(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def _good(tmp_path, rng, n=300, d=2, n_files=3):
    X = rng.normal(size=(n, d))
    y = X @ np.arange(1, d + 1) + rng.normal(size=n)
    return write_parquet(tmp_path / "d", X, y, n_files=n_files)


# ---------------------------------------------------------------- data path (no cluster)


def test_a_data_path_that_does_not_exist(tmp_path, capsys):
    code, line = _run(capsys, "train", _config(tmp_path, {"path": str(tmp_path / "nope"), "features": ["a"], "target": "y"}))
    assert code == 1 and line == f"gd-dask: error: data.path '{tmp_path / 'nope'}' does not exist"


def test_a_folder_without_parquet_files(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data.csv").write_text("a,y\n1,2\n")
    code, line = _run(capsys, "train", _config(tmp_path, {"path": str(tmp_path / "d"), "features": ["a"], "target": "y"}))
    assert code == 1 and "holds no Parquet files" in line and "data.csv" in line


def test_filters_that_select_nothing(tmp_path, rng, capsys):
    data = _good(tmp_path, rng)
    data["filters"] = [["date", ">", "2030-01-01"]]
    code, line = _run(capsys, "train", _config(tmp_path, data))
    assert code == 1 and "select no files" in line


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_file_that_is_not_parquet_or_is_truncated_is_named(tmp_path, rng, capsys, damage):
    data = _good(tmp_path, rng)
    victim = sorted(Path(data["path"]).glob("*/*.parquet"))[1]
    if damage == "garbage":
        victim.write_bytes(b"this is not parquet" * 10)
    else:
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    code, line = _run(capsys, "train", _config(tmp_path, data))
    assert code == 1 and str(victim) in line and "not a readable Parquet file" in line


@pytest.mark.parametrize("change", ["type", "missing"])
def test_a_file_whose_schema_differs_from_the_files_before_it_is_named(tmp_path, rng, capsys, change):
    """Files whose schema equals the last one checked skip the check: a later file with
    another type, or without a column, is still caught and named."""
    data = _good(tmp_path, rng, n_files=4)
    victim = sorted(Path(data["path"]).glob("*/*.parquet"))[2]
    table = pq.read_table(victim)
    if change == "type":
        table = table.set_column(0, "x0", pa.array(np.arange(table.num_rows), type=pa.int64()))
    else:
        table = table.drop_columns(["x1"])
    pq.write_table(table, victim)
    code, line = _run(capsys, "train", _config(tmp_path, data))
    expected = (f"column 'x0' is double in {sorted(Path(data['path']).glob('*/*.parquet'))[0]} but int64 in {victim}"
                if change == "type" else f"{victim}: column 'x1' not found")
    assert code == 1 and expected in line, line


def test_footers_read_in_parallel_plan_and_fail_as_read_one_by_one(tmp_path, rng, monkeypatch):
    """40 files: the plan from 16 footer reads in flight equals the plan read one after
    another; with two damaged files, the error names the first in order."""
    from gd_dask.config import DataConfig
    from gd_dask.data import footers, source

    data = _good(tmp_path, rng, n=4000, n_files=40)
    cfg = DataConfig(**data)
    plans = []
    for threads in (1, 16):
        monkeypatch.setattr(footers, "FOOTER_THREADS", threads)
        src = source.open_source(cfg)
        plans.append(([f["path"] for f in src.files], [f["row_groups"] for f in src.files],
                      [[(p.path, p.row_groups) for p in c.pieces] for c in src.chunks]))
    assert plans[0] == plans[1] and len(plans[0][0]) == 40
    files = sorted(Path(data["path"]).glob("*/*.parquet"))
    for victim in (files[30], files[5]):
        victim.write_bytes(b"this is not parquet" * 10)
    with pytest.raises(DataError, match="not a readable Parquet file") as e:
        source.open_source(cfg)
    assert str(files[5]) in str(e.value)


def test_a_missing_column_names_the_column_and_the_file(tmp_path, rng, capsys):
    data = _good(tmp_path, rng)
    data["features"] = ["x0", "height"]
    code, line = _run(capsys, "train", _config(tmp_path, data))
    assert code == 1 and "column 'height' not found" in line and ".parquet" in line


def test_a_non_numeric_column_names_it_and_its_type(tmp_path, capsys):
    """A text target, or a feature of a type that is neither a number nor a category."""
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"a": ["x", "y", "z"], "t": pa.array([1, 2, 3], pa.timestamp("s")), "y": ["1", "2", "3"]}),
                   tmp_path / "d" / "p.parquet")
    code, line = _run(capsys, "train", _config(tmp_path, {"path": str(tmp_path / "d"), "features": ["a"], "target": "y"}))
    assert code == 1 and "column 'y' is string, not numeric" in line
    code, line = _run(capsys, "train", _config(tmp_path, {"path": str(tmp_path / "d"), "features": ["t"], "target": "a"}))
    assert code == 1 and "column 't' is timestamp" in line and "not numeric" in line


def test_column_types_that_differ_between_files(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"a": [1, 2, 3], "y": [1.0, 2.0, 3.0]}), tmp_path / "d" / "p1.parquet")
    pq.write_table(pa.table({"a": [1.5, 2.5], "y": [1.0, 2.0]}), tmp_path / "d" / "p2.parquet")
    code, line = _run(capsys, "train", _config(tmp_path, {"path": str(tmp_path / "d"), "features": ["a"], "target": "y"}))
    assert code == 1 and "column 'a' is int64 in" in line and "p1.parquet" in line and "p2.parquet" in line


def test_an_output_dir_that_cannot_be_written_fails_before_training(tmp_path, rng, capsys):
    data = _good(tmp_path, rng)
    (tmp_path / "file").write_text("x")
    code, line = _run(capsys, "train", _config(tmp_path, data, output={"dir": str(tmp_path / "file" / "out")}))
    assert code == 1 and "is not writable" in line


# ---------------------------------------------------------------- values (a cluster)


def _with_values(tmp_path, rng, col, value, where):
    X = rng.normal(size=(300, 2))
    y = X @ [1.0, 2.0] + rng.normal(size=300)
    Z = np.column_stack([X, y])
    for i in where:
        Z[i, col] = value
    return write_parquet(tmp_path / "d", Z[:, :2], Z[:, 2], n_files=3)


@pytest.mark.parametrize("col,value,name", [(1, np.nan, "x1"), (2, np.inf, "y"), (0, -np.inf, "x0")])
def test_nan_or_inf_names_the_column_the_count_and_the_first_file(client, tmp_path, rng, col, value, name):
    data = _with_values(tmp_path, rng, col, value, where=[150, 160, 290])  # files 2 and 3
    with pytest.raises(DataError) as e:
        fit(make_config(data, tmp_path), client)
    msg = str(e.value)
    assert f"column '{name}' has 3 NaN/inf/null values" in msg and "part-0001.parquet" in msg
    assert "data.missing: drop" in msg


def test_missing_drop_drops_the_rows_and_says_how_many(client, tmp_path, rng):
    data = _with_values(tmp_path, rng, 1, np.nan, where=[5, 150, 160])
    data["missing"] = "drop"
    res = fit(make_config(data, tmp_path, optimizer={}), client)
    assert res.rows_dropped == 3 and res.metrics["n"] == 297


def test_a_constant_feature_cannot_be_standardized(client, tmp_path, rng):
    X = np.column_stack([rng.normal(size=100), np.full(100, 7.0)])
    data = write_parquet(tmp_path / "d", X, X[:, 0] + rng.normal(size=100))
    with pytest.raises(DataError, match=r"feature 'x1' is constant \(7\)"):
        fit(make_config(data, tmp_path), client)


def test_fewer_rows_than_features_fit_but_are_not_called_converged(client, tmp_path, rng, caplog):
    """Issue 29 D12: scikit-learn fits p > n (one-hot categories, genomics). The descent
    from zero tends to the minimum-norm solution; no unique minimizer, so no promise."""
    X, y = rng.normal(size=(3, 4)), rng.normal(size=3)
    data = write_parquet(tmp_path / "d", X, y, n_files=1)
    with caplog.at_level("WARNING", logger="gd_dask.jobs.training"):
        res = fit(make_config(data, tmp_path), client)
    assert res.converged is False and "no unique least-squares solution" in caplog.text
    scale = X.std(axis=0)
    minimum_norm = np.linalg.pinv((X - X.mean(0)) / scale) @ (y - y.mean()) / scale  # in standardized features
    np.testing.assert_allclose(res.m, minimum_norm, rtol=1e-7)
    assert res.b == pytest.approx(y.mean() - X.mean(0) @ minimum_norm, rel=1e-7)
    assert res.summary["available"] is False
    one = write_parquet(tmp_path / "one", X[:1], y[:1], n_files=1)
    with pytest.raises(DataError, match="only 1 row: need at least 2"):
        fit(make_config(one, tmp_path), client)


def test_values_whose_squares_overflow_name_the_column(client, tmp_path, rng):
    X = rng.normal(size=(100, 2))
    X[:, 1] *= 1e200
    data = write_parquet(tmp_path / "d", X, rng.normal(size=100))
    with pytest.raises(DataError, match="column 'x1' has values too large for float64"):
        fit(make_config(data, tmp_path), client)


# ---------------------------------------------------------------- nothing lost


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def earlier_run(tmp_path, rng, capsys):
    """A successful run whose artifacts later failures must leave byte-identical."""
    data = _good(tmp_path, rng)
    cfg = _config(tmp_path, data)
    assert _run(capsys, "train", cfg)[0] == 0
    return cfg, data, _digest(tmp_path / "out")


def test_a_diverging_run_leaves_the_earlier_model_byte_identical(tmp_path, capsys, earlier_run):
    cfg, _, before = earlier_run
    code, line = _run(capsys, "train", cfg, "--set", "optimizer.learning_rate=50", "--set", "output.checkpoint_every=0")
    assert code == 1 and "diverged at epoch" in line
    assert _digest(tmp_path / "out") == before


def test_bad_values_leave_the_earlier_model_byte_identical(tmp_path, capsys, earlier_run):
    cfg, data, before = earlier_run
    victim = sorted(Path(data["path"]).glob("*/*.parquet"))[0]
    t = pq.read_table(victim).to_pandas()
    t.loc[0, "x0"] = np.nan
    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), victim)
    code, line = _run(capsys, "train", cfg)
    assert code == 1 and "NaN/inf/null" in line
    assert _digest(tmp_path / "out") == before


def test_a_full_disk_while_writing_leaves_no_model_and_the_earlier_one_intact(tmp_path, capsys, monkeypatch, earlier_run):
    import gd_dask.artifacts.store as store

    cfg, _, before = earlier_run

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", no_space)
    code, line = _run(capsys, "train", cfg, "--set", "optimizer.epochs=7")
    assert code == 1 and "No space left on device" in line
    assert _digest(tmp_path / "out") == before
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- artifacts


@pytest.mark.parametrize("damage,message", [
    (lambda t: t[: len(t) // 2], "not a valid model.json"),
    (lambda t: t.replace("gd_dask.model/1", "gd_dask.model/9"), "model format 'gd_dask.model/9' is not supported"),
    (lambda t: json.dumps({**json.loads(t), "features": ["x0"]}), "model has 1 features but 2 coefficients m"),
    (lambda t: json.dumps({**json.loads(t), "m": [float("nan"), 1.0]}), "NaN or infinite coefficients (m[x0])"),
    (lambda t: json.dumps({**json.loads(t), "b": float("inf")}), "NaN or infinite coefficients (b)"),
])
def test_a_damaged_model_json_is_refused_by_evaluate_and_predict(tmp_path, capsys, earlier_run, damage, message):
    _, data, _ = earlier_run
    model = tmp_path / "out" / "model.json"
    broken = tmp_path / "broken.json"
    broken.write_text(damage(model.read_text()))
    for args in (["evaluate", broken, data["path"]], ["predict", broken, data["path"], tmp_path / "pred"]):
        code, line = _run(capsys, *args)
        assert code == 1 and message in line and str(broken) in line
