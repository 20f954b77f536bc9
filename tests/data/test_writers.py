"""The same rows as each writer users have writes them: pyarrow, pandas, dask, DuckDB
(its 122,880-row groups, hive folders from PARTITION_BY), polars (Parquet and a Delta
table), and a Spark-style output folder with its leftovers (``_SUCCESS``, ``.crc``,
``_temporary/`` of a failed attempt). Each reads as exactly those rows: coefficients
equal to least squares on them."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_config

duckdb = pytest.importorskip("duckdb")
polars = pytest.importorskip("polars")

N = 300_000  # > DuckDB's row group (122,880): several row groups per file


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(N, 2))
    y = X @ [1.5, -0.5] + 3.0 + rng.normal(size=N)
    days = np.array(["2026-11-01", "2026-11-02", "2026-11-03"])[rng.integers(0, 3, N)]
    return pd.DataFrame({"x0": X[:, 0], "x1": X[:, 1], "y": y, "date": days})


def _expected(df):
    X = np.column_stack([df["x0"], df["x1"], np.ones(len(df))])
    return np.linalg.lstsq(X, df["y"].to_numpy(), rcond=None)[0]


def _fit(path, tmp_path, threads):
    from gd_dask.jobs.training import fit

    res = fit(make_config({"path": str(path), "features": ["x0", "x1"], "target": "y"}, tmp_path / "o"), threads)
    return res


def _write_duckdb(df, path):
    con = duckdb.connect()
    con.register("df", df)
    con.execute(f"COPY df TO '{path}' (FORMAT parquet, PARTITION_BY (date))")


def _write_polars(df, path):
    path.mkdir()
    polars.from_pandas(df).write_parquet(path / "data.parquet")


def _write_polars_delta(df, path):
    pytest.importorskip("deltalake")
    polars.from_pandas(df).write_delta(str(path), delta_write_options={"partition_by": ["date"]})
    polars.from_pandas(df.iloc[:1000]).write_delta(str(path), mode="overwrite")  # the old files stay on disk
    return df.iloc[:1000]


def _write_pandas(df, path):
    df.to_parquet(path, partition_cols=["date"])


def _write_dask(df, path):
    import dask.dataframe as dd

    dd.from_pandas(df, npartitions=4).to_parquet(path, write_metadata_file=True)


def _write_spark_style(df, path):
    """What a Spark job leaves: part files and their .crc, _SUCCESS, and the _temporary/
    folder of an attempt that died (a duplicate of some rows)."""
    path.mkdir()
    for i, part in enumerate(df.iloc[k * len(df) // 3:(k + 1) * len(df) // 3] for k in range(3)):
        name = f"part-{i:05d}-1b2c3d4e-c000.snappy.parquet"
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path / name, row_group_size=50_000)
        (path / f".{name}.crc").write_bytes(b"crc")
    (path / "_SUCCESS").write_text("")
    tmp = path / "_temporary" / "0" / "_temporary" / "attempt_202611010000_0001_m_000000_0"
    tmp.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(df.iloc[:5000], preserve_index=False), tmp / "part-00000.parquet")


@pytest.mark.parametrize("writer", [_write_duckdb, _write_polars, _write_polars_delta, _write_pandas, _write_dask,
                                    _write_spark_style])
def test_each_writers_files_read_as_exactly_their_rows(frame, writer, tmp_path, threads):
    path = tmp_path / "data"
    live = writer(frame, path)
    live = frame if live is None else live
    res = _fit(path, tmp_path, threads)
    assert res.source.n_rows == len(live)
    np.testing.assert_allclose(np.append(res.m, res.b), _expected(live), rtol=1e-9)
    assert json.dumps(res.source.fingerprint())  # plain JSON, whatever wrote it


REGIONS = np.array(["north", "south", "east", "west", "central", "überland"])


def _polars_categorical(df, path):
    """polars with the text column as its Categorical (a dictionary column in Parquet)."""
    path.mkdir()
    polars.from_pandas(df).with_columns(polars.col("region").cast(polars.Categorical)).write_parquet(
        path / "data.parquet")


def _pandas_category(df, path):
    df.astype({"region": "category"}).to_parquet(path, partition_cols=["date"])


@pytest.mark.parametrize("writer", [_write_duckdb, _write_polars, _polars_categorical, _write_polars_delta,
                                    _pandas_category, _write_dask, _write_spark_style])
def test_each_writers_text_column_trains_as_levels(frame, writer, tmp_path, threads):
    """A text column as each writer stores it (DuckDB's VARCHAR, polars' String and
    Categorical, pandas' category, a Delta table, Spark's part files): read as the same
    levels, the model equal to least squares on the one-hot design."""
    from gd_dask.jobs.training import fit

    rng = np.random.default_rng(5)
    df = frame.assign(region=REGIONS[rng.integers(0, len(REGIONS), len(frame))])
    df["y"] = df["y"] + df["region"].map(dict(zip(REGIONS, [0.0, 1.0, -2.0, 0.5, 3.0, -1.0])))
    path = tmp_path / "data"
    live = writer(df, path)
    live = df if live is None else live
    res = fit(make_config({"path": str(path), "features": ["x0", "region", "x1"], "target": "y"}, tmp_path / "o"),
              threads)
    doc = res.categorical[0]
    assert sorted(doc["levels"]) == sorted(set(live["region"]))
    design = [live["x0"], live["x1"], np.ones(len(live))]
    design += [(live["region"] == lv).astype(float) for lv in doc["levels"] if lv != doc["reference"]]
    D = np.column_stack(design)
    beta = np.linalg.lstsq(D, live["y"].to_numpy(), rcond=None)[0]
    table = dict(zip(doc["levels"], doc["coef"]))
    ours = live["x0"] * res.m[0] + live["x1"] * res.m[1] + res.b + live["region"].map(table)
    expect = D @ beta
    assert res.converged and np.max(np.abs(ours.to_numpy() - expect)) <= 1e-9 * np.max(np.abs(expect))
