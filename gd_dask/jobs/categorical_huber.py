"""Huber loss with categorical features: iteratively reweighted least squares (IRLS) on
grouped moments, so no one-hot column exists here either.

Huber's minimizer is a fixed point of weighted least squares with each row weighing
ω = min(1, δ/|r|) at its own residual (Huber 1981; Holland & Welsch 1977): one round is
one pass that groups the rows' moments with those weights (``Executor.huber_groups``,
which also sums the Huber loss at the model it reweighs for) and an exact weighted
least-squares solve of them (``categorical.fit_categorical``, certified to ``tol`` as
any least-squares fit). Each round lowers the Huber objective (the weights majorize
it), from the least-squares fit of the first pass. It stops when a round moves no
coefficient by more than ``tol`` of the largest (``coefficient_change``). IRLS converges
linearly, so that is no bound on the error (``convergence.bound`` is null; the error is
about the last change times ρ/(1 − ρ), ρ the rounds' rate); a round's objective is in the
history. The summary is unavailable, as for Huber without levels.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..data.write import LevelTable
from ..kernels import losses
from .categorical import fit_categorical

#: Rounds (passes after the least-squares one) at ``optimizer.epochs: auto``.
HUBER_ROUNDS = 100


def fit_categorical_huber(cfg, prep, t0: float, on_epoch=None):
    """A ``FitResult`` for ``model.loss: huber`` with categorical features (module
    docstring)."""
    loss = losses.of(cfg.model)
    squared = cfg.model_copy(update={"model": cfg.model.model_copy(update={"loss": "squared"})})
    res = fit_categorical(squared, prep, t0, summary=False)  # the start: least squares
    columns = list(prep.source.categorical)
    cat_idx = [prep.source.columns.index(c) for c in columns]
    rounds = HUBER_ROUNDS if cfg.optimizer.epochs == "auto" else cfg.optimizer.epochs
    tol, n = cfg.optimizer.tol, float(prep.mom.n)
    history, converged, change = [], False, None
    for k in range(1, rounds + 1):
        groups, _, total = prep.ex.huber_groups(cat_idx, res.m, res.b, _tables(res))
        row = {"epoch": k, "loss": total / n, "grad_norm": float("nan"), "learning_rate": 1.0,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        step = dataclasses.replace(prep, groups=groups, mom=groups.to_moments())
        new = fit_categorical(squared, step, t0, summary=False, report=False)  # the same levels as the start's
        change = _relative_change(res, new)
        res = new
        if tol > 0 and change <= tol:
            converged = bool(new.converged)  # and the round's own solve certified
            break
    metrics = prep.ex.level_metrics(np.asarray(res.m, dtype=np.float64), float(res.b), _tables(res))
    res.metrics, res.final_loss, res.history = metrics, metrics["mse"], history
    res.epochs_run, res.converged, res.strategy = len(history), converged, "gram"
    res.convergence = {"criterion": "coefficient_change", "tol": tol, "bound": None, "digits": None,
                       "epochs": len(history), "refinements": 0, "change": change}
    res.summary = {"available": False, "reason": f"model.loss {loss.name}: these standard errors are for least "
                                                 "squares"}
    res.seconds = time.perf_counter() - t0
    prep.release()
    return res


def _tables(res) -> list:
    """The model's level tables, to score rows by (``data.write.LevelTable``)."""
    return [LevelTable(doc["name"], doc["levels"], doc["coef"]) for doc in res.categorical]


def _theta(res) -> np.ndarray:
    return np.concatenate([np.asarray(res.m, dtype=np.float64), [float(res.b)],
                           *[np.asarray(doc["coef"], dtype=np.float64) for doc in res.categorical]])


def _relative_change(old, new) -> float:
    """The largest change of a coefficient over a round, against the largest coefficient
    (the levels of one round and the next are the same: the rows do not change)."""
    a, b = _theta(old), _theta(new)
    return float(np.max(np.abs(b - a)) / max(float(np.max(np.abs(b))), 1e-300))
