"""Many small files (issue 21): consecutive small files are packed into one task, as
Spark packs them; the rows, their order and the holdout are those of reading the files
one by one, and the layout depends on the files alone."""

import dataclasses
import json

import numpy as np
import pytest

from conftest import make_config, write_parquet


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """300 files of 40 rows each over 3 days, and one big file split into chunks."""
    rng = np.random.default_rng(21)
    X = rng.normal(size=(12_000, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 0.0]
    y = X @ [1.5, -0.7, 2.0] + 3.0 + rng.normal(size=len(X))
    root = tmp_path_factory.mktemp("many")
    data = write_parquet(root / "d", X, y, n_files=300, days=3)
    return {"data": data, "X": X, "y": y, "root": root}


def _source(data: dict, chunk_bytes: int, pack: bool = True):
    from gd_dask.config import DataConfig
    from gd_dask.data import open_source

    src = open_source(DataConfig(**data))
    src.layout(chunk_bytes, pack=pack)
    return src


def test_consecutive_small_files_are_packed_up_to_the_chunk_size_with_an_open_cost():
    from gd_dask.data import Chunk, Pack
    from gd_dask.data.source import pack_small_files

    files = [Chunk(f"f{i}", (0,), 100) for i in range(10)]
    big = [Chunk("big", (0,), 1000), Chunk("big", (1,), 1000)]  # a file split in two chunks
    # 100 rows × 8 bytes + 200 open cost = 1000 a file: 3 files fit in 3000 bytes.
    out = pack_small_files(files[:5] + big + files[5:], 3000, 200, 8)
    sizes = [len(c.pieces) for c in out]
    assert sizes == [3, 2, 1, 1, 3, 2]
    assert isinstance(out[0], Pack) and out[2] is big[0] and out[3] is big[1]
    assert [p.path for c in out for p in c.pieces] == [c.path for c in files[:5] + big + files[5:]]


def test_a_pack_reads_the_rows_of_its_files_in_order(small_files):
    from gd_dask.data import Pack, read_block, read_slices

    packed, single = _source(small_files["data"], 16 * 2**20), _source(small_files["data"], 16 * 2**20, pack=False)
    assert len(single.chunks) == 300 and 1 < len(packed.chunks) < 30
    assert all(isinstance(c, Pack) for c in packed.chunks)
    whole = np.vstack([read_block(c, single.spec) for c in single.chunks])
    assert np.array_equal(np.vstack([read_block(c, packed.spec) for c in packed.chunks]), whole)
    streamed = np.vstack([z.copy() for c in packed.chunks for z in read_slices(c, packed.spec, rows=1000)])
    assert np.array_equal(streamed, whole)
    np.testing.assert_array_equal(whole[:, :3], small_files["X"])


def test_the_holdout_holds_out_the_same_rows_whether_files_are_packed_or_not(small_files):
    from gd_dask.data import read_block

    for validation in (0, 1):
        blocks = []
        for pack in (True, False):
            src = _source(small_files["data"], 16 * 2**20, pack=pack).split(seed=3, fraction=0.2)[validation]
            blocks.append(np.vstack([read_block(c, src.spec) for c in src.chunks]))
        assert np.array_equal(blocks[0], blocks[1]) and 0 < len(blocks[0]) < 12_000


def _fit_on_one_and_three_workers(small_files, cfg):
    """The result of fitting ``cfg`` on 1 worker, checked: the same bits on 3, and the
    least-squares solution of the rows."""
    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig
    from gd_dask.jobs.training import fit

    results = []
    for n in (1, 3):
        with connect(ClusterConfig(n_workers=n, processes=False)) as c:
            results.append(fit(cfg, c))
    assert list(results[0].m) == list(results[1].m) and results[0].b == results[1].b
    X1 = np.column_stack([small_files["X"], np.ones(len(small_files["X"]))])
    exact = np.linalg.lstsq(X1, small_files["y"], rcond=None)[0]
    np.testing.assert_allclose(np.append(results[0].m, results[0].b), exact, rtol=1e-9)
    assert results[0].converged
    return results[0]


def test_packed_training_is_bit_identical_on_one_and_three_workers_and_reaches_least_squares(small_files, tmp_path):
    _fit_on_one_and_three_workers(small_files, make_config(small_files["data"], tmp_path))


def test_a_bad_value_in_a_packed_file_is_named_by_its_own_file(small_files, tmp_path, client):
    import pyarrow.parquet as pq

    from gd_dask.errors import DataError
    from gd_dask.jobs.training import fit

    root = tmp_path / "copy"
    data = write_parquet(root, small_files["X"][:4000], small_files["y"][:4000], n_files=100)
    victim = sorted(root.rglob("*.parquet"))[37]  # in the middle of a pack
    table = pq.read_table(victim)
    x0 = table.column("x0").to_numpy().copy()
    x0[5] = np.nan
    pq.write_table(table.set_column(0, "x0", [x0]), victim)
    with pytest.raises(DataError, match=f"first in .*{victim.name}"):
        fit(make_config(data, tmp_path), client)


@pytest.mark.parametrize("where", ["local", "latency"])
def test_per_file_statistics_of_packed_files_are_those_of_each_file_alone(small_files, client, where):
    """A refit caches statistics per file: a pack's task returns one result per file,
    the bits of that file read as a chunk of its own (on an object store the pack's
    files are fetched together first)."""
    from gd_dask.kernels.metrics import add_moments_and_errors, block_moments_and_errors
    from gd_dask.runtime.executor import Executor

    data = small_files["data"]
    if where == "latency":
        data = {**data, "path": "latency://" + data["path"], "storage_options": {"delay": 0.0}}
    packed = Executor(client, _source(data, 16 * 2**20), cache=False)
    alone = Executor(client, _source(data, 16 * 2**20, pack=False), cache=False)
    assert len(packed.source.chunks) <= 20 and len(alone.source.chunks) >= 300
    a, b = packed.moments_by_file(), alone.moments_by_file()
    assert list(a) == list(b) == [f["full_path"] for f in alone.source.files]
    for path in a:
        assert a[path].n == b[path].n and np.array_equal(a[path].mean, b[path].mean)
        assert np.array_equal(a[path].comoment, b[path].comoment)
    m = [(np.array([1.0, -2.0, 0.5]), 0.25)]
    rows = packed.rows_by_file(block_moments_and_errors, add_moments_and_errors, m, False)
    rows_alone = alone.rows_by_file(block_moments_and_errors, add_moments_and_errors, m, False)
    for path in rows:
        assert np.array_equal(rows[path][1][0], rows_alone[path][1][0])


def test_the_cli_trains_on_packed_files(small_files, tmp_path):
    from conftest import run_cli

    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "many", "data": small_files["data"], "output": {"dir": str(tmp_path / "o")}}))
    res = run_cli("-v", "train", cfg)
    assert res.returncode == 0, res.stderr
    assert "in 300 files, 3 chunks" in res.stderr  # at most 128 files a task (OPEN_COST_BYTES)
    assert json.loads((tmp_path / "o" / "model.json").read_text())["converged"]


def test_latency_fs_plans_with_one_request_a_file_in_parallel_and_reads_the_same_bits(small_files, tmp_path):
    """latency:// adds a delay to every request of the filesystem it wraps: planning 300
    files at 20 ms reads each footer in one ranged request, many at a time, and training
    through it gives the local run's bits."""
    import time

    import fsspec

    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig, DataConfig
    from gd_dask.data import open_source
    from gd_dask.jobs.training import fit

    options = {"delay": 0.02}
    remote = {**small_files["data"], "path": "latency://" + small_files["data"]["path"], "storage_options": options}
    fs = fsspec.filesystem("latency", **options)
    before = fs.requests
    t = time.perf_counter()
    src = open_source(DataConfig(**remote))
    seconds, requests = time.perf_counter() - t, fs.requests - before
    local = open_source(DataConfig(**small_files["data"]))
    assert [f["row_groups"] for f in src.files] == [f["row_groups"] for f in local.files]
    listing = requests - 300
    assert 0 < listing <= 10, requests  # a few listings, then one request a footer
    assert seconds < 300 * 0.02 / 8, seconds  # one after another: 6 s
    with connect(ClusterConfig(processes=False)) as c:
        a = fit(make_config(remote, tmp_path / "a"), c)
        b = fit(make_config(small_files["data"], tmp_path / "b"), c)
    assert list(a.m) == list(b.m) and a.b == b.b


def test_a_footer_bigger_than_the_tail_fetch_is_read_all_the_same(tmp_path):
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gd_dask.data import footers

    path = tmp_path / "wide.parquet"
    cols = {f"c{j:04d}": np.arange(3.0) for j in range(800)}  # 800 columns: a footer over 64 KiB
    pq.write_table(pa.table(cols), path)
    assert pq.ParquetFile(path).metadata.serialized_size > footers.FOOTER_TAIL
    fs = fsspec.filesystem("latency", delay=0.0)
    meta, schema, _ = footers._read_footer(fs, str(path), {"size": path.stat().st_size})
    assert meta.num_columns == 800 and schema.names[:2] == ["c0000", "c0001"]
    small = tmp_path / "small.parquet"
    pq.write_table(pa.table({"x": np.arange(10.0)}), small)
    assert footers._remote_footer(fs, str(small), small.stat().st_size) is not None
    meta, _, _ = footers._read_footer(fs, str(small), {"size": small.stat().st_size})
    assert meta.num_rows == 10


def test_a_metadata_summary_plans_without_reading_footers_and_never_over_a_newer_file(small_files, tmp_path,
                                                                                      monkeypatch):
    import os
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from gd_dask.config import DataConfig
    from gd_dask.data import footers, source
    from gd_dask.data.write import write_summary

    root = tmp_path / "d"
    shutil.copytree(small_files["data"]["path"], root)
    data = {**small_files["data"], "path": str(root)}
    expected = source.open_source(DataConfig(**data))
    write_summary(root)
    reads = []
    real = footers._read_footer
    monkeypatch.setattr(footers, "_read_footer", lambda fs, p, info=None: reads.append(p) or real(fs, p, info))
    planned = source.open_source(DataConfig(**data))
    assert reads == [] and planned.files == expected.files

    # A file rewritten after the summary (more rows): its own footer, not the summary, decides.
    victim = sorted(root.rglob("*.parquet"))[7]
    pq.write_table(pa.concat_tables([pq.read_table(victim)] * 2), victim)
    later = os.stat(root / "_metadata").st_mtime + 10
    os.utime(victim, (later, later))
    planned = source.open_source(DataConfig(**data))
    assert reads == [str(victim)]
    assert planned.n_rows == expected.n_rows + 40

    # A damaged summary: every footer is read, as without one.
    (root / "_metadata").write_bytes(b"not parquet")
    reads.clear()
    assert source.open_source(DataConfig(**data)).n_rows == expected.n_rows + 40 and len(reads) == 300


@pytest.fixture
def from_listing(monkeypatch):
    """Plan listings of more than 10 small files from the listing (as 1,000 would be)."""
    from gd_dask.data import footers

    monkeypatch.setattr(footers, "FOOTERLESS_MIN_FILES", 10)
    reads = []
    real = footers._read_footer
    monkeypatch.setattr(footers, "_read_footer", lambda fs, p, info=None: reads.append(p) or real(fs, p, info))
    return reads


def test_many_small_files_are_planned_from_the_listing_and_read_the_same_rows(small_files, from_listing):
    """Only the first footer is read on the client; packs are sized by the files' sizes on
    disk; the tasks read the same rows in the same order, and the holdout holds out the
    same rows, as with every footer read."""
    from gd_dask.data import Pack, read_block, read_slices

    footers = _source(small_files["data"], 16 * 2**20, pack=False)
    from_listing.clear()
    planned = _source(small_files["data"], 16 * 2**20)
    assert len(from_listing) == 1 and planned.n_rows is None and not planned.rows_known
    assert all(f["rows"] is None for f in planned.files[1:]) and planned.files[0]["rows"] == 40
    # 16 MiB a task, each file 1 MiB of open cost plus its size on disk: 15 files a task
    assert all(isinstance(c, Pack) for c in planned.chunks) and len(planned.chunks) == 20
    whole = np.vstack([read_block(c, footers.spec) for c in footers.chunks])
    assert np.array_equal(np.vstack([read_block(c, planned.spec) for c in planned.chunks]), whole)
    streamed = np.vstack([z.copy() for c in planned.chunks for z in read_slices(c, planned.spec, rows=1000)])
    assert np.array_equal(streamed, whole)
    for validation in (0, 1):
        a = footers.split(seed=3, fraction=0.2)[validation]
        b = planned.split(seed=3, fraction=0.2)[validation]
        held = [np.vstack([read_block(c, s.spec) for c in s.chunks]) for s in (a, b)]
        assert np.array_equal(held[0], held[1]) and 0 < len(held[0]) < 12_000


def test_training_on_files_planned_from_the_listing_is_bit_identical_on_any_workers(small_files, tmp_path,
                                                                                  from_listing):
    res = _fit_on_one_and_three_workers(small_files, make_config({**small_files["data"], "missing": "drop"},
                                                                  tmp_path))
    assert res.metrics["n"] == 12_000
    assert res.rows_dropped is None  # not counted: no footers, no row count to compare with


def test_a_file_planned_from_the_listing_without_a_column_is_named_when_read(small_files, tmp_path, client,
                                                                            from_listing):
    import shutil

    import pyarrow.parquet as pq

    from gd_dask.errors import DataError
    from gd_dask.jobs.training import fit

    root = tmp_path / "d"
    shutil.copytree(small_files["data"]["path"], root)
    victim = sorted(root.rglob("*.parquet"))[150]
    pq.write_table(pq.read_table(victim).drop_columns(["x1"]), victim)
    with pytest.raises(DataError, match=f"{victim.name}: column 'x1' not found"):
        fit(make_config({**small_files["data"], "path": str(root)}, tmp_path), client)
    first = sorted(root.rglob("*.parquet"))[0]  # the first footer is read up front: a config error
    pq.write_table(pq.read_table(first).drop_columns(["x1"]), first)
    from gd_dask.config import DataConfig
    from gd_dask.data import open_source

    with pytest.raises(DataError, match=f"{first.name}: column 'x1' not found"):
        open_source(DataConfig(**{**small_files["data"], "path": str(root)}))


def test_a_pack_on_an_object_store_fetches_its_files_at_once_with_the_same_bits(small_files, tmp_path):
    """latency:// at 20 ms a request: a pack's ~100 files come many at a time, not one
    after another (2 s), and train to the local bits."""
    import time

    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig
    from gd_dask.runtime.executor import Executor
    from gd_dask.data import read
    from gd_dask.jobs.training import fit

    options = {"delay": 0.02}
    remote = {**small_files["data"], "path": "latency://" + small_files["data"]["path"], "storage_options": options}
    src = _source(remote, 100 * 2**20)
    pack = max(src.chunks, key=lambda c: len(c.pieces))
    assert len(pack.pieces) > 90
    t = time.perf_counter()
    remote_rows = read.read_block(pack, src.spec)
    assert time.perf_counter() - t < len(pack.pieces) * 0.02 / 4
    local = _source(small_files["data"], 100 * 2**20)
    assert np.array_equal(remote_rows, read.read_block(local.chunks[src.chunks.index(pack)], local.spec))
    with connect(ClusterConfig(processes=False)) as c:
        assert Executor(c, src, cache=False).moments().n == 12_000
        a = fit(make_config(remote, tmp_path / "a"), c)
        b = fit(make_config(small_files["data"], tmp_path / "b"), c)
    assert list(a.m) == list(b.m) and a.b == b.b


def test_a_pass_that_stops_early_or_meets_a_damaged_file_leaves_the_read_ahead_clean(small_files, tmp_path):
    """The next row group is decoded on another thread: a reader that stops early, or a
    file that cannot be read in the middle of a pack, ends cleanly (the error names the
    file) and the next read works."""
    import shutil

    from gd_dask.data import Pack, read_slices
    from gd_dask.errors import DataError

    src = _source(small_files["data"], 16 * 2**20)
    pack = src.chunks[0]
    assert isinstance(pack, Pack) and len(pack.pieces) > 6
    for z in read_slices(pack, src.spec, rows=100):
        break  # an early stop: the generator (and its pending read) is closed
    first = np.vstack([z.copy() for z in read_slices(pack, src.spec, rows=100)])
    assert len(first) == pack.rows

    root = tmp_path / "d"
    shutil.copytree(small_files["data"]["path"], root)
    damaged = sorted(root.rglob("*.parquet"))[5]
    damaged.write_bytes(damaged.read_bytes()[:200])  # truncated: no footer
    # The same pack read from the copy (planning would catch the damage in the footers).
    base = small_files["data"]["path"]
    moved = Pack([dataclasses.replace(p, path=str(root / p.path[len(base) + 1:]), ident=None) for p in pack.pieces])
    with pytest.raises(DataError, match=damaged.name):
        list(read_slices(moved, src.spec, rows=100))
    again = np.vstack([z.copy() for z in read_slices(pack, src.spec, rows=100)])
    assert np.array_equal(again, first)


@pytest.mark.parametrize("missing", ["error", "drop"])
def test_a_pack_of_small_files_gives_the_slices_of_reading_them_one_by_one(tmp_path, monkeypatch, missing):
    """A pack's small tables are joined before they are copied into slices (and not read
    ahead): the same slices to the bit as one table at a time, across files whose
    schemas differ (an int64 column), with NaN rows dropped and a holdout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gd_dask.data import read
    from gd_dask.data import footers
    from gd_dask.data.source import Holdout

    rng = np.random.default_rng(5)
    X = rng.normal(size=(3000, 2))
    X[rng.random(3000) < 0.02, 0] = np.nan
    data = write_parquet(tmp_path / "d", X, X @ [1.0, 2.0], n_files=60)
    odd = sorted((tmp_path / "d").rglob("*.parquet"))[31]
    table = pq.read_table(odd)
    pq.write_table(table.set_column(1, "x1", pa.array(np.arange(table.num_rows), type=pa.int64())), odd)
    monkeypatch.setattr(footers, "FOOTERLESS_MIN_FILES", 3)  # planned from the listing: types unchecked across files
    src = _source({**data, "missing": missing}, 128 * 2**20)
    spec = dataclasses.replace(src.spec, holdout=Holdout(3, 0.25, False))
    assert len(src.chunks) == 1 and len(src.chunks[0].pieces) == 60

    def slices():
        return [z.copy() for z in read.read_slices(src.chunks[0], spec, rows=512)]

    joined = slices()
    monkeypatch.setattr(read, "READ_AHEAD_MIN_BYTES", 0)  # every table on its own, read ahead
    apart = slices()
    assert len(joined) == len(apart) > 3
    assert all(a.shape == b.shape and np.array_equal(a, b, equal_nan=True) for a, b in zip(joined, apart))


def test_a_local_listing_gives_what_fsspec_find_gives(small_files, tmp_path):
    """Local folders are listed with os.scandir (0.6 s for 100,000 files, fsspec 1.6 s):
    the same files, sizes and mtimes, so the same statistics-cache keys."""
    import fsspec

    from gd_dask.data.listing import _find_local

    root = small_files["data"]["path"]
    ours, theirs = _find_local(root), fsspec.filesystem("file").find(root, detail=True)
    assert sorted(ours) == sorted(theirs) and len(ours) >= 300
    assert all((ours[p]["size"], ours[p]["mtime"], ours[p]["type"]) ==
               (theirs[p]["size"], theirs[p]["mtime"], theirs[p]["type"]) for p in ours)


def _pack_slices(src, reader):
    """Every slice of every pack, read with ``reader`` (polars or None: file by file)."""
    from gd_dask.data import Pack
    from gd_dask.data import read as R

    before = R._polars
    R._polars = reader
    try:
        packs = [c for c in src.chunks if isinstance(c, Pack)]
        assert packs
        return [[z.copy() for z, _ in src.spec.slices(c, 8192, shifted=True)] for c in packs], \
            [R.read_block(c, src.spec) for c in packs]
    finally:
        R._polars = before


def test_polars_reads_a_pack_as_the_files_read_one_by_one_to_the_bit(tmp_path):
    """Floats, integers, booleans, nullable integers and decimals, several row groups a
    file: the pack read in one polars call gives the slices and blocks of pyarrow's file
    by file read, to the bit."""
    import decimal

    import polars
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    for f in range(40):
        n = 150
        ints = pa.array([None if i % 17 == 0 else int(v) for i, v in enumerate(rng.integers(-9, 9, n))], pa.int64())
        table = pa.table({"a": rng.normal(size=n), "i": rng.integers(0, 1000, n), "t": rng.random(n) < 0.5,
                          "n": ints, "d": pa.array([decimal.Decimal(f"{v:.2f}") for v in rng.normal(size=n)],
                                                  pa.decimal128(10, 2)),
                          "y": rng.normal(size=n)})
        pq.write_table(table, tmp_path / f"part-{f:03d}.parquet", row_group_size=60)
    for missing in ("error", "drop"):
        data = {"path": str(tmp_path), "features": ["a", "i", "t", "n", "d"], "target": "y", "missing": missing}
        src = _source(data, 2**27)
        slices_pl, blocks_pl = _pack_slices(src, lambda: polars)
        slices_pa, blocks_pa = _pack_slices(src, lambda: None)
        assert len(slices_pl) == len(slices_pa)
        for a, b in zip(slices_pl + blocks_pl, slices_pa + blocks_pa):
            assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b)) if isinstance(a, list) \
                else np.array_equal(a, b, equal_nan=True)


def test_a_pack_polars_refuses_is_read_file_by_file_and_its_culprit_named(tmp_path):
    """Files planned from the listing (over 1,000) are checked by the task that reads
    them. One whose column is int64 among doubles gives the bits of the file by file
    read; one whose column is gone fails polars' one call, and the file by file read
    names it in one line."""
    import polars
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gd_dask.errors import DataError

    rng = np.random.default_rng(6)
    for f in range(1200):
        a = rng.normal(size=4) if f != 7 else rng.integers(0, 9, 4)  # one file's 'a' is int64
        pq.write_table(pa.table({"a": a, "y": rng.normal(size=4)}), tmp_path / f"part-{f:04d}.parquet")
    src = _source({"path": str(tmp_path), "features": ["a"], "target": "y"}, 2**27)
    assert sum(p.row_groups is None for c in src.chunks for p in c.pieces) >= 1000  # planned from the listing
    (slices_pl, _), (slices_pa, _) = _pack_slices(src, lambda: polars), _pack_slices(src, lambda: None)
    assert all(np.array_equal(x, y) for a, b in zip(slices_pl, slices_pa) for x, y in zip(a, b))
    pq.write_table(pa.table({"b": rng.normal(size=4), "y": rng.normal(size=4)}), tmp_path / "part-0612.parquet")
    src = _source({"path": str(tmp_path), "features": ["a"], "target": "y"}, 2**27)
    with pytest.raises(DataError, match="part-0612.parquet"):
        _pack_slices(src, lambda: polars)
    for f in range(600, 1200):  # a whole pack's 'a' as text: polars reads it, the task refuses it
        pq.write_table(pa.table({"a": [f"{v:.3f}" for v in rng.normal(size=4)], "y": rng.normal(size=4)}),
                       tmp_path / f"part-{f:04d}.parquet")
    src = _source({"path": str(tmp_path), "features": ["a"], "target": "y"}, 2**27)
    first_text = str(tmp_path / "part-0600")
    texts = next(c for c in src.chunks if len(c.pieces) > 1 and all(p.path >= first_text for p in c.pieces))
    with pytest.raises(DataError, match=r"part-\d+\.parquet: column 'a' is string, not numeric"):
        [z for z in src.spec.slices(texts, 8192)]
