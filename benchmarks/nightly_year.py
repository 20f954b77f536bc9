"""A year of simulated nights (issue 28): real refits, one a night, on real Parquet files.

Each scenario writes 365 date partitions, one a night, and runs ``gd_dask.jobs.refit.refit``
after each, at default ``registry.validate`` settings (``data.window_days: 8``: a week
of training nights, ``registry.holdout_days: 1``). The truth: x ~ N(170, 10), y = slope·x + intercept +
N(0, 1), and

- ``drift 1%`` / ``drift 2%`` / ``drift 3%``: the slope rises that share of its first
  value (0.5) every night;
- ``weekly``: the intercept (±4), the feature's mean (±0.3 SD) and the rows (±15 %)
  follow the day of the week;
- ``step``: the slope jumps from 0.5 to 0.8 on night 180 and stays there.

Into every scenario the same bad nights are injected at random (two of each kind):
shuffled labels, a feature ×1000, half the rows, every row twice, a column gone, a burst
of NaN. Reported per scenario:

- false quarantines (a good night quarantined) and missed bad nights (a bad night not
  quarantined the night it landed); bad nights not followed by a promotion on the next
  good night;
- how many nights the current model lags an oracle that refits on the true relation: the
  smallest k with the current slope within 1 % of the oracle's k nights ago (the
  least-squares slope of the same window's rows, bad nights left out, with noise-free
  labels); mean and max, from night 14 on and, for ``step``, outside the nights it takes
  to catch up;
- the mean lag behind the true slope itself (a window's refit trails a drifting truth by
  about half its training nights plus the holdout);
- for ``step``, the nights until the current slope is within 1 % of the new one.

Used by tests/jobs/test_nightly_year.py (the whole year, every scenario) and by ``make bench``
(section ``nightly_year``).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCENARIOS = ("drift 1%", "drift 2%", "drift 3%", "weekly", "step")
BAD_KINDS = ("shuffled", "unit x1000", "half rows", "rows twice", "column gone", "NaN burst")
START = date(2025, 1, 1)
WINDOW_DAYS, HOLDOUT_DAYS = 8, 1  # a week of training nights, the newest night judges
STEP_NIGHT, BASE_SLOPE, STEP_SLOPE = 180, 0.5, 0.8
X_SD = 10.0
#: A lag is counted up to this many nights.
MAX_LAG = 60


def truth(scenario: str, day: int) -> dict:
    """The relation and the features on night ``day``."""
    week = 2 * math.pi * day / 7
    slope, intercept, x_mean, rows = BASE_SLOPE, 3.0, 170.0, 1.0
    if scenario.startswith("drift"):
        rate = float(scenario.split()[1].rstrip("%")) / 100
        slope = BASE_SLOPE * (1 + rate * day)
    if scenario == "weekly":
        intercept += 4 * math.sin(week + 0.5)
        x_mean += 3 * math.cos(week + 0.5)  # uncorrelated with the intercept over a week
        rows += 0.15 * math.sin(week + 2.0)
    elif scenario == "step":
        slope = STEP_SLOPE if day >= STEP_NIGHT else BASE_SLOPE
    return {"slope": slope, "intercept": intercept, "x_mean": x_mean, "rows": rows}


def oracle_slope(truths: dict, day: int, bad=()) -> float:
    """The slope a refit as of ``day`` would reach on the true relation: the least-squares
    slope of its training nights' rows (the window's last ``WINDOW_DAYS`` nights without the
    ``bad`` ones, less the newest ``HOLDOUT_DAYS``) with their labels free of noise.
    ``truths``: {night: moments of [x, true y]} (``write_night``)."""
    from gd_dask.kernels.moments import merge_all

    window = [d for d in range(day + 1) if d not in bad][-WINDOW_DAYS:]
    train = window[:-HOLDOUT_DAYS] or window
    mom = merge_all([truths[d] for d in train])
    return float(mom.comoment[0, 1] / mom.comoment[0, 0])


def bad_nights(nights: int, seed: int = 28) -> dict[int, str]:
    """Two nights of each kind at random after the first 14, never two in a row (a year
    has room for them: ``nights`` ≥ 60)."""
    assert nights >= 60, nights
    rng = np.random.default_rng(seed)
    days = set()
    while len(days) < 2 * len(BAD_KINDS):
        d = int(rng.integers(14, nights))
        if not {d - 1, d, d + 1} & days and d != STEP_NIGHT:
            days.add(d)
    kinds = [k for k in BAD_KINDS for _ in range(2)]
    return dict(zip(sorted(days), rng.permutation(kinds).tolist()))


def write_night(root: Path, scenario: str, day: int, rows: int, kind: str | None = None):
    """Night ``day``'s file; returns the moments of its features and noise-free labels."""
    from gd_dask.kernels.moments import block_moments

    t = truth(scenario, day)
    rng = np.random.default_rng(day * 7919 + SCENARIOS.index(scenario))
    n = int(rows * t["rows"] * rng.uniform(0.95, 1.05))
    x = rng.normal(t["x_mean"], X_SD, n)
    exact = t["slope"] * x + t["intercept"]
    y = exact + rng.normal(size=n)
    cols = {"x": x, "y": y}
    if kind == "shuffled":
        cols["y"] = rng.permutation(y)
    elif kind == "unit x1000":
        cols["x"] = x * 1000
    elif kind == "half rows":
        cols = {k: v[: n // 2] for k, v in cols.items()}
    elif kind == "rows twice":
        cols = {k: np.concatenate([v, v]) for k, v in cols.items()}
    elif kind == "column gone":
        del cols["x"]
    elif kind == "NaN burst":
        lo = int(rng.integers(0, n - n // 20))
        cols["y"][lo: lo + n // 20] = np.nan
    folder = root / f"date={(START + timedelta(days=day)).isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), folder / "part-0.parquet")
    return block_moments(np.column_stack([x, exact]))


def run_year(scenario: str, nights: int = 365, rows: int = 2000, client=None, workdir=None) -> dict:
    """One scenario's year of nightly refits; the counts of the module docstring."""
    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit
    from gd_dask.artifacts.registry import Registry
    from gd_dask.runtime.threads import ThreadsClient

    own_client = client is None
    client = client or ThreadsClient(1, 1)
    root = Path(workdir or tempfile.mkdtemp(prefix="nightly-year-"))
    cfg = validate_config({
        "name": "year", "data": {"path": str(root / "data"), "features": ["x"], "target": "y",
                                 "window_days": WINDOW_DAYS},
        "registry": {"dir": str(root / "models"), "holdout_days": HOLDOUT_DAYS}})
    bad = bad_nights(nights)
    reg = Registry(cfg.registry.dir, cfg.name)
    out = {"scenario": scenario, "nights": nights, "bad_nights": len(bad), "false_quarantines": 0,
           "missed_bad_nights": 0, "not_promoted_after_bad": 0, "promoted": 0, "rejected": 0,
           "drift_reports": 0, "false": [], "missed": []}
    lags, slopes, truths, after_bad, t0 = [], [], {}, False, time.perf_counter()
    try:
        for day in range(nights):
            truths[day] = write_night(root / "data", scenario, day, rows, bad.get(day))
            o = refit(cfg, client, START + timedelta(days=day))
            if day in bad:
                if o.status != "quarantined":
                    out["missed_bad_nights"] += 1
                    out["missed"].append((day, bad[day], o.message))
                after_bad = True
                continue
            if o.status == "quarantined":
                out["false_quarantines"] += 1
                out["false"].append((day, o.message))
            elif after_bad and o.status != "promoted":
                out["not_promoted_after_bad"] += 1
            after_bad = False
            out[o.status] = out.get(o.status, 0) + 1
            out["drift_reports"] += bool(o.verdict.get("drift"))
            slope = reg.current_model()["m"][0]
            slopes.append((day, slope))
            catching_up = scenario == "step" and STEP_NIGHT <= day < STEP_NIGHT + WINDOW_DAYS + HOLDOUT_DAYS
            if day >= 2 * WINDOW_DAYS and not catching_up:
                lags.append(_lag(scenario, truths, day, slope, bad))
    finally:
        if own_client:
            client.close()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    lags = np.array(lags, dtype=float).reshape(-1, 2)
    out["lag_mean"], out["lag_max"] = float(lags[:, 0].mean()), int(lags[:, 0].max())
    out["truth_lag_mean"] = float(lags[:, 1].mean())
    if scenario == "step":
        caught = [d for d, s in slopes if d >= STEP_NIGHT and abs(s - STEP_SLOPE) <= 0.01 * STEP_SLOPE]
        out["step_catch_up"] = caught[0] - STEP_NIGHT if caught else None
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _lag(scenario: str, truths: dict, day: int, slope: float, bad) -> tuple[int, int]:
    """The smallest k with ``slope`` within 1 % of the oracle's slope k nights ago, and of
    the true slope k nights ago."""
    out = []
    for of in (lambda d: oracle_slope(truths, d, bad), lambda d: truth(scenario, d)["slope"]):
        out.append(next((k for k in range(min(day, MAX_LAG) + 1)
                         if abs(slope - of(day - k)) <= 0.01 * abs(of(day - k))), MAX_LAG))
    return out[0], out[1]


def table(results: list[dict]) -> str:
    head = (f"{'scenario':<10} {'false q.':>8} {'missed':>7} {'no promo':>8} {'rejected':>8} {'lag mean':>9} "
            f"{'lag max':>8} {'vs truth':>8} {'step':>5} {'drift rep.':>10} {'seconds':>8}")
    lines = [head]
    for r in results:
        step = "-" if r.get("step_catch_up", "-") is None else r.get("step_catch_up", "-")
        lines.append(f"{r['scenario']:<10} {r['false_quarantines']:>8} {r['missed_bad_nights']:>7} "
                     f"{r['not_promoted_after_bad']:>8} {r['rejected']:>8} {r['lag_mean']:>9.2f} "
                     f"{r['lag_max']:>8} {r['truth_lag_mean']:>8.2f} {step!s:>5} "
                     f"{r['drift_reports']:>10} {r['seconds']:>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    chosen = sys.argv[1:] or list(SCENARIOS)
    print(table([run_year(s) for s in chosen]))
