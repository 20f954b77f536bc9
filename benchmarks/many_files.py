"""`make bench`'s many_files section (issue 21): the same rows as many small files and as
8 files, with the phases a user waits for: listing and footers (planning), the one pass
of a default run; and planning behind 30 ms a request (``latency://``), with and
without a ``_metadata`` summary.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gd_dask.data.write import write_summary

FEATURES = ["x0", "x1", "x2"]


def write_files(root: Path, n_files: int, rows: int, seed: int = 0) -> None:
    """``n_files`` files of ``rows`` rows, 20 date folders; skipped if present."""
    if root.exists():
        return
    rng = np.random.default_rng(seed)
    per_day = max(1, n_files // 20)
    for i in range(n_files):
        folder = root / f"date=2026-01-{1 + i // per_day:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        X = rng.normal(size=(rows, 3))
        y = X @ [1.5, -0.7, 2.0] + 3.0 + rng.normal(size=rows)
        pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1], "x2": X[:, 2], "y": y}),
                       folder / f"part-{i:06d}.parquet")
    os.sync()


def _command(path: str, work: Path, storage_options: dict | None = None) -> dict:
    """``gd-dask train`` on ``path`` with the defaults, as a user runs it: the whole
    command's seconds and the peak RSS of its largest process (the client, or a worker)."""
    import json
    import shutil
    import subprocess
    import sys

    cfg = work / "many-command.yaml"
    cfg.write_text(json.dumps({"name": "many", "data": {"path": path, "features": FEATURES, "target": "y",
                                                         "storage_options": storage_options or {}},
                               "output": {"dir": str(work / "many-command-out")}}))
    gd = shutil.which("gd-dask", path=str(Path(sys.executable).parent)) or "gd-dask"
    # Through a fresh parent whose only descendants are the command's: this process's own
    # RUSAGE_CHILDREN keeps the largest child it ever had (another section's peer).
    probe = ("import resource, subprocess, sys, time\n"
             "t = time.perf_counter()\n"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "wall = time.perf_counter() - t\n"
             "sys.stderr.write(r.stderr)\n"
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, wall)")
    res = subprocess.run([sys.executable, "-c", probe, gd, "train", str(cfg), "--no-plot"], capture_output=True,
                         text=True)
    code, peak_kib, wall = res.stdout.split()
    if code != "0":
        raise RuntimeError(res.stderr.strip().splitlines()[-1])
    return {"command_s": float(wall), "peak_rss_mib": int(peak_kib) / 1024}


def _phases(path: str, storage_options: dict | None = None, train: bool = True) -> dict:
    """Planning (listing + footers) and, with ``train``, the default run on the embedded
    cluster ``cluster.processes: auto`` picks for it."""
    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig, validate_config
    from gd_dask.data import open_source
    from gd_dask.jobs.training import fit

    cfg = validate_config({"name": "many", "data": {"path": path, "features": FEATURES, "target": "y",
                                                     "storage_options": storage_options or {}},
                           "output": {"checkpoint_every": 0}})
    from gd_dask.data.latency import LatencyFileSystem

    t, before = time.perf_counter(), LatencyFileSystem.requests
    src = open_source(cfg.data)
    out = {"planning_s": time.perf_counter() - t, "files": len(src.files)}
    if path.startswith("latency://"):
        out["requests"] = LatencyFileSystem.requests - before
    if train:
        with connect(ClusterConfig(), data=src) as client:
            t = time.perf_counter()
            res = fit(cfg, client, source=src)
            out.update(train_s=time.perf_counter() - t, chunks=len(src.chunks), converged=res.converged)
    return out


def many_files(work: Path, quick: bool, n_files: int = 20_000) -> dict:
    """``n_files`` (``make bench`` ``--many-files``; the issue's target is 100,000) of 100
    rows, and the same rows in 8 files."""
    n_files, rows = (2_000, 100) if quick else (n_files, 100)
    many, few = work / f"many-{n_files}", work / f"few-{n_files}"
    write_files(many, n_files, rows)
    write_files(few, 8, n_files * rows // 8, seed=1)
    out = {"n_files": n_files, "rows": n_files * rows,
           "few": _phases(str(few)) | _command(str(few), work),
           "many": _phases(str(many)) | _command(str(many), work)}
    latency = {"delay": 0.03}
    out["many_30ms"] = _phases("latency://" + str(many), latency)
    write_summary(many)  # gd_dask.data.write
    try:
        out["many_summary"] = _phases(str(many), train=False)
        out["many_summary_30ms"] = _phases("latency://" + str(many), latency, train=False)
    finally:
        (many / "_metadata").unlink()
    return out


def write_nights(root: Path, nights: int, per_night: int, rows: int = 100) -> None:
    """``nights`` date folders of ``per_night`` files of ``rows`` rows; adds the nights
    missing, so a later call with one more night adds one night."""
    from datetime import date, timedelta

    for day in range(nights):
        folder = root / f"date={(date(2026, 1, 1) + timedelta(days=day)).isoformat()}"
        if folder.exists():
            continue
        rng = np.random.default_rng(day)
        folder.mkdir(parents=True)
        for i in range(per_night):
            X = rng.normal(size=(rows, 3))
            y = X @ [1.5, -0.7, 2.0] + 3.0 + rng.normal(size=rows)
            pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1], "x2": X[:, 2], "y": y}),
                           folder / f"part-{i:05d}.parquet")
    os.sync()


def nightly_refit(work: Path, quick: bool, per_night: int = 1000, window: int = 30) -> dict:
    """Issue 21's nightly refit: a 30-day window of ``per_night`` files a night behind 30
    ms a request. The first night reads every file; the next night should read its own
    files and a few cache objects. Workers are threads of this process, so the request
    counter (``LatencyFileSystem.requests``, one a process) sees the workers' reads too."""
    import shutil
    from datetime import date, timedelta

    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig, validate_config
    from gd_dask.jobs.refit import refit
    from gd_dask.data.latency import LatencyFileSystem
    from gd_dask.artifacts.registry import Registry

    per_night = 20 if quick else per_night
    data, models = work / f"nights-{per_night}", work / f"nights-{per_night}-models"
    shutil.rmtree(models, ignore_errors=True)
    shutil.rmtree(data / f"date={(date(2026, 1, 1) + timedelta(days=window)).isoformat()}", ignore_errors=True)
    write_nights(data, window, per_night)
    latency = {"delay": 0.03}
    cfg = validate_config({
        "name": "nightly", "optimizer": {},
        "data": {"path": f"latency://{data}", "features": FEATURES, "target": "y", "window_days": window,
                 "storage_options": latency},
        "registry": {"dir": str(models), "validate": {"rows": None, "mean_shift": None, "sd_ratio": None,
                                                      "error_ratio": None}}})
    out = {"per_night": per_night, "window": window}
    with connect(ClusterConfig(processes=False)) as client:
        for label, nights in (("first", window), ("next", window + 1)):
            write_nights(data, nights, per_night)
            before, t = LatencyFileSystem.requests, time.perf_counter()
            outcome = refit(cfg, client, date(2026, 1, 1) + timedelta(days=nights - 1))
            event = Registry(str(models), "nightly").events()[-1]
            out[label] = {"seconds": time.perf_counter() - t, "requests": LatencyFileSystem.requests - before,
                          "files_read": outcome.files_read, "cache_objects_read": event["cache_objects_read"],
                          "status": outcome.status}
    return out


def report_refit(r: dict) -> None:
    print(f"\n## Nightly refit: a {r['window']}-day window of {r['per_night']:,} files a night, 30 ms a request\n")
    print("| night | seconds | data requests | files read | cache objects read |")
    print("|---|---|---|---|---|")
    for key, label in (("first", "the first (every file)"), ("next", "the next (one new night)")):
        p = r[key]
        print(f"| {label} | {p['seconds']:.1f} | {p['requests']:,} | {p['files_read']:,} "
              f"| {p['cache_objects_read']} |")


def report(r: dict) -> None:
    print(f"\n## Many files: {r['rows']:,} rows × 3 features as {r['n_files']:,} files and as 8\n")
    print("| layout | planning (s) | training (s) | tasks a pass | requests planning | whole command (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for key, label in (("few", "8 files"), ("many", f"{r['n_files']:,} files"),
                       ("many_30ms", f"{r['n_files']:,} files, 30 ms a request"),
                       ("many_summary", f"{r['n_files']:,} files with _metadata"),
                       ("many_summary_30ms", f"{r['n_files']:,} files with _metadata, 30 ms a request")):
        p = r[key]
        train = f"{p['train_s']:.2f}" if "train_s" in p else "–"
        whole = f"{p['command_s']:.2f} | {p['peak_rss_mib']:.0f}" if "command_s" in p else "– | –"
        print(f"| {label} | {p['planning_s']:.2f} | {train} | {p.get('chunks', '–')} | {p.get('requests', '–')} "
              f"| {whole} |")
    ratio = (r["many"]["planning_s"] + r["many"]["train_s"]) / (r["few"]["planning_s"] + r["few"]["train_s"])
    print(f"\nplanning + training, {r['n_files']:,} files / 8 files: {ratio:.1f} ×; the whole command: "
          f"{r['many']['command_s'] / r['few']['command_s']:.1f} ×")
