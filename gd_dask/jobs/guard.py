"""Checks a new night must pass before a nightly refit uses it (``registry.validate``).

A night is judged by its own evidence, never by how stale the current model has become:
drift and step changes in the relation are what refits exist to follow. Everything comes
from each night's merged per-file moments (the statistics cache, and the holdout pass
over the new night), so no check reads data. A failed check names the night, the column
and the numbers; the refit then quarantines the night: it is neither trained on nor used
to judge, and the current model stays.

The night's data, against the earlier nights of the window:

- ``rows``: the night's rows against the median of the earlier nights: outside
  [1 − rows, 1 + rows] × median fails (half the rows, every row twice).
- ``mean_shift``: |mean − the earlier nights' pooled mean| in units of their pooled SD,
  per feature (a unit changed ×1000).
- ``sd_ratio``: each feature's SD against the earlier nights', outside [1/sd_ratio,
  sd_ratio].
- ``schema`` and ``nulls`` (the refit's): a column gone, another type, NaN/inf.

The night's labels, from the night's own least-squares fit (its moments alone) against
the recent nights' own fits. The target's level and spread follow the relation, so they
are judged through the fit, not as a column:

- ``r2_drop``: the night's own R² below (1 − r2_drop) × the recent nights' median, by
  more than 4 standard errors of R² (shuffled labels: 0.86 → 0.00; drift and step changes
  leave it intact, and a tiny night's chance dip is no collapse).
- ``resid_sd_ratio``: the night's own residual SD against the recent nights' median,
  outside [1/r, r] (labels in another unit, labels shuffled).
- ``d2_drop`` (logistic and the GLM families, whose labels least squares describes
  poorly): the night's own fit by its loss (Newton passes on the night, from the
  challenger) explains D² = 1 − deviance / null deviance below (1 − r2_drop) × the recent
  nights' median, by more than 4 standard errors (Olkin & Finn's for R², taken as the
  approximation for D²). The recent nights' D² are those their own refits recorded
  (``night_fit`` in events.jsonl), quarantined nights left out, so a night is judged by
  nights that were judged by their own data, never by a model.

Reported, never a reason to quarantine:

- ``drift``: the night's own coefficients more than ``drift_z`` standard errors from the
  window's own fit, each with its size: the relation moved, and the refit follows it.
- ``staleness``: the current model's metric on the night against its median on recent
  nights (each one night past its training): how far behind the model has fallen. It
  grows while nights are refused, so it may never refuse one (``error_ratio`` only sets
  when it is flagged as stale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..kernels.moments import Moments
from ..kernels.losses import LOWER_IS_BETTER

#: Earlier nights the label checks and the staleness report compare with.
RECENT_NIGHTS = 5
#: Standard errors of R² a drop must exceed to count (besides ``r2_drop``).
R2_DROP_SE = 4.0


@dataclass(frozen=True)
class OwnFit:
    """The ordinary least-squares fit of one night's target on its features, with an
    intercept, from its moments. ``coef`` and ``se``: the slopes, then the intercept."""

    coef: np.ndarray
    se: np.ndarray
    r2: float
    resid_sd: float

    @classmethod
    def of(cls, mom: Moments) -> OwnFit | None:
        """None where the night has too few rows for residual degrees of freedom."""
        k = len(mom.mean) - 1
        n = float(mom.n)
        if not mom.finite() or n <= k + 1:
            return None
        s = mom.comoment
        sxx, sxy, syy = s[:k, :k], s[:k, k], float(s[k, k])
        inv = np.linalg.pinv(sxx)  # a constant feature in one night: its slope is 0, not an error
        beta = inv @ sxy
        ssr = max(syy - float(sxy @ beta), 0.0)
        sigma2 = ssr / (n - k - 1)
        xbar = mom.mean[:k]
        intercept = float(mom.mean[k] - xbar @ beta)
        se_beta = np.sqrt(np.maximum(sigma2 * np.diag(inv), 0.0))
        se_b = math.sqrt(max(sigma2 * (1.0 / n + float(xbar @ inv @ xbar)), 0.0))
        r2 = 1.0 - ssr / syy if syy > 0 else math.nan
        return cls(np.append(beta, intercept), np.append(se_beta, se_b), r2, math.sqrt(sigma2))


@dataclass(frozen=True)
class NightStats:
    date: str
    n: float
    mean: np.ndarray
    sd: np.ndarray
    fit: OwnFit | None = None

    @classmethod
    def of(cls, date: str, mom: Moments) -> NightStats:
        var = np.diag(mom.comoment) / mom.n if mom.n else np.full(mom.mean.shape, math.nan)
        return cls(date, float(mom.n), mom.mean.copy(), np.sqrt(np.maximum(var, 0.0)), OwnFit.of(mom))


@dataclass
class NightReport:
    """What the checks found: ``failed`` quarantines the night; ``drift`` and ``fit`` are
    information for the verdict and events.jsonl."""

    failed: list[dict] = field(default_factory=list)
    drift: list[dict] = field(default_factory=list)
    fit: dict | None = None


def check_night(new: NightStats, earlier: list[NightStats], features: list[str], settings,
                window: Moments | None = None) -> NightReport:
    """The checks ``new`` fails against ``earlier`` nights, oldest first (see the module
    docstring); ``window``: the training window's merged moments, for the drift report."""
    report = NightReport(fit=_fit_doc(new.fit))
    if not earlier:
        return report
    report.failed += _data_checks(new, earlier, features, settings)
    recent = [e.fit for e in earlier if e.fit is not None][-RECENT_NIGHTS:]
    if new.fit is not None and recent:
        report.failed += _label_checks(new.fit, new.n, recent, settings)
    own_window = OwnFit.of(window) if window is not None else None
    if new.fit is not None and own_window is not None and settings.drift_z is not None:
        report.drift = drift(new.fit, own_window, features, settings.drift_z)
    return report


def _data_checks(new: NightStats, earlier: list[NightStats], features: list[str], settings) -> list[dict]:
    failed = []
    if settings.rows is not None:
        median = float(np.median([e.n for e in earlier]))
        ratio = new.n / median if median else math.inf
        if not (1 - settings.rows <= ratio <= 1 + settings.rows):
            failed.append({"check": "rows", "value": new.n, "expected": median, "ratio": ratio,
                           "message": f"{new.n:g} rows against a median of {median:g} ({ratio:.2f} ×)"})
    base = merged_stats(earlier)
    for j, col in enumerate(features):
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
    return failed


def _label_checks(fit: OwnFit, n: float, recent: list[OwnFit], settings) -> list[dict]:
    failed = []
    r2s = [f.r2 for f in recent if math.isfinite(f.r2)]
    if settings.r2_drop is not None and r2s and math.isfinite(fit.r2):
        median = float(np.median(r2s))
        floor = (1 - settings.r2_drop) * median
        # Var(R²) ≈ 4 ρ² (1 − ρ²)² / n (Olkin & Finn): a small night's chance dip is no collapse.
        se = 2 * math.sqrt(max(median, 0.0)) * (1 - median) / math.sqrt(n)
        if fit.r2 < floor and median - fit.r2 > R2_DROP_SE * se:
            failed.append({"check": "r2_drop", "value": fit.r2, "expected": median,
                           "message": f"the night's own fit explains R² {fit.r2:.4g} against a median of "
                                      f"{median:.4g} on recent nights: its labels no longer follow its features"})
    sds = [f.resid_sd for f in recent if f.resid_sd > 0]
    if settings.resid_sd_ratio is not None and sds:
        median = float(np.median(sds))
        ratio = fit.resid_sd / median
        if not (1 / settings.resid_sd_ratio <= ratio <= settings.resid_sd_ratio):
            failed.append({"check": "resid_sd_ratio", "value": fit.resid_sd, "expected": median, "ratio": ratio,
                           "message": f"the night's own fit leaves a residual SD {fit.resid_sd:.6g} against a "
                                      f"median of {median:.6g} on recent nights ({ratio:.3g} ×)"})
    return failed


def deviance_checks(own: dict, n: float, recent: list, settings) -> list[dict]:
    """``d2_drop`` for the night's own fit by its loss's deviance (``own``: its D², or
    the error that stopped it) against the recent nights' D²."""
    if own.get("error"):
        return [{"check": "own_fit", "message": f"the night's own fit by the loss failed: {own['error']}"}]
    d2 = own.get("d2")
    recent = [r for r in recent if r is not None and math.isfinite(r)][-RECENT_NIGHTS:]
    if settings.r2_drop is None or d2 is None or not math.isfinite(d2) or not recent:
        return []
    median = float(np.median(recent))
    se = 2 * math.sqrt(max(median, 0.0)) * max(1 - median, 0.0) / math.sqrt(n)
    if d2 < (1 - settings.r2_drop) * median and median - d2 > R2_DROP_SE * se:
        return [{"check": "d2_drop", "value": d2, "expected": median,
                 "message": f"the night's own fit by the loss explains D² {d2:.4g} against a median of "
                            f"{median:.4g} on recent nights: its labels no longer follow its features"}]
    return []


def drift(night: OwnFit, window: OwnFit, features: list[str], z_limit: float) -> list[dict]:
    """The night's own coefficients more than ``z_limit`` standard errors (the night's and
    the window's, combined) from the window's own fit, each with its size."""
    out = []
    for j, name in enumerate([*features, "(intercept)"]):
        se = math.hypot(night.se[j], window.se[j])
        delta = float(night.coef[j] - window.coef[j])
        z = abs(delta) / se if se > 0 else (math.inf if delta else 0.0)
        if z > z_limit:
            rel = delta / abs(window.coef[j]) if window.coef[j] else math.inf
            out.append({"column": name, "night": float(night.coef[j]), "window": float(window.coef[j]),
                        "change": delta, "relative": rel, "z": z,
                        "message": f"'{name}' {window.coef[j]:.6g} → {night.coef[j]:.6g} "
                                   f"({rel:+.2%}, {z:.3g} SE)"})
    return out


def staleness(metric: str, current: float | None, recent, stale_ratio: float | None) -> dict | None:
    """The current model's ``metric`` on the night against its median on recent nights:
    information for the verdict, never a reason to quarantine."""
    recent = [e for e in recent if e is not None and math.isfinite(e)][-RECENT_NIGHTS:]
    if current is None or not math.isfinite(current):
        return None
    doc = {"metric": metric, "current": current}
    if recent:
        median = float(np.median(recent))
        ratio = (current / median if metric in LOWER_IS_BETTER else median / current) \
            if median > 0 and current > 0 else math.nan
        doc.update({"recent_median": median, "ratio": ratio,
                    "stale": bool(stale_ratio is not None and ratio > stale_ratio)})
    return doc


def merged_stats(nights: list[NightStats]) -> NightStats:
    """The earlier nights as one: pooled mean and SD (within and between nights)."""
    n = np.array([e.n for e in nights])
    means = np.array([e.mean for e in nights])
    sds = np.array([e.sd for e in nights])
    total = n.sum()
    mean = (n[:, None] * means).sum(0) / total
    var = (n[:, None] * (sds ** 2 + (means - mean) ** 2)).sum(0) / total
    return NightStats("window", float(total), mean, np.sqrt(var))


def _fit_doc(fit: OwnFit | None) -> dict | None:
    if fit is None:
        return None
    return {"r2": fit.r2, "resid_sd": fit.resid_sd, "coef": fit.coef.tolist()}
