"""Checks a new night must pass before a nightly refit uses it (``registry.validate``).

All from statistics the refit computes anyway: each night's merged per-file moments (the
statistics cache, and the holdout pass over the new night) and the current model's error
on the new night (the same pass). A failed check names the night, the column and the
numbers; the refit then quarantines the night: it is neither trained on nor used to
judge, and the current model stays.

- ``rows``: the night's rows against the median of the window's earlier nights: outside
  [1 − rows, 1 + rows] × median fails (half the rows, duplicated rows).
- ``mean_shift``: |mean − the earlier nights' mean| in units of their standard deviation,
  per feature and target (a unit changed ×1000; slow drift moves a fraction of an SD).
- ``sd_ratio``: the standard deviation against the earlier nights', outside
  [1/sd_ratio, sd_ratio].
- ``error_ratio``: the current model's promotion metric on the new night against the
  median of the current models' metric on the last nights' holdouts (each also one night
  past its training, so steady drift keeps the ratio near 1): labels that no longer
  follow the features. For metrics where higher is better the ratio is inverted.
- ``schema`` and ``nulls`` fail when the night's files lack a column or hold NaN/inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .gradient import Moments
from .losses import LOWER_IS_BETTER

#: Earlier nights the error check compares with.
RECENT_NIGHTS = 5


@dataclass(frozen=True)
class NightStats:
    date: str
    n: float
    mean: np.ndarray
    sd: np.ndarray

    @classmethod
    def of(cls, date: str, mom: Moments) -> NightStats:
        var = np.diag(mom.comoment) / mom.n if mom.n else np.full(mom.mean.shape, math.nan)
        return cls(date, float(mom.n), mom.mean.copy(), np.sqrt(np.maximum(var, 0.0)))


def check_night(new: NightStats, earlier: list[NightStats], columns: list[str], settings,
                metric: str | None = None, current_error: float | None = None, recent_errors=()) -> list[dict]:
    """The checks ``new`` fails against ``earlier`` nights (see the module docstring)."""
    failed = []
    if not earlier:
        return failed
    if settings.rows is not None:
        median = float(np.median([e.n for e in earlier]))
        ratio = new.n / median if median else math.inf
        if not (1 - settings.rows <= ratio <= 1 + settings.rows):
            failed.append({"check": "rows", "value": new.n, "expected": median, "ratio": ratio,
                           "message": f"{new.n:g} rows against a median of {median:g} ({ratio:.2f} ×)"})
    base = merged_stats(earlier)
    for j, col in enumerate(columns):
        if settings.mean_shift is not None and base.sd[j] > 0:
            shift = abs(new.mean[j] - base.mean[j]) / base.sd[j]
            if shift > settings.mean_shift:
                failed.append({"check": "mean_shift", "column": col, "value": float(new.mean[j]),
                               "expected": float(base.mean[j]), "shift_sd": float(shift),
                               "message": f"'{col}' mean {new.mean[j]:.6g} is {shift:.3g} SD from "
                                          f"{base.mean[j]:.6g}"})
        if settings.sd_ratio is not None and base.sd[j] > 0:
            ratio = new.sd[j] / base.sd[j]
            if not (1 / settings.sd_ratio <= ratio <= settings.sd_ratio):
                failed.append({"check": "sd_ratio", "column": col, "value": float(new.sd[j]),
                               "expected": float(base.sd[j]), "ratio": float(ratio),
                               "message": f"'{col}' SD {new.sd[j]:.6g} against {base.sd[j]:.6g} ({ratio:.3g} ×)"})
    recent = [e for e in recent_errors if e is not None and math.isfinite(e)][-RECENT_NIGHTS:]
    if settings.error_ratio is not None and current_error is not None and recent:
        median = float(np.median(recent))
        if median > 0 and current_error > 0:
            ratio = current_error / median if metric in LOWER_IS_BETTER else median / current_error
            if ratio > settings.error_ratio:
                failed.append({"check": "error_ratio", "metric": metric, "value": current_error,
                               "expected": median, "ratio": ratio,
                               "message": f"the current model's {metric} {current_error:.6g} against a median "
                                          f"of {median:.6g} on recent nights ({ratio:.2f} ×)"})
    return failed


def merged_stats(nights: list[NightStats]) -> NightStats:
    """The earlier nights as one: pooled mean and SD (within and between nights)."""
    n = np.array([e.n for e in nights])
    means = np.array([e.mean for e in nights])
    sds = np.array([e.sd for e in nights])
    total = n.sum()
    mean = (n[:, None] * means).sum(0) / total
    var = (n[:, None] * (sds ** 2 + (means - mean) ** 2)).sum(0) / total
    return NightStats("window", float(total), mean, np.sqrt(var))
