"""`make bench`'s time_to_model section (issue 20): what a user waits for, tool by tool.

Every tool runs in a fresh process, as a user runs it (``peers.py``), with the page cache
warm. "Time to model" is reading plus fitting, timed inside the process, its library's
imports included (each peer imports inside the timed call); "whole process" is the
process from start to exit (the interpreter too); "warm" is a second fit in the same
process. gd-dask also runs as the command a user types (``gd-dask train``,
defaults, embedded cluster), on the 8M-row job and on a 10,000-row one.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ("scan", "duckdb", "pandas_sklearn", "polars_lstsq", "spark", "gd_dask")
LABELS = {
    "scan": "one pyarrow scan of the columns (the floor)",
    "duckdb": "DuckDB: one SQL query of the 54 sums, then an 8 × 8 solve",
    "pandas_sklearn": "pandas.read_parquet + scikit-learn LinearRegression",
    "polars_lstsq": "polars + numpy lstsq",
    "spark": "Spark MLlib LinearRegression, normal equations, local[2]",
    "gd_dask": "gd_dask.train (Python), defaults, embedded cluster",
}


def _peer(name: str, root: Path, k: int, features: int = 8) -> dict | None:
    """One fresh process running ``k`` fits; None where the tool is not installed."""
    t = time.perf_counter()
    res = subprocess.run([sys.executable, str(HERE / "peers.py"), name, str(root), str(k), str(features)],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        if "ModuleNotFoundError" in res.stderr or "JAVA" in res.stderr.upper():
            return None
        raise RuntimeError(f"{name}: {last}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {"first_s": out["seconds"][0], "warm_s": min(out["seconds"][1:]) if k > 1 else None,
            "process_s": wall, "coef": out["coef"]}


#: The issue's large job: 20 files × 1M rows × 20 features and y (3.4 GB as float64).
WIDE_FILES, WIDE_ROWS, WIDE_FEATURES = 20, 1_000_000, 20


def wide_on_a_running_cluster(work: Path, quick: bool, runs: int) -> dict:
    """The large job submitted to a running cluster started as a user starts one
    (``dask scheduler``, ``dask worker --nworkers 2 --nthreads 1``, no settings), against
    one pyarrow scan of the same columns in a fresh process (first scan, and the best
    of two more in that process)."""
    from common import running_cluster, write_days

    rows = 50_000 if quick else WIDE_ROWS
    root = work / f"wide-{rows}"
    write_days(root, WIDE_FILES, rows, d=WIDE_FEATURES)
    scans = [_peer("scan", root, 3, WIDE_FEATURES) for _ in range(runs)]
    cfg = work / "wide.yaml"
    cfg.write_text(json.dumps({"name": "wide", "data": {"path": str(root), "target": "y",
                                                         "features": [f"x{j}" for j in range(WIDE_FEATURES)]},
                               "output": {"dir": str(work / "wide-out")}}))
    with running_cluster(n_workers=2) as address:
        trained = [_command(["train", str(cfg), "--no-plot", "--scheduler", address])[1] for _ in range(runs)]
    return {"rows": rows * WIDE_FILES, "columns": WIDE_FEATURES + 1, "files": WIDE_FILES,
            "scan_first_s": [r["first_s"] for r in scans], "scan_warm_s": [r["warm_s"] for r in scans],
            "train_s": trained}


def _command(args: list[str]) -> tuple[float, float]:
    """(whole command's seconds, the training seconds it printed) of one ``gd-dask`` run."""
    gd = shutil.which("gd-dask", path=str(Path(sys.executable).parent)) or "gd-dask"
    t = time.perf_counter()
    res = subprocess.run([gd, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"gd-dask {' '.join(args)}: {res.stderr.strip().splitlines()[-1]}")
    return wall, float(re.search(r"seconds: ([0-9.]+)", res.stdout).group(1))


def time_to_model(work: Path, quick: bool, speed_root: Path, runs: int = 5) -> dict:
    """Each peer ``runs`` times in a fresh process (median, min), gd-dask's command too."""
    runs = 2 if quick else runs
    out: dict = {"runs": runs, "peers": {}}
    for name in PEERS:
        rows = [r for r in (_peer(name, speed_root, 2) for _ in range(runs)) if r is not None]
        if not rows:
            out["peers"][name] = None
            continue
        out["peers"][name] = {
            k: [r[k] for r in rows] for k in ("first_s", "warm_s", "process_s")} | {"coef": rows[-1]["coef"]}
    cfg = work / "ttm.yaml"
    cfg.write_text(json.dumps({"name": "ttm", "data": {"path": str(speed_root), "features": [f"x{j}" for j in range(8)],
                                                        "target": "y"}, "output": {"dir": str(work / "ttm-out")}}))
    out["command_8m"] = [_command(["train", str(cfg)]) for _ in range(runs)]
    small = work / "students-10k"
    if not small.exists():
        _command_ok(["make-data", str(small), "--rows", "10000"])
    cfg_small = work / "ttm-small.yaml"
    cfg_small.write_text(json.dumps({"name": "small", "data": {"path": str(small), "features": ["height_cm"],
                                                                "target": "weight_kg"},
                                     "output": {"dir": str(work / "ttm-small-out")}}))
    out["command_10k"] = [_command(["train", str(cfg_small)]) for _ in range(runs)]
    out["wide"] = wide_on_a_running_cluster(work, quick, runs)
    return out


def _command_ok(args: list[str]) -> None:
    gd = shutil.which("gd-dask", path=str(Path(sys.executable).parent)) or "gd-dask"
    subprocess.run([gd, *args], check=True, capture_output=True)


def _span(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def report(t: dict) -> None:
    print(f"\n## Time to model: 8M rows × 8 features in 8 files, each tool in a fresh process, "
          f"{t['runs']} runs (median, range)\n")
    print("| tool | time to model, first in its process (imports included) | warm (second fit) | whole process |")
    print("|---|---|---|---|")
    ref = (t["peers"].get("duckdb") or {}).get("first_s")
    for name in PEERS:
        p = t["peers"].get(name)
        if p is None:
            print(f"| {LABELS[name]} | not installed | | |")
            continue
        print(f"| {LABELS[name]} | {_span(p['first_s'])} | {_span(p['warm_s'])} | {_span(p['process_s'])} |")
    whole = [w for w, _ in t["command_8m"]]
    trained = [s for _, s in t["command_8m"]]
    print(f"| **gd-dask train**, defaults (the command) | {_span(trained)} training | | {_span(whole)} |")
    small = [w for w, _ in t["command_10k"]]
    print(f"| gd-dask train, a 10,000-row job (the command) | {_span([s for _, s in t['command_10k']])} "
          f"training | | {_span(small)} |")
    if ref:
        print(f"\ngd-dask's training in the command / DuckDB's time to model: "
              f"{statistics.median(trained) / statistics.median(ref):.2f} ×")
    w = t.get("wide")
    if w:
        print(f"\n{w['rows']:,} rows × {w['columns']} columns in {w['files']} files on a running 2-worker cluster "
              f"(`dask scheduler`, `dask worker`), defaults, {t['runs']} runs:\n")
        print("| | seconds |\n|---|---|")
        print(f"| pyarrow scan, first in a fresh process | {_span(w['scan_first_s'])} |")
        print(f"| pyarrow scan, warm (best of the next two in that process) | {_span(w['scan_warm_s'])} |")
        print(f"| gd-dask train --scheduler, training | {_span(w['train_s'])} |")
        print(f"\ntraining / warm scan: {statistics.median(w['train_s']) / statistics.median(w['scan_warm_s']):.2f} × "
              f"(target ≤ 1.5 ×); / first scan: "
              f"{statistics.median(w['train_s']) / statistics.median(w['scan_first_s']):.2f} ×")
    coefs = {k: v["coef"] for k, v in t["peers"].items() if v and v.get("coef")}
    if "gd_dask" in coefs:
        import numpy as np

        ours = np.array(coefs["gd_dask"])
        for k, c in coefs.items():
            if k != "gd_dask":
                print(f"- {k}: largest relative difference from gd-dask's coefficients "
                      f"{np.max(np.abs(np.array(c) - ours) / np.abs(ours)):.1e}")
