"""The nights of the refit tests: the issue-28 relation y = slope·x + 3 + N(0, 1) with
x ~ N(170, 10), one date partition a night, a window of 3, and what a rerun must leave
byte-identical (test_nightly_guard, test_crashes, test_hostile); and test_refit's days
(``add_day``: two files a day, the slope drifting; test_s3 too)."""

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gd_dask.artifacts.registry import Registry
from gd_dask.config import validate_config

START = date(2026, 11, 1)
ROWS = 4000


def night(day: int) -> date:
    return START + timedelta(days=day)


def write_night(root: Path, day: int, slope: float, kind: str | None = None, seed: int = 0) -> None:
    """The issue's nights: x ~ N(170, 10), y = slope·x + 3 + N(0, 1); ``kind`` spoils one."""
    rng = np.random.default_rng(seed * 100_000 + day)
    x = rng.normal(170, 10, ROWS)
    y = slope * x + 3 + rng.normal(size=ROWS)
    if kind == "shuffled":
        y = rng.permutation(y)
    folder = root / f"date={night(day).isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": x, "y": y}), folder / "part-0.parquet")


def config(tmp_path, **validate):
    raw = {"name": "guard", "data": {"path": str(tmp_path / "data"), "features": ["x"], "target": "y",
                                     "window_days": 3},
           "registry": {"dir": str(tmp_path / "models")}}
    if validate:
        raw["registry"]["validate"] = validate
    return validate_config(raw)


def snapshot(reg: Registry) -> tuple:
    """What a rerun must leave byte-identical."""
    root = Path(reg.root)
    files = ("current.json", "quarantine.json", "released.json", "events.jsonl")
    return (tuple((root / f).read_bytes() if (root / f).exists() else None for f in files),
            tuple(reg.versions()), tuple(sorted(p.name for p in (root / "nights").iterdir())))


#: test_refit's days (and test_s3's): two files of DAY_ROWS rows a day, the slope drifting.
DAY_ROWS = 400


def slope(day: int) -> float:
    return 1.0 + 0.15 * day  # the truth drifts every night


def add_day(root, day: int, corrupt: bool = False, seed: int = 0):
    """Two files for ``day``: y = slope(day)·x1 − 0.5·x2 + 2 + noise."""
    rng = np.random.default_rng(seed * 1000 + day)
    folder = root / f"date={(START + timedelta(days=day)).isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(2):
        X = rng.normal(size=(DAY_ROWS, 2)) + [3.0, -1.0]
        y = slope(day) * X[:, 0] - 0.5 * X[:, 1] + 2.0 + rng.normal(scale=0.3, size=DAY_ROWS)
        if corrupt:
            y = rng.permutation(y) * 3  # labels no longer belong to their rows
        pq.write_table(pa.table({"x1": X[:, 0], "x2": X[:, 1], "y": y}), folder / f"part-{f:04d}.parquet")
