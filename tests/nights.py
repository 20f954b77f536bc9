"""The nights of the refit tests: the issue-28 relation y = slope·x + 3 + N(0, 1) with
x ~ N(170, 10), one date partition a night, a window of 3, and what a rerun must leave
byte-identical (test_nightly_guard, test_crashes, test_hostile)."""

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
