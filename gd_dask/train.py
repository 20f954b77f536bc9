"""The epoch loop: one global gradient per epoch, one step of (m, b).

``fit`` needs a client and a config. It reads the footers, makes one pass for the
moments of [X, y] (standardization, curvature, and for ``gram`` everything), then runs
the epochs against a *gradient oracle* that returns the global ``BlockSums`` at (m, b):
a distributed map-reduce for ``stream``, an O(d²) formula for ``gram``. Only here are
the sums divided by N.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import gradient as g
from .data import ParquetSource, open_source
from .errors import DataError, TrainingError
from .executor import Executor, decide_cache
from .optim import Curvature, choose_rates, heavy_ball, stable_limit

log = logging.getLogger(__name__)

#: Epochs of consecutive loss growth (above the starting loss) that count as divergence.
GROWTH_EPOCHS = 5
#: With momentum the loss oscillates and its change passes through zero at every turn,
#: so convergence needs the change below tol for this many consecutive epochs.
CALM_EPOCHS_MOMENTUM = 10
#: Largest number of features for which ``strategy: auto`` picks gram.
GRAM_MAX_FEATURES = 4096


@dataclass
class FitResult:
    """What training produced; ``m``, ``b`` are in original units."""

    m: np.ndarray
    b: float
    epochs_run: int
    converged: bool
    final_loss: float
    learning_rate: float
    momentum: float
    strategy: str
    metrics: dict
    history: list[dict] = field(default_factory=list)
    params: np.ndarray | None = None  # [m..., b] in the training (standardized) space
    curvature: Curvature | None = None
    seconds: float = 0.0
    source: ParquetSource | None = None


def pick_strategy(cfg) -> str:
    if cfg.optimizer.strategy != "auto":
        return cfg.optimizer.strategy
    ok = cfg.model.loss == "squared" and cfg.optimizer.method == "batch"
    return "gram" if ok and len(cfg.data.features) <= GRAM_MAX_FEATURES else "stream"


def check_moments(mom: g.Moments, cfg) -> None:
    """Data problems that the moments reveal, each naming the column."""
    d = len(cfg.data.features)
    if mom.n == 0:
        raise DataError(f"data.path '{cfg.data.path}': no rows left to train on")
    if mom.n < d + int(cfg.model.fit_intercept):
        raise DataError(f"only {mom.n} rows for {d} features: need at least {d + int(cfg.model.fit_intercept)}")
    if not np.all(np.isfinite(mom.comoment)):
        raise DataError("values too large: the moments of the data overflow float64")
    if cfg.model.standardize:
        var = np.diag(mom.comoment)[:-1]
        for j, f in enumerate(cfg.data.features):
            rms = var[j] + (0 if cfg.model.fit_intercept else mom.n * mom.mean[j] ** 2)
            if rms <= 0:
                raise DataError(f"feature '{f}' is constant ({mom.mean[j]:g}): it cannot be standardized; drop it")


def fit(cfg, client, init: tuple[np.ndarray, float] | None = None, on_epoch=None,
        source: ParquetSource | None = None) -> FitResult:
    """Train (m, b) on ``cfg.data`` with the client's cluster.

    Parameters
    ----------
    cfg : RunConfig
    client : distributed.Client
    init : (m, b) in original units, optional
        Warm start; zeros otherwise.
    on_epoch : callable(dict), optional
        Called with each history row (progress display).
    source : ParquetSource, optional
        Footers already read (``open_source(cfg.data)``).
    """
    t0 = time.perf_counter()
    source = source or open_source(cfg.data)
    d = len(cfg.data.features)
    strategy = pick_strategy(cfg)
    cache = decide_cache(cfg.optimizer.cache, source, client)
    ex = Executor(client, source, cache)
    log.info("%d rows in %d files, %d blocks; strategy %s", source.n_rows, len(source.files), ex.n_blocks, strategy)

    mom = ex.moments()
    check_moments(mom, cfg)
    fit_b = cfg.model.fit_intercept
    std = g.Standardizer.from_moments(mom, fit_b) if cfg.model.standardize else g.Standardizer.identity(d)
    curv = Curvature.of(g.hessian(mom, std, fit_b))
    rates = choose_rates(curv, cfg.optimizer.learning_rate, cfg.optimizer.momentum)
    log.info("curvature λmin=%.3g λmax=%.3g (κ=%.3g); learning rate %.6g, momentum %.6g",
             curv.lmin, curv.lmax, curv.condition, rates.learning_rate, rates.momentum)

    hess = None
    if strategy == "gram":
        hess = g.hessian(mom, std, fit_b)
        gram = g.Gram(mom, std)
        oracle = gram.sums
    else:
        def oracle(m, b):
            return ex.gradient_sums(m, b, std)

    if init is not None:
        m0, b0 = std.to_training(*init)
        params = np.append(m0, b0 if fit_b else 0.0)
    else:
        params = np.zeros(d + 1)
    if strategy == "gram":
        # Iterate in the gram's precision: with momentum near 1 the rounding of θ + step
        # would otherwise set the accuracy floor (see gradient.Gram).
        params = params.astype(gram.dtype)
    params, history, converged = _descend(cfg, oracle, params, rates, curv, fit_b, on_epoch, hess)

    m, b = std.to_original(params[:d], params[d])
    m, b = np.asarray(m, dtype=np.float64), float(b)
    params = params.astype(np.float64)
    metrics = g.metrics(ex.error_sums(m, b))
    ex.release()
    epochs = len(history)
    if not converged:
        log.warning(
            "not converged after %d epochs (relative loss change above tol=%g); "
            "raise optimizer.epochs or set optimizer.momentum: auto", epochs, cfg.optimizer.tol)
    return FitResult(
        m=m, b=b, epochs_run=epochs, converged=converged, final_loss=metrics["mse"],
        learning_rate=rates.learning_rate, momentum=rates.momentum, strategy=strategy,
        metrics=metrics, history=history, params=params, curvature=curv,
        seconds=time.perf_counter() - t0, source=source,
    )


def _descend(cfg, oracle, params, rates, curv, fit_b, on_epoch, hess=None):
    """The loop proper: evaluate, record, check, step. Returns (params, history, converged).

    ``hess`` (gram only): the exact Hessian of ½·MSE. A loss computed from moments carries
    an absolute rounding error of about ε·Var(y), which near a good fit can exceed the
    change between epochs; for a quadratic that change is known exactly from small terms,
    ``ΔJ = 2·g·s + sᵀ·H·s``, so the tol test uses it instead of differencing two losses.
    """
    opt = cfg.optimizer
    d = params.shape[0] - 1
    init, update = heavy_ball(rates)
    state = init(params)
    history, converged = [], False
    prev = prev_grads = step = None
    start_loss = None
    growth = calm = 0
    needed_calm = 1 if rates.momentum == 0 else CALM_EPOCHS_MOMENTUM
    t_last = time.perf_counter()
    for epoch in range(1, opt.epochs + 1):
        s = oracle(params[:d], params[d])
        loss = s.sq_err / s.n
        grads = np.append(s.grad / s.n, s.err / s.n if fit_b else 0.0)
        now = time.perf_counter()
        row = {"epoch": epoch, "loss": loss, "grad_norm": float(np.linalg.norm(grads)),
               "learning_rate": rates.learning_rate, "seconds": now - t_last}
        t_last = now
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        start_loss = loss if start_loss is None else start_loss
        growth = growth + 1 if prev is not None and loss > prev else 0
        if not math.isfinite(loss) or (growth >= GROWTH_EPOCHS and loss > start_loss
                                       and _may_diverge(rates, curv)):
            raise TrainingError(_divergence_message(rates, curv, epoch, loss))
        if prev is not None:
            change = _quadratic_change(prev_grads, step, hess, fit_b) if hess is not None else loss - prev
            calm = calm + 1 if abs(change) <= opt.tol * max(prev, np.finfo(float).tiny) else 0
            converged = calm >= needed_calm
        step, state = update(grads, state)
        params = params + step
        prev, prev_grads = loss, grads
        if converged:
            break
    return params, history, converged


def _may_diverge(rates, curv) -> bool:
    """Whether sustained loss growth means divergence.

    Plain descent never raises the loss of a quadratic at a stable rate, so sustained
    growth is divergence. Heavy ball oscillates and may rise for many epochs before it
    falls; for squared loss its stable limit is exact, so growth counts only beyond it.
    """
    return rates.momentum == 0 or rates.learning_rate > stable_limit(curv, rates.momentum) * (1 + 1e-9)


def _quadratic_change(grads, step, hess, fit_b) -> float:
    """Exact J(θ + s) − J(θ) for J = MSE with ∇(½J) = grads and Hessian of ½J = hess."""
    if not fit_b:
        grads, step = grads[:-1], step[:-1]
    return float(2.0 * grads @ step + step @ hess @ step)


def _divergence_message(rates, curv, epoch, loss) -> str:
    limit = stable_limit(curv, rates.momentum)
    auto = choose_rates(curv, "auto", rates.momentum).learning_rate
    what = "is not finite" if not math.isfinite(loss) else f"{loss:.3g} and growing"
    return (
        f"learning rate {rates.learning_rate:g} diverged at epoch {epoch} (loss {what}); "
        f"the largest stable rate for this data is {limit:.4g} — use a smaller "
        f"optimizer.learning_rate or 'auto' ({auto:.4g})"
    )
