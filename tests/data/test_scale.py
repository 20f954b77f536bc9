"""Data bigger than the cluster's memory trains to completion within the memory limit."""

import dataclasses
import json
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT

ROWS = 22_000_000          # × 4 float64 columns = 704 MB, more than 2 × 300 MiB
LIMIT = 300 * 2**20  # distributed pauses a worker at 80%: 240 MiB


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(3)
    per_file = ROWS // 11
    for i in range(11):
        X = rng.normal(size=(per_file, 3))
        y = X @ [1.5, -0.7, 2.0] + 3.0 + rng.normal(size=per_file)
        folder = root / "d" / f"date=2026-11-{i + 1:02d}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": y}),
                       folder / "part-0000.parquet", row_group_size=200_000)
    cfg = root / "run.yaml"
    cfg.write_text(json.dumps({
        "name": "big", "data": {"path": str(root / "d"), "features": ["a", "b", "c"], "target": "y"},
        "cluster": {"n_workers": 2, "memory_limit": LIMIT},
        "output": {"checkpoint_every": 0},
    }))
    return cfg


def _peak_worker_rss(proc, stop, peaks):
    parent = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            for child in parent.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                peaks[child.pid] = max(peaks.get(child.pid, 0), rss)
        except psutil.Error:
            pass
        time.sleep(0.05)


@pytest.mark.parametrize("strategy,epochs", [("gram", 100), ("stream", 3)])
def test_data_bigger_than_worker_memory_trains_within_the_limit(big_dataset, tmp_path, strategy, epochs):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gd_dask", "train", str(big_dataset), "--set", f"output.dir={tmp_path}",
         "--set", f"optimizer.strategy={strategy}", "--set", f"optimizer.epochs={epochs}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, peaks = threading.Event(), {}
    watcher = threading.Thread(target=_peak_worker_rss, args=(proc, stop, peaks), daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=400)
    stop.set()
    watcher.join()
    assert proc.returncode == 0, err
    assert "cache: none" in err  # the blocks do not fit, so they are re-read each pass
    model = json.loads((tmp_path / "model.json").read_text())
    assert model["metrics"]["n"] == ROWS
    np.testing.assert_allclose(model["m"], [1.5, -0.7, 2.0], atol=2e-3)
    workers = sorted(peaks.values())[-2:]  # the two largest children are the workers
    print(f"{strategy}: peak worker RSS {[round(w / 2**20) for w in workers]} MiB (limit {LIMIT // 2**20})")
    assert max(workers) < LIMIT


def test_embedded_workers_run_on_the_configured_arrow_pool(tmp_path):
    """The pool must be in the environment before a worker process loads pyarrow. Worker
    processes re-import the main module, and once that module imports pyarrow.compute
    (as gd-dask's entry point does) the nanny's ``env`` comes too late: workers silently
    ran on another allocator."""
    script = tmp_path / "pools.py"
    script.write_text(
        "import pyarrow.compute  # noqa: F401  (like the CLI: loaded before any cluster)\n"
        "from distributed import Client\n"
        "from gd_dask.runtime.cluster import local_cluster\n"
        "if __name__ == '__main__':\n"
        "    with local_cluster(n_workers=1, threads_per_worker=1, dashboard_address=':0') as lc, \\\n"
        "            Client(lc, set_as_default=False) as c:\n"
        "        pools = c.run(lambda dask_worker: (__import__('pyarrow').default_memory_pool().backend_name,\n"
        "            __import__('gd_dask.data.read', fromlist=['x']).fast_pool_name(\n"
        "                dask_worker.memory_manager.memory_limit)))\n"
        "    print(' '.join(' '.join(p) for p in pools.values()))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    got, wanted = out.stdout.split()  # the pool it reads on, the one for its memory limit
    assert got == wanted


READ_ONE_CHUNK = """
import resource, sys
from gd_dask.data import Chunk, ReadSpec, read_slices
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
total = 0.0
spec = ReadSpec(tuple(f"c{j}" for j in range(10)), "file", {})
for z in read_slices(Chunk(sys.argv[1], (0,), 0), spec, rows=8192):
    total += float(z.sum())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_a_large_row_group_is_read_a_batch_at_a_time(tmp_path):
    """One 64 MB row group (pyarrow's default 1M-row groups and Spark's 128 MB ones look
    like this): a pass over it must not hold the row group, decoded or mapped. A 20-file
    dataset of 174 MB row groups used to kill every worker at a 400 MB limit."""
    rng = np.random.default_rng(0)
    n = 800_000
    path = tmp_path / "one-group.parquet"
    pq.write_table(pa.table({f"c{j}": rng.normal(size=n) for j in range(10)}), path, row_group_size=n)
    assert pq.ParquetFile(path).metadata.row_group(0).total_byte_size > 60 * 2**20
    res = subprocess.run([sys.executable, "-c", READ_ONE_CHUNK, str(path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    grew = int(res.stdout.strip())
    assert grew < 20 * 2**20, f"peak memory grew by {grew / 2**20:.0f} MiB reading one row group"


def test_row_groups_stream_above_the_chunk_size_with_the_same_bits(tmp_path):
    """A row group up to the chunk size is decoded whole (1.6 × faster than streaming a
    42 MB one); above it, as on a worker with little memory (``chunk_bytes_for``), it is
    streamed ``BATCH_ROWS`` at a time. Either way every pass sees the same slices, to
    the bit, also with a holdout (whose row indices come from the batch offsets)."""
    from gd_dask.config import DataConfig
    from gd_dask.data import open_source
    from gd_dask.data.read import BATCH_ROWS
    from gd_dask.kernels.moments import shifted_moments

    rng = np.random.default_rng(1)
    n = 3 * BATCH_ROWS + 123
    pq.write_table(pa.table({"a": rng.normal(size=n), "b": rng.normal(size=n), "y": rng.normal(size=n)}),
                   tmp_path / "one.parquet", row_group_size=n)
    src = open_source(DataConfig(path=str(tmp_path), features=["a", "b"], target="y"))
    src.layout(2**30)
    whole = src.spec
    assert whole.stream_above == 2**30
    train, val = src.split(3, 0.3)
    for spec in (whole, train.spec, val.spec):
        streamed = dataclasses.replace(spec, stream_above=0)
        a = [z.copy() for z in spec.slices(src.chunks[0], 5000)]
        b = [z.copy() for z in streamed.slices(src.chunks[0], 5000)]
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
        ma = shifted_moments(spec.slices(src.chunks[0], 8192, shifted=True))
        mb = shifted_moments(streamed.slices(src.chunks[0], 8192, shifted=True))
        assert np.array_equal(ma.comoment, mb.comoment) and np.array_equal(ma.mean, mb.mean)
    src.layout(2**20)  # a small worker's chunk: its row groups stream
    assert src.spec.stream_above == 2**20


def test_a_row_group_is_decoded_whole_where_every_thread_of_the_smallest_worker_has_room():
    """pyarrow's default row group for 1M rows × 21 float64 columns (174 MB) is decoded
    whole on a 6 GB worker with one or two threads, streamed on a small one; no limit:
    the default."""
    from gd_dask.runtime.executor import stream_above_for

    rg = 173_765_823
    six = {"memory_limit": 6 * 10**9, "nthreads": 1}
    assert stream_above_for([six, dict(six)], 2**27) > rg
    assert stream_above_for([dict(six, nthreads=2)], 2**27) > rg
    assert stream_above_for([six, {"memory_limit": 2 * 10**9, "nthreads": 8}], 2**27) < rg
    assert stream_above_for([{"memory_limit": 300 * 2**20, "nthreads": 1}], 2**27) == 2**20
    assert stream_above_for([{"memory_limit": 0, "nthreads": 2}], 2**27) == 2**27
