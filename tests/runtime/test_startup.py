"""What a command costs around the training (issue 20): the embedded cluster as threads
for data that fits, no import a small job does not need, loss.png without matplotlib."""

import decimal
import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from conftest import ROOT, write_parquet


def test_processes_auto_means_threads_for_data_that_fits_and_processes_otherwise():
    from types import SimpleNamespace

    from gd_dask.runtime.cluster import THREADS_DATA_FRACTION, THREADS_MAX_FILES, use_processes
    from gd_dask.config import ClusterConfig
    from gd_dask.runtime.threads import system_memory

    def data(nbytes, files=8):
        return SimpleNamespace(nbytes=nbytes, files=[{}] * files)

    fits = int(THREADS_DATA_FRACTION * system_memory())
    assert use_processes(ClusterConfig(), data(10_000)) is False
    assert use_processes(ClusterConfig(), data(fits)) is False
    assert use_processes(ClusterConfig(), data(fits + 1)) is True
    assert use_processes(ClusterConfig(), data(10_000, THREADS_MAX_FILES)) is False
    assert use_processes(ClusterConfig(), data(10_000, THREADS_MAX_FILES + 1)) is True  # reads hold the GIL
    assert use_processes(ClusterConfig(), None) is True  # size unknown
    assert use_processes(ClusterConfig(memory_limit="2GiB"), data(10_000)) is True  # a limit for nannies
    assert use_processes(ClusterConfig(processes=True), data(10_000)) is True
    assert use_processes(ClusterConfig(processes=False), data(10 * fits, 10**6)) is False


def test_a_small_job_imports_neither_distributed_nor_pandas_nor_matplotlib(tmp_path):
    """Their imports were 0.4, 0.35 and 0.75 s of a 10,000-row job's whole command."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 2))
    data = write_parquet(tmp_path / "d", X, X @ [1.0, 2.0] + 1.0, n_files=3)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "small", "data": data, "output": {"dir": str(tmp_path / "out")}}))
    probe = ("import sys\nfrom gd_dask.interfaces.cli import main\n"
             f"code = main(['train', {str(cfg)!r}])\n"
             "print(code, sorted(m for m in ('distributed', 'pandas', 'matplotlib') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "0 []", res.stdout + res.stderr
    assert "threads of this process" in res.stderr
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert model["converged"] and np.allclose(model["m"], [1.0, 2.0]) and np.isclose(model["b"], 1.0)


@pytest.mark.parametrize("arr", [
    pa.array([1.5, -2.0, 3.25]),
    pa.array([1.5, None, 3.25]),
    pa.array([1.5, -2.0, 3.25, 4.0, 5.0]).slice(2, 2),  # an offset into the buffer
    pa.array([1, None, -7], type=pa.int32()),
    pa.array([True, False, None]),
    pa.array([decimal.Decimal("1.25"), None], type=pa.decimal128(5, 2)),
    pa.chunked_array([pa.array([1.0, None]), pa.array([], type=pa.float64()), pa.array([3.0])]),
    pa.chunked_array([pa.array([2.0])]),
    pa.array([], type=pa.float64()),
], ids=["float64", "nulls", "offset", "int32", "bool", "decimal", "chunked", "one-chunk", "empty"])
def test_arrow_columns_become_the_float64_values_arrow_gives_nulls_as_nan(arr):
    from gd_dask.data import as_float64

    want = arr.to_numpy(zero_copy_only=False).astype(np.float64) if len(arr) else np.empty(0)
    got = as_float64(arr)
    assert got.dtype == np.float64 and got.shape == (len(arr),)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("losses", [
    [4430.15, 15.7294],  # two epochs
    [3.0 * 0.7 ** i for i in range(300)],  # many decades
    [1.2, 1.1, 1.05, 1.0, 1.0],  # less than a decade
    [5.0],  # one epoch
    [2.0, 0.0, 0.0],  # an exact fit
    [1.0, float("nan"), float("inf"), 0.5, 0.25],  # gaps
    [float("nan")],  # nothing to draw
])
def test_loss_png_is_a_picture_of_the_contract_size_whatever_the_losses(losses):
    from PIL import Image

    from gd_dask.artifacts.lossplot import HEIGHT, WIDTH, loss_png

    png = loss_png([{"epoch": i + 1, "loss": v} for i, v in enumerate(losses)], "a title", "mean squared error")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (WIDTH, HEIGHT)
    colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    curve = sum(n for n, c in colours if c[2] > 150 and c[0] < 120)  # the blue of the line
    assert curve > 0 or not any(np.isfinite(losses))


def test_many_small_local_files_run_on_threads_when_polars_reads_their_packs(tmp_path, monkeypatch):
    """pyarrow holds the GIL opening each file, so past THREADS_MAX_FILES files the
    embedded cluster used worker processes; polars' reader lets go of it, so local
    packs it reads stay on threads. Without polars, processes as before."""
    from gd_dask.config import ClusterConfig, DataConfig
    from gd_dask.data import open_source
    from gd_dask.data import read as R
    from gd_dask.runtime import cluster

    for f in range(4):
        write_parquet(tmp_path / f"f{f}", np.ones((3, 1)) * f, np.arange(3.0), n_files=1)
    src = open_source(DataConfig(path=str(tmp_path), features=["x0"], target="y"))
    monkeypatch.setattr(cluster, "THREADS_MAX_FILES", 3)
    assert not cluster.use_processes(ClusterConfig(), src)
    monkeypatch.setattr(R, "_polars", lambda: None)
    assert cluster.use_processes(ClusterConfig(), src)
