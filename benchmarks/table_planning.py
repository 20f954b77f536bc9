"""`make bench`'s table_planning section (issue 30): planning a Delta table of many files
from its log, as a user's run does it: the snapshot (delta-rs reads the log), then
gd_dask's plan (live files, their rows and partitions from the log; the footers it still
reads), locally and with the data files behind 30 ms a request (``latency://``: the log
is read by delta-rs, which does not go through it). The peer: delta-rs's own listing of
the same snapshot (``get_add_actions``) and pyarrow's dataset over the live files.

The table is built cheaply: one small Parquet file hard-linked ``n`` times under date
folders, and a log of ``n`` add actions written by hand (with their row counts), as a
year of appends would leave it after a checkpoint-less history.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = ["x0", "x1", "x2"]


def write_table(root: Path, n_files: int, rows: int = 100) -> None:
    """A Delta table of ``n_files`` files of ``rows`` rows over 100 date partitions."""
    if (root / "_delta_log").exists():
        return
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 3))
    y = X @ [1.5, -0.7, 2.0] + 3.0 + rng.normal(size=rows)
    (root / "_delta_log").mkdir(parents=True)
    seed = root / "seed.parquet.tmp"
    pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1], "x2": X[:, 2], "y": y}), seed)
    size, now = seed.stat().st_size, int(time.time() * 1000)
    schema = {"type": "struct", "fields": [{"name": c, "type": "double", "nullable": True, "metadata": {}}
                                           for c in [*FEATURES, "y"]]
              + [{"name": "date", "type": "string", "nullable": True, "metadata": {}}]}
    lines = [{"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}},
             {"metaData": {"id": "bench", "format": {"provider": "parquet", "options": {}},
                           "schemaString": json.dumps(schema), "partitionColumns": ["date"], "configuration": {},
                           "createdTime": now}}]
    for i in range(n_files):
        day = f"2026-{1 + (i % 100) // 28:02d}-{1 + (i % 100) % 28:02d}"
        rel = f"date={day}/part-{i:06d}.parquet"
        (root / f"date={day}").mkdir(exist_ok=True)
        if i and i % 50_000 == 0:  # a file takes at most 65,000 links (ext4)
            seed.unlink()
            pq.write_table(pa.table({"x0": X[:, 0], "x1": X[:, 1], "x2": X[:, 2], "y": y}), seed)
        os.link(seed, root / rel)
        lines.append({"add": {"path": rel, "partitionValues": {"date": day}, "size": size,
                              "modificationTime": now, "dataChange": True,
                              "stats": json.dumps({"numRecords": rows})}})
    (root / "_delta_log" / f"{0:020d}.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    seed.unlink()


def plan(path: str, storage_options: dict | None = None) -> dict:
    """Seconds to the snapshot and to the whole plan (``open_source``), and the requests
    made through ``latency://``."""
    from gd_dask.config import DataConfig
    from gd_dask.data import open_source
    from gd_dask.data.latency import LatencyFileSystem
    from gd_dask.data.listing import list_data

    data = DataConfig(path=path, features=FEATURES, target="y", storage_options=storage_options or {})
    t, before = time.perf_counter(), LatencyFileSystem.requests
    listing = list_data(data)
    snap = time.perf_counter() - t
    src = open_source(data, listing=listing)
    return {"snapshot_s": snap, "plan_s": time.perf_counter() - t, "files": len(src.files),
            "rows": src.n_rows, "requests": LatencyFileSystem.requests - before}


def peers(root: Path) -> dict:
    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    t = time.perf_counter()
    dt = DeltaTable(str(root))
    adds = pa.table(dt.get_add_actions(flatten=True))
    delta_rs = time.perf_counter() - t
    files = [str(root / p) for p in adds.column("path").to_pylist()]
    t = time.perf_counter()
    pads.dataset(files, format="parquet")
    return {"delta_rs_add_actions_s": delta_rs, "pyarrow_dataset_s": time.perf_counter() - t}


def run(work: Path, n_files: int = 100_000) -> dict:
    root = work / f"delta-{n_files}"
    write_table(root, n_files)
    out = {"n_files": n_files, "local": plan(str(root)),
           "latency_30ms": plan(f"latency://{root}", {"delay": 0.03}), **peers(root)}
    return out


def report(r: dict) -> None:
    print(f"\n## A Delta table of {r['n_files']:,} files planned from its log\n")
    print("| | snapshot (s) | whole plan (s) | files | rows | requests |")
    print("|---|---|---|---|---|---|")
    for k in ("local", "latency_30ms"):
        p = r[k]
        print(f"| gd_dask, {k} | {p['snapshot_s']:.2f} | {p['plan_s']:.2f} | {p['files']:,} | {p['rows']:,} | "
              f"{p['requests']} |")
    print(f"| delta-rs get_add_actions (peer) | {r['delta_rs_add_actions_s']:.2f} | – | – | – | – |")
    print(f"| pyarrow dataset over the live files (peer) | – | {r['pyarrow_dataset_s']:.2f} | – | – | – |")


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    report(run(Path(a.work or tempfile.mkdtemp()), a.files))
