"""The article's example as a hive-partitioned Parquet dataset.

Students' height (cm) → weight (kg): ``weight = 0.62·height − 38 + noise``. Extra
features (``--features K``) are standard-normal columns ``x1 … x{K−1}`` with seeded
true coefficients. Files go to ``DIR/date=YYYY-MM-DD/part-NNNN.parquet``.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TRUE_SLOPE = 0.62
TRUE_INTERCEPT = -38.0
NOISE_SD = 4.0


def make_students(
    out_dir: str | Path,
    rows: int = 100_000,
    features: int = 1,
    days: int = 7,
    files_per_day: int = 2,
    seed: int = 0,
    start: date = date(2026, 11, 1),
    row_group_rows: int = 65_536,
) -> dict:
    """Write the dataset and return its true coefficients.

    Returns
    -------
    dict with ``features`` (names), ``m`` (true slopes), ``b`` (true intercept), ``files``.
    """
    rng = np.random.default_rng(seed)
    names = ["height_cm"] + [f"x{j}" for j in range(1, features)]
    m = np.concatenate([[TRUE_SLOPE], np.round(rng.uniform(-3, 3, features - 1), 3)])
    n_files = days * files_per_day
    per_file = np.full(n_files, rows // n_files)
    per_file[: rows % n_files] += 1
    out = Path(out_dir)
    written = []
    k = 0
    for day in range(days):
        folder = out / f"date={(start + timedelta(days=day)).isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(files_per_day):
            n = int(per_file[k])
            k += 1
            height = rng.normal(168.0, 9.0, n)
            cols = {"height_cm": height}
            for j in range(1, features):
                cols[names[j]] = rng.standard_normal(n)
            X = np.column_stack([cols[c] for c in names])
            cols["weight_kg"] = X @ m + TRUE_INTERCEPT + rng.normal(0.0, NOISE_SD, n)
            path = folder / f"part-{f:04d}.parquet"
            pq.write_table(pa.table(cols), path, row_group_size=row_group_rows)
            written.append(str(path))
    return {"features": names, "m": m.tolist(), "b": TRUE_INTERCEPT, "files": written}
