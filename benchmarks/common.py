"""Helpers for the benchmarks: data generation, clusters, worker memory sampling."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TRUE_M = np.array([1.5, -0.7, 2.0, 0.3, -1.1, 0.8, 0.05, -0.4])


def write_days(root: Path, days: int, rows_per_day: int, d: int = 8, seed: int = 0,
               row_group_rows: int = 250_000, labels: bool = False) -> list[str]:
    """``root/date=.../part-0000.parquet``, one file per day, d features + y (TRUE_M
    repeated past 8 features); skips days present.
    ``labels``: y is 0/1, drawn with probability σ(standardized X·TRUE_M/2 + 0.3)."""
    rng = np.random.default_rng(seed)
    names = [f"x{j}" for j in range(d)]
    wrote = False
    for day in range(days):
        folder = root / f"date=2026-{1 + day // 28:02d}-{1 + day % 28:02d}"
        path = folder / "part-0000.parquet"
        if path.exists():
            rng.normal(size=1)  # keep the stream of days independent of what exists
            continue
        folder.mkdir(parents=True, exist_ok=True)
        X = rng.normal(size=(rows_per_day, d)) * np.linspace(0.5, 3.0, d) + np.linspace(-2, 5, d)
        if labels:
            z = ((X - np.linspace(-2, 5, d)) / np.linspace(0.5, 3.0, d)) @ TRUE_M[:d] / 2 + 0.3
            y = (rng.random(rows_per_day) < 1 / (1 + np.exp(-z))).astype(np.float64)
        else:
            y = X @ np.resize(TRUE_M, d) + 3.0 + rng.normal(size=rows_per_day)
        cols = {n: X[:, j] for j, n in enumerate(names)}
        cols["y"] = y
        pq.write_table(pa.table(cols), path, row_group_size=row_group_rows)
        wrote = True
    if wrote:
        os.sync()  # no write-back of fresh files competing with the timings
    return names


def data_config(root: Path, names, **optimizer) -> dict:
    return {"name": "bench", "data": {"path": str(root), "features": list(names), "target": "y"},
            "optimizer": optimizer, "output": {"checkpoint_every": 0}}


@contextlib.contextmanager
def local_client(n_workers: int = 2, memory_limit="auto"):
    from distributed import Client

    from gd_dask.runtime.cluster import local_cluster, quiet_distributed

    quiet_distributed()
    with local_cluster(n_workers=n_workers, threads_per_worker=1, memory_limit=memory_limit,
                       dashboard_address=":0") as lc, Client(lc) as c:  # default: dask-ml computes on it
        yield c


@contextlib.contextmanager
def running_cluster(n_workers: int = 2):
    """A cluster as a user starts one: ``dask scheduler`` and ``dask worker --nworkers N
    --nthreads 1`` processes on 127.0.0.1 with no settings of ours; yields its address."""
    import socket
    import subprocess
    import sys

    from distributed import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0"], **quiet)]
    try:
        procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", str(n_workers), "--nthreads", "1",
                                       "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"], **quiet))
        with Client(address, timeout=60) as c:
            c.wait_for_workers(n_workers, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
            p.wait(timeout=60)


class WorkerRSS:
    """Samples the RSS of every worker process of a client's cluster in the background."""

    def __init__(self, client, every: float = 0.05):
        import psutil

        self.procs = [psutil.Process(pid) for pid in client.run(__import__("os").getpid).values()]
        self.every = every
        self.peak = {p.pid: 0 for p in self.procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for p in self.procs:
                with contextlib.suppress(Exception):
                    self.peak[p.pid] = max(self.peak[p.pid], p.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def best_of(k: int, fn, *args, **kw):
    """(result, seconds) of the fastest of ``k`` calls."""
    runs = [timed(fn, *args, **kw) for _ in range(k)]
    return min(runs, key=lambda r: r[1])


def train_command(config: dict, cfg_path: Path) -> dict:
    """`gd-dask train` on ``config`` (written to ``cfg_path``) in a fresh process, as a user
    runs it: {whole_s (the process), train_s (training as it reports), model (model.json),
    pass_s (history.csv's seconds per epoch or pass), peak_rss_mb (the command's, where
    ``/usr/bin/time`` is)}."""
    import json
    import re
    import shutil
    import subprocess
    import sys

    cfg_path.write_text(json.dumps(config))
    gd = shutil.which("gd-dask", path=str(Path(sys.executable).parent)) or "gd-dask"
    timed = ["/usr/bin/time", "-f", "RSS %M"] if Path("/usr/bin/time").exists() else []
    t = time.perf_counter()
    run = subprocess.run(timed + [gd, "train", str(cfg_path), "--no-plot"], capture_output=True, text=True)
    whole = time.perf_counter() - t
    if run.returncode != 0:
        raise RuntimeError(f"gd-dask {config['name']}: {run.stderr.strip().splitlines()[-1]}")
    out = Path(config["output"]["dir"])
    history = (out / "history.csv").read_text().splitlines()[1:]
    rss = [line for line in run.stderr.splitlines() if line.startswith("RSS ")]
    return {"whole_s": whole, "train_s": float(re.search(r"seconds: ([0-9.]+)", run.stdout).group(1)),
            "model": json.loads((out / "model.json").read_text()),
            "pass_s": [float(line.split(",")[-1]) for line in history],
            "peak_rss_mb": int(rss[-1].split()[1]) / 1024 if rss else None}
