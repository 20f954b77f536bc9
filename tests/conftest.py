"""Shared fixtures: small Parquet datasets written by the tests, and a real cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
def write_parquet(root: Path, X: np.ndarray, y: np.ndarray, n_files: int = 3, names=None,
                  target: str = "y", row_group_rows: int | None = None, days: int = 1) -> dict:
    """Split (X, y) in order over ``n_files`` files under ``root/date=.../``.

    Returns the minimal ``data`` config section for it.
    """
    X = np.asarray(X, dtype=float).reshape(len(y), -1)
    names = names or [f"x{j}" for j in range(X.shape[1])]
    bounds = np.linspace(0, len(y), n_files + 1).astype(int)
    for i in range(n_files):
        lo, hi = bounds[i], bounds[i + 1]
        day = root / f"date=2026-11-{1 + i * days // n_files:02d}"
        day.mkdir(parents=True, exist_ok=True)
        cols = {n: X[lo:hi, j] for j, n in enumerate(names)}
        cols[target] = np.asarray(y, dtype=float)[lo:hi]
        pq.write_table(pa.table(cols), day / f"part-{i:04d}.parquet",
                       row_group_size=row_group_rows or max(1, hi - lo))
    return {"path": str(root), "features": list(names), "target": target}


def predict_levels(model: dict, X, *columns, unseen: float | None = None) -> np.ndarray:
    """model.json's prediction for numeric rows X (n × d, or n values) and each categorical
    column's values, every level looked up (one the model lacks: ``unseen``, or KeyError)."""
    X = np.asarray(X, dtype=np.float64)
    pred = model["b"] + X.reshape(len(X), -1) @ np.asarray(model["m"])
    for doc, values in zip(model["categorical"], columns):
        table = dict(zip(doc["levels"], doc["coef"]))
        pred = pred + np.array([table[v] if unseen is None else table.get(v, unseen) for v in values.tolist()])
    return pred


def assert_bounds_hold(early, exact, levels: int = 2) -> None:
    """Each coefficient of an unrefined two-column fit (``early``) within its certified
    bound of the refined one (``exact``, whose own bound is far below), and the bound not
    vacuous: within 10³ of some true error."""
    pairs = [(early.coef.m, exact.coef.m, early.errors.m, exact.errors.m),
             (early.coef.b, exact.coef.b, early.errors.b, exact.errors.b)]
    pairs += [(early.coef.levels[c], exact.coef.levels[c], early.errors.levels[c], exact.errors.levels[c])
              for c in range(levels)]
    worst, loose, tight = 0.0, 0.0, 0.0
    for ours, truth, bound, truth_bound in pairs:
        err = np.abs(np.asarray(ours) - np.asarray(truth))
        assert np.all(err <= np.asarray(bound) + np.asarray(truth_bound))
        worst = max(worst, float(np.max(err / np.maximum(np.asarray(bound), 1e-300))))
        loose, tight = max(loose, float(np.max(bound))), max(tight, float(np.max(truth_bound)))
    assert tight < 1e-3 * loose    # the refined solution stands for the truth
    assert worst > 1e-3            # and the bound is not vacuous


def one_hot_least_squares(X, columns, y, w, model: dict):
    """The one-hot normal equations of model.json's encoding (each categorical column's
    reference and pinned levels dropped; ``columns``: their values, in model.json's
    order), solved by dense Cholesky: (design [1, X, indicators], coefficients, the factor)."""
    from scipy import sparse
    from scipy.linalg import cho_factor, cho_solve

    cols = [sparse.csr_matrix(np.column_stack([np.ones(len(X)), X]))]
    for doc, values in zip(model["categorical"], columns):
        levels = [lv for lv in doc["levels"] if lv != doc["reference"] and lv not in doc.get("pinned", ())]
        pos = {lv: i for i, lv in enumerate(levels)}
        rows = [i for i, v in enumerate(values.tolist()) if v in pos]
        cols.append(sparse.csr_matrix((np.ones(len(rows)), (rows, [pos[values[i]] for i in rows])),
                                      shape=(len(X), len(levels))))
    D = sparse.hstack(cols).tocsc()
    Dw = D.multiply(w[:, None]).tocsc() if w is not None else D
    factor = cho_factor((Dw.T @ D).toarray())  # dense Cholesky: 4,400² in a second, where SuperLU took 7 s
    return D, cho_solve(factor, Dw.T @ y), factor


def make_config(data: dict, tmp_path: Path, **sections):
    """A validated RunConfig for tests, with the output in tmp_path."""
    from gd_dask.config import validate_config

    raw = {"name": "t", "data": data, "output": {"dir": str(tmp_path / "out")}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return validate_config(raw)


def run_cli(*args, cwd=None, timeout=240, env=None):
    """Run ``python -m gd_dask ARGS`` in a real subprocess; returns CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "gd_dask", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture(scope="session")
def client():
    """One real LocalCluster (2 worker processes) for the whole session."""
    from distributed import Client

    from gd_dask.runtime.cluster import local_cluster, quiet_distributed

    quiet_distributed()
    with local_cluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=":0") as cluster, Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="session")
def threads():
    """Threads of this process, as ``cluster.processes: auto`` runs a small job."""
    from gd_dask.runtime.threads import ThreadsClient

    c = ThreadsClient(1, 1)
    yield c
    c.close()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def dask_cluster():
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    from dask_processes import DaskProcesses

    procs = DaskProcesses(n_workers=2).start()
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture(autouse=True)
def _no_train_left_running():
    """A failed test must not leave a million-epoch run (and its cluster) behind."""
    from dask_processes import started

    yield
    while started:
        proc = started.pop()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
