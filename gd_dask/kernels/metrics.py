"""Error sums and the metrics made from them (MSE, RMSE, MAE, R²), classification sums
(accuracy, log loss, AUC by bins): per block, added in a fixed order."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .blocks import split_block
from .losses import Loss
from .losses.links import IDENTITY, Link
from .moments import Moments, block_moments, merge_moments


class ErrorSums(NamedTuple):
    """Partial sums for evaluation metrics of a fixed model.

    abs_err, sq_err : float — Σ|err|, Σ err²
    n : int
    y_mean, y_m2 : float — mean of y and Σ (y − ȳ)², merged like ``Moments``
    """

    abs_err: float
    sq_err: float
    n: int
    y_mean: float
    y_m2: float


def _error_sums(err, y, w=None, y_center: float = 0.0) -> ErrorSums:
    """Metric sums of residuals ``err`` of targets ``y``; with weights ``w``, the
    weighted sums (scikit-learn's sample_weight definitions) and n = Σw."""
    if w is None:
        n = y.shape[0]
        if n == 0:
            return ErrorSums(0.0, 0.0, 0, 0.0, 0.0)
        y_mean = float(y.mean())
        dev = y - y_mean
        return ErrorSums(float(np.abs(err).sum()), float(err @ err), n, y_mean + y_center, float(dev @ dev))
    total = float(w.sum())
    if y.shape[0] == 0 or total == 0:
        return ErrorSums(0.0, 0.0, 0, 0.0, 0.0)
    y_mean = float(w @ y) / total
    dev = y - y_mean
    return ErrorSums(float(w @ np.abs(err)), float(w @ (err * err)), total, y_mean + y_center, float(w @ (dev * dev)))


def block_errors(block, m, b, weighted: bool = False, link: Link = IDENTITY) -> ErrorSums:
    """Metric sums of one block for a model (m, b) in original units: errors of the
    mean ``link.inverse(X·m + b)`` (the prediction)."""
    X, y, w = split_block(block, weighted)
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing predictions: the caller names the model
        return _error_sums(link.inverse(X @ m + b) - y, y, w)


def block_errors_std(zs, m, b_centered, y_center, weighted: bool = False, link: Link = IDENTITY) -> ErrorSums:
    """``block_errors`` of a standardized block, for training-space (m, b − y_center)."""
    X, yc, w = split_block(zs, weighted)
    if link is IDENTITY:
        return _error_sums(X @ m + b_centered - yc, yc, w, y_center)
    return _error_sums(link.inverse(X @ m + (b_centered + y_center)) - (yc + y_center), yc, w, y_center)


def add_errors(a: ErrorSums, b: ErrorSums) -> ErrorSums:
    """Sums add; y's mean and Σ(y − ȳ)² merge like any ``Moments``."""
    ya = Moments(a.n, np.array([a.y_mean]), np.array([[a.y_m2]]))
    yb = Moments(b.n, np.array([b.y_mean]), np.array([[b.y_m2]]))
    y = merge_moments(ya, yb)
    return ErrorSums(a.abs_err + b.abs_err, a.sq_err + b.sq_err, y.n, float(y.mean[0]), float(y.comoment[0, 0]))


def sse_metrics(sse: float, sst: float, n) -> dict:
    """mse, rmse, r2 and n from the sum of squared errors and of squares about the mean
    (a fit known from moments: mae needs the rows and is None)."""
    return {"mse": sse / n, "rmse": float(np.sqrt(sse / n)), "mae": None, "r2": 1.0 - sse / sst if sst > 0 else 0.0,
            "n": n}


def error_metrics(e: ErrorSums) -> dict:
    """mse, rmse, mae, r2, n — the same definitions as scikit-learn's metrics."""
    mse = e.sq_err / e.n
    r2 = 1.0 - e.sq_err / e.y_m2 if e.y_m2 > 0 else (1.0 if e.sq_err == 0 else 0.0)
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": e.abs_err / e.n, "r2": r2, "n": e.n}


def block_moments_and_errors(block, models, weighted: bool = False) -> tuple:
    """``(block_moments(block), [block_errors(block, m, b) for (m, b) in models])``:
    one read of a holdout block serves the gate and next night's statistics (a quadratic
    loss: the identity link)."""
    return block_moments(block, weighted), [block_errors(block, m, b, weighted) for m, b in models]


def add_moments_and_errors(a, b) -> tuple:
    return merge_moments(a[0], b[0]), [add_errors(x, y) for x, y in zip(a[1], b[1])]


# --------------------------------------------------------------------------- deviance
class DevianceSums(NamedTuple):
    """Partial sums for a family's mean deviance and D² (``losses.LogFamily``): Σ w·d(y, mu),
    n = Σw, Σ w·y and Σ w·``null_term(y)`` (the constant model ȳ's deviance from them)."""

    dev: float
    n: float
    sum_y: float
    sum_null: float


def _predictor(block, m, b, weighted: bool, offset: str | None) -> tuple:
    """(eta = X·m + b + each row's offset (``newton.split_offset``), y, w) of a raw block
    for a model (m, b) in original units; an overflowing eta is the caller's to name."""
    from .newton import split_offset

    X, y, w = split_block(block, weighted)
    X, off = split_offset(X, offset)
    with np.errstate(over="ignore", invalid="ignore"):
        eta = X @ m + b
        if off is not None:
            eta += off
    return eta, y, w


def block_family_errors(block, m, b, loss, weighted: bool = False, offset: str | None = None) -> tuple:
    """(``block_errors``, ``DevianceSums``) of one raw block for a model (m, b) in original
    units (+ each row's offset): one read for both."""
    eta, y, w = _predictor(block, m, b, weighted, offset)
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing predictions: the caller names the model
        errors = _error_sums(loss.predict(eta) - y, y, w)
        _, dev = loss.terms(eta, y, w)
    null = loss.null_term(y)
    if w is None:
        return errors, DevianceSums(dev, float(y.shape[0]), float(y.sum()), float(null.sum()))
    return errors, DevianceSums(dev, float(w.sum()), float(w @ y), float(w @ null))


def add_family_errors(a: tuple, b: tuple) -> tuple:
    return add_errors(a[0], b[0]), DevianceSums(*(x + y for x, y in zip(a[1], b[1])))


def family_metrics(sums: tuple, loss) -> dict:
    """The family's mean deviance and D² (as scikit-learn's ``d2_tweedie_score``: 1 −
    the model's deviance over that of the constant ȳ), then ``error_metrics``."""
    e, s = sums
    null = loss.null_deviance(s.n, s.sum_y, s.sum_null) if s.n else 0.0
    return {loss.deviance_metric: s.dev / s.n if s.n else float("nan"),
            "d2": 1.0 - s.dev / null if null > 0 else (1.0 if s.dev == 0 else 0.0), **error_metrics(e)}


# --------------------------------------------------------------------------- classification
#: ROC AUC from histograms of the linear predictor, in this many bins over ±AUC_RANGE.
AUC_BINS = 4096
AUC_RANGE = 16.0


class ClassSums(NamedTuple):
    """Partial sums for the metrics of a classifier at a threshold on its probability.

    loss : Σ w·ℓ (log-loss); brier : Σ w·(p − y)²; correct, tp, fp, fn : Σ w over rows;
    n : Σw; pos, neg : histograms (Σ w) of the linear predictor of positive and negative
    rows in ``AUC_BINS`` bins over ±``AUC_RANGE`` (the ends take everything beyond).
    """

    loss: float
    brier: float
    correct: float
    tp: float
    fp: float
    fn: float
    n: float
    pos: np.ndarray
    neg: np.ndarray


def block_classification(block, m, b, loss: Loss, threshold: float = 0.5, weighted: bool = False,
                         offset: str | None = None) -> ClassSums:
    """``ClassSums`` of one raw block for a model (m, b) in original units (+ each row's
    offset)."""
    eta, y, w = _predictor(block, m, b, weighted, offset)
    p = loss.predict(eta)
    _, total = loss.terms(eta.copy(), y, w)
    return class_sums_of(eta, p, y, w, total, threshold)


def class_sums_of(eta, p, y, w, total: float, threshold: float = 0.5) -> ClassSums:
    """``ClassSums`` of rows with linear predictors ``eta``, probabilities ``p`` and
    log-loss sum ``total``: both histograms from one bincount (a positive row's bin is
    shifted by ``AUC_BINS``), counts without weights by counting."""
    bins = ((np.clip(eta, -AUC_RANGE, AUC_RANGE) + AUC_RANGE) * (AUC_BINS / (2 * AUC_RANGE))).astype(np.int64)
    np.clip(bins, 0, AUC_BINS - 1, out=bins)
    label = p >= threshold
    pos = y > 0.5
    bins[pos] += AUC_BINS
    err = p - y
    if w is None:
        hist = np.bincount(bins, minlength=2 * AUC_BINS).astype(np.float64)
        n = float(y.shape[0])
        tp, fp, fn = (float(np.count_nonzero(v)) for v in (label & pos, label & ~pos, ~label & pos))
        brier = float(err @ err)
    else:
        hist = np.bincount(bins, w, 2 * AUC_BINS)
        n = float(w.sum())
        tp, fp, fn = (float(w @ v) for v in (label & pos, label & ~pos, ~label & pos))
        brier = float(w @ (err * err))
    return ClassSums(total, brier, n - fp - fn, tp, fp, fn, n, hist[AUC_BINS:], hist[:AUC_BINS])


def add_class_sums(a: ClassSums, b: ClassSums) -> ClassSums:
    return ClassSums(*(x + y for x, y in zip(a, b)))


def class_metrics(s: ClassSums) -> dict:
    """log_loss, accuracy, precision, recall, brier, roc_auc with ``roc_auc_error``, n
    (scikit-learn's definitions, weighted by sample weights).

    ROC AUC counts, over pairs of a positive and a negative row, those ranked right plus
    half the ties. Pairs in different bins are ranked as their predictors are; pairs in
    one bin count one half whatever their order, so the histogram's AUC is within
    ``roc_auc_error`` = Σ_bins pos·neg / (2·P·N) of the exact one.
    """
    P, N = float(s.pos.sum()), float(s.neg.sum())
    below = np.concatenate(([0.0], np.cumsum(s.neg)[:-1]))
    if P > 0 and N > 0:
        auc = float(s.pos @ below + 0.5 * (s.pos @ s.neg)) / (P * N)
        auc_err = float(s.pos @ s.neg) / (2 * P * N)
    else:
        auc = auc_err = None
    return {"log_loss": s.loss / s.n, "accuracy": s.correct / s.n,
            "precision": s.tp / (s.tp + s.fp) if s.tp + s.fp else 0.0,
            "recall": s.tp / (s.tp + s.fn) if s.tp + s.fn else 0.0,
            "roc_auc": auc, "roc_auc_error": auc_err, "brier": s.brier / s.n, "n": s.n}
