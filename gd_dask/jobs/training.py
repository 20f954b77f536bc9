"""Training: descent on the prepared data, and what it produced.

``fit`` needs a client and a config. ``prepare`` reads the footers and makes one pass for
the moments of [X, y] (standardization, curvature, and for ``gram`` everything); the
epochs then run against a *gradient oracle* that returns the global ``BlockSums`` at
(m, b): a distributed map-reduce for ``stream``, an O(d²) formula for ``gram``. Only in
the loop are the sums divided by N. ``fit_moments`` trains from moments alone (sweeps,
nightly refits), and both end in ``_result``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..artifacts import store
from ..artifacts import summary as inference
from ..artifacts.glm_summary import summarize_glm
from ..data import ParquetSource
from ..kernels.losses import IDENTITY
from ..kernels.metrics import class_metrics, family_metrics
from ..kernels.moments import Moments
from ..kernels.newton import past_step
from ..optimization import sgd
from ..optimization.certify import CoefficientBound, LocalBound, digits
from ..optimization.descent import (
    Checkpoints,
    Descent,
    LoopState,
    Rules,
    criterion_name,
    gradient_at,
    state_from_dict,
    state_to_dict,
)
from ..optimization.rates import Curvature, Rates
from ..optimization.newton import NEWTON_PASSES, Newton
from ..optimization.refine import AUTO_PASSES, refine
from ..optimization.setup import Setup
from ..optimization.strategy import GRAM
from ..runtime.executor import Executor
from .prepare import Prepared, exposure_error, prepare, streams_levels, target_error

log = logging.getLogger(__name__)


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
    resumed_from: int | None = None  # epoch of the checkpoint this run resumed from
    rows_dropped: int | None = 0  # rows with NaN/inf/null skipped (data.missing: drop); None: not counted
    validation: dict | None = None  # early stopping: split, best epoch, metrics on held-out rows
    convergence: dict | None = None  # criterion, bound, digits, epochs, refinements (``certify``)
    summary: dict | None = None  # inference statistics, or why they do not hold (``inference``)
    categorical: list | None = None  # per categorical feature: levels, reference, coefficients


def fit(cfg, client, init: tuple[np.ndarray, float] | None = None, on_epoch=None,
        source: ParquetSource | None = None, init_levels: list | None = None) -> FitResult:
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
    init_levels : list, optional
        With ``init``: the warm start's categorical features (model.json's ``categorical``).
    """
    t0 = time.perf_counter()
    prep = prepare(cfg, client, source)
    if prep.groups is not None:
        from .categorical import fit_categorical
        from .categorical_newton import fit_categorical_newton

        # Ridge with levels penalizes every level's coefficient (the indicators as they
        # are) and the standardized slopes, as logistic does: Newton passes, whose first
        # step is the minimum (the grouped moments' reduced problem would absorb the
        # largest column's levels unpenalized).
        stream = streams_levels(cfg)
        if prep.strategy.newton or (cfg.model.l2 and cfg.model.loss == "squared") or stream:
            if stream:
                log.info("strategy stream with categorical features: Newton passes over the rows, the gradient "
                         "and Hessian summed per level")
            return fit_categorical_newton(cfg, prep, t0, on_epoch, init, init_levels)
        if cfg.model.loss == "huber":
            from .categorical_huber import fit_categorical_huber

            return fit_categorical_huber(cfg, prep, t0, on_epoch)
        return fit_categorical(cfg, prep, t0, on_epoch)  # least squares needs no start
    setup = Setup.of(cfg.model, cfg.optimizer, prep.mom)
    oracle, validate = _oracles(cfg, prep, setup)
    key = run_key(cfg, prep.source, init)
    checkpoints = Checkpoints(lambda st: store.write_checkpoint(cfg.output_dir, key, state_to_dict(st)),
                              cfg.output.checkpoint_every if _checkpoints(cfg) else 0)
    if prep.strategy.newton:
        certifier = setup.newton_certifier()
        setup.rates = Rates(1.0, 0.0)  # a full Newton step (halved where it overshoots)
        # A family's metrics follow a certified last step (``newton_metrics``); a classifier's
        # (accuracy, AUC) may not, so its model is the last pass's.
        loop = Newton(_checked(cfg, prep.ex.newton_sums), certifier, Rules.of(cfg.model, cfg.optimizer),
                      step_past=setup.loss.task == "regression")
        epochs = NEWTON_PASSES if cfg.optimizer.epochs == "auto" else cfg.optimizer.epochs
        state = _resume(cfg, key, np.float64) or loop.start(setup.newton_start(init, prep.offset_mean))
        resumed_from = state.epoch or None
        state = loop.run(state, passes=epochs, tol=cfg.optimizer.tol, on_epoch=on_epoch, checkpoints=checkpoints)
        kept = loop.kept if loop.kept is not None and loop.kept.final is not None else None
        return _finish_fit(cfg, prep, setup, state, certifier, epochs, on_epoch, t0, resumed_from, kept,
                           loop.step_past)
    certifier = setup.certifier(prep.ex.curvature_sums if prep.strategy.stream else None)
    descent, epochs = _descent(cfg, setup, oracle, prep.strategy, certifier, validate)

    params = setup.initial_params(init, extended=prep.strategy.gram)
    state = _resume(cfg, key, params.dtype) or descent.start(params)
    resumed_from = state.epoch or None
    if cfg.optimizer.method == "minibatch":
        eta0 = sgd.base_rate(cfg.optimizer, setup.curv)
        setup.rates = Rates(eta0, 0.0)
        fixed = None if cfg.optimizer.epochs == "auto" else epochs
        state = sgd.descend(cfg.optimizer, prep.ex, state, sgd.plan_of(cfg.optimizer, cfg.model, eta0), fixed,
                            validate, on_epoch, checkpoints, lmax=setup.curv.lmax)
        _certify_full_gradient(cfg, state, prep.ex, certifier)
    else:
        state = descent.run(state, epochs=epochs, tol=cfg.optimizer.tol, on_epoch=on_epoch,
                            checkpoints=checkpoints)
    return _finish_fit(cfg, prep, setup, state, certifier, epochs, on_epoch, t0, resumed_from)


def _checked(cfg, newton_sums):
    """``newton_sums`` that stops at a pass finding targets the loss refuses or exposures
    that are not positive, in one line naming the column."""
    def oracle(m, b, final, data_terms):
        s = newton_sums(m, b, final, data_terms)
        if s.bad_targets[0]:
            raise target_error(cfg, *s.bad_targets)
        if s.bad_exposures[0]:
            raise exposure_error(cfg, *s.bad_exposures)
        return s

    return oracle


def _finish_fit(cfg, prep: Prepared, setup: Setup, state: LoopState, certifier, epochs: int, on_epoch, t0: float,
                resumed_from, kept=None, step=None) -> FitResult:
    """``fit`` after its loop: refinement and warnings (``finish``), metrics, summary.
    ``kept``: a final Newton pass at the parameters kept (``kernels.newton.FinalSums``),
    which has the metrics and the summary's sums; a Newton run without one makes it."""
    state = finish(cfg, setup, state, certifier, prep.ex.refine_sums, epochs, on_epoch)

    m, b = final_coefficients(setup, state)
    if prep.strategy.newton:
        if kept is None:
            d = state.params.shape[0] - 1
            kept, step = prep.ex.newton_sums(state.params[:d], state.params[d], True), None
        kept = past_step(kept, step)  # the sums at the model, where it is a certified step past the pass
        metrics = newton_metrics(kept, setup.loss)
        summary = _glm_statistics(cfg, setup, state, (m, b), kept)
    else:
        metrics = _metrics(cfg, setup, state.params, prep.ex, (m, b))
        summary = statistics(cfg, setup, state, (m, b), prep.ex)
    val_metrics = None
    if prep.val_ex:
        val_metrics = _metrics(cfg, setup, state.params, prep.val_ex, (m, b), prep.val_mom)
        if state.stopped_early:
            log.info("early stop at epoch %d: no better validation loss for %d epochs; kept epoch %d (%.6g)",
                     state.epoch, cfg.optimizer.n_iter_no_change, state.best_epoch, state.best_val)
    prep.release()
    return _result(cfg, setup, state, certifier, str(prep.strategy), metrics, val_metrics, prep.val_mom, t0,
                   source=prep.source, resumed_from=resumed_from, rows_dropped=prep.rows_dropped, summary=summary)


def statistics(cfg, setup: Setup, state: LoopState, model, ex: Executor | None = None) -> dict:
    """model.json's ``summary`` (``inference``): standard errors, tests, R², F, AIC… from
    the moments; where they do not hold, why. ``ex``: the training rows, for what the
    moments lack (weighted data's row count and Σ log w; HC1's middle)."""
    reason = inference.not_available(cfg)
    if reason is None and not state.converged:
        reason = "not converged: these statistics hold at the least-squares solution"
    weighted = bool(cfg.data.weight)
    if reason is None and ex is None and (weighted or cfg.summary.cov_type == "HC1"):
        reason = "computed by train: weighted statistics and HC1 need a pass over the rows"
    if reason is not None:
        return {"available": False, "reason": reason}
    rows = inference.RowSums(*ex.row_sums()) if weighted else None
    meat = ex.meat(*model, setup.fit_b) if cfg.summary.cov_type == "HC1" else None
    ssr = inference.moments_ssr(setup.mom, *model)
    if ex is not None and inference.needs_residual_pass(setup.mom, ssr):
        ssr = ex.error_sums(*model).sq_err  # a near-exact fit: SSR from the residuals
    ev = np.linalg.eigvalsh(setup.hessian)
    cond = float(np.sqrt(ev[-1] / ev[0])) if ev[0] > 0 else None
    doc = inference.summarize(setup.mom, *model, setup.fit_b, rows, weighted, cond, meat, ssr)
    return {"available": True, **doc}


def _glm_statistics(cfg, setup: Setup, state: LoopState, model, sums) -> dict:
    """model.json's ``summary`` for a family (``glm_summary``) from the final Newton
    pass's sums at the fitted coefficients, where they are the maximum-likelihood ones."""
    if cfg.model.l2:
        return {"available": False, "reason": "penalized fit (l2): the coefficients are biased and the "
                                              "likelihood's covariance does not apply"}
    if not state.converged:
        return {"available": False, "reason": "not converged: these statistics hold at the maximum of the "
                                              "likelihood"}
    doc = summarize_glm(sums, setup.loss, *model, setup.scaling.center, setup.scaling.scale, setup.fit_b,
                        bool(cfg.data.weight))
    return {"available": True, **doc}


def newton_metrics(s, loss) -> dict:
    """The model's metrics from a final Newton pass at its coefficients (no pass of their own)."""
    if loss.task == "classification":
        return class_metrics(s.final.metrics)
    return family_metrics(s.final.metrics, loss)


def _metrics(cfg, setup: Setup, params, ex: Executor, model, mom: Moments | None = None) -> dict:
    """The model's metrics on the executor's rows: exact from their moments where that
    is enough (a regression with ``output.metrics: moments``), else one pass."""
    if setup.loss.task == "regression" and setup.loss.link is IDENTITY and cfg.output.metrics == "moments":
        return setup.moments_metrics(params, mom)
    return ex.metrics(*model)


def _oracles(cfg, prep: Prepared, setup: Setup):
    """(oracle, validate): the global gradient sums at (m, b) and, with early stopping,
    the validation loss — from the moments for gram, a pass over the chunks (paired
    with the validation rows' in one round trip) for stream."""
    if prep.strategy.gram:
        return setup.gram.sums, setup.validation_loss(prep.val_mom) if prep.val_ex else None
    for e in filter(None, (prep.ex, prep.val_ex)):
        e.standardize(setup.scaling)
    if prep.val_ex:
        return prep.ex.paired_with(prep.val_ex)
    return prep.ex.gradient_sums, None


def fit_moments(cfg, mom: Moments, init=None, on_epoch=None, val_mom: Moments | None = None,
                refine_pass=None) -> FitResult:
    """gram training from moments alone: no pass over the data (nightly refits, sweeps).

    ``metrics`` are exact from the moments (mse, rmse, r2, n); mae needs the rows and is
    None. ``val_mom``: moments of the validation rows, for early stopping.
    ``refine_pass``: ``Executor.refine_sums`` of the training rows, for refinement past
    the float64 floor (read only when the descent stalls there).
    """
    t0 = time.perf_counter()
    setup = Setup.of(cfg.model, cfg.optimizer, mom)
    validate = None if val_mom is None else setup.validation_loss(val_mom)
    certifier = setup.certifier()
    descent, epochs = _descent(cfg, setup, setup.gram.sums, GRAM, certifier, validate)
    state = descent.run(descent.start(setup.initial_params(init, extended=True)), epochs=epochs,
                        tol=cfg.optimizer.tol, on_epoch=on_epoch)
    state = finish(cfg, setup, state, certifier, refine_pass, epochs, on_epoch)
    metrics = setup.moments_metrics(state.params)
    val_metrics = None if val_mom is None else setup.moments_metrics(state.params, val_mom)
    summary = statistics(cfg, setup, state, final_coefficients(setup, state))
    return _result(cfg, setup, state, certifier, "gram", metrics, val_metrics, val_mom, t0, summary=summary)


def _descent(cfg, setup: Setup, oracle, strategy, certifier, validate) -> tuple[Descent, int]:
    """The descent both ``fit`` and ``fit_moments`` run, and its epoch budget."""
    rules = Rules.of(cfg.model, cfg.optimizer)
    descent = Descent(oracle, setup.rates, setup.curv, rules, certifier=certifier, validate=validate)
    return descent, setup.epochs(cfg.optimizer, strategy, certifier)


def _result(cfg, setup: Setup, state: LoopState, certifier, strategy: str, metrics: dict, val_metrics,
            val_mom, t0: float, **extra) -> FitResult:
    """The one place a ``FitResult`` is built."""
    m, b = final_coefficients(setup, state)
    validation = None if val_metrics is None else validation_summary(cfg, state, val_mom.n, val_metrics)
    return FitResult(
        m=m, b=b, epochs_run=state.epoch, converged=state.converged, final_loss=metrics[setup.loss.metric],
        learning_rate=setup.rates.learning_rate, momentum=setup.rates.momentum, strategy=strategy,
        metrics=metrics, history=state.history, params=state.params.astype(np.float64), curvature=setup.curv,
        seconds=time.perf_counter() - t0, validation=validation,
        convergence=convergence_report(cfg, state, certifier), **extra)


def finish(cfg, setup: Setup, state: LoopState, certifier, refine_pass, epochs: int, on_epoch=None) -> LoopState:
    """After the descent: refinement where it stalled at the float64 floor above tol
    (``refine``), and the warning a user needs where it did not converge."""
    o = cfg.optimizer
    passes = AUTO_PASSES if o.refine == "auto" else o.refine
    if (state.stalled and refine_pass is not None and passes and o.tol > 0
            and isinstance(certifier, CoefficientBound) and certifier.certifiable):
        log.info("the float64 gradient reached its rounding floor at epoch %d (coefficients' relative "
                 "error ≤ %.3g): refining", state.epoch, state.bound)
        state = refine(state, refine_pass, setup.refiner(), certifier, setup.curv, tol=o.tol, passes=passes,
                       epochs=max(epochs, state.epoch + 1), on_epoch=on_epoch)
    if o.method == "minibatch":
        if state.bound is not None:
            log.info("minibatch: after %d epochs the coefficients' relative error is at most %.3g", state.epoch,
                     state.bound)
        return state
    if not state.converged and not state.stopped_early and o.tol > 0:
        reached = digits(state.bound)
        how = f"{reached:.1f} digits of {-np.log10(o.tol):.1f} reached" if reached is not None else \
            f"relative loss change above tol={o.tol:g}"
        k = setup.d + int(setup.fit_b)
        if setup.loss.quadratic and not setup.l2 and setup.mom.n < k:
            log.warning("not converged after %d epochs, by definition: %g rows for %d parameters have no unique "
                        "least-squares solution; the descent from zero tends to the minimum-norm one (in "
                        "standardized features), which nothing certifies; the model is saved with converged: "
                        "false (set model.l2 > 0 for a unique, certified solution)", state.epoch, setup.mom.n, k)
        elif isinstance(certifier, CoefficientBound) and not certifier.certifiable:
            log.warning("not converged after %d epochs: the Hessian's condition number %.3g is beyond what "
                        "float64 moments certify (at most %.3g); drop or combine near-collinear features, the "
                        "model is saved with converged: false", state.epoch, setup.curv.condition,
                        0.5 / certifier.eta)
        elif state.stalled:
            log.warning("not converged after %d epochs (%s): the gradient is at its rounding floor%s; the model "
                        "is saved with converged: false", state.epoch, how,
                        "" if o.refine else " (optimizer.refine is 0)")
        else:
            log.warning("not converged after %d epochs (%s); raise optimizer.epochs or loosen optimizer.tol",
                        state.epoch, how)
    return state


def final_coefficients(setup: Setup, state: LoopState) -> tuple[np.ndarray, float]:
    """m, b in original units: refinement's point where there is one (exact), else the
    training-space parameters mapped back."""
    if state.point is not None:
        m, b = state.point
    else:
        d = state.params.shape[0] - 1
        m, b = setup.scaling.to_original(state.params[:d], state.params[d])
    return np.asarray(m, dtype=np.float64), float(b)


def convergence_report(cfg, state: LoopState, certifier) -> dict:
    """model.json's ``convergence``: what ``converged`` rests on and how right the
    coefficients are (``bound``: relative error of the worst coefficient; null where
    the criterion gives none or nothing can be certified)."""
    bound = state.bound
    finite = bound is not None and np.isfinite(bound)
    return {"criterion": criterion_name(certifier, Rules.of(cfg.model, cfg.optimizer)), "tol": cfg.optimizer.tol,
            "bound": float(bound) if finite else None,
            "digits": digits(bound) if bound is not None else None,
            "epochs": state.epoch, "refinements": state.refinements}


def validation_summary(cfg, state: LoopState, rows, metrics: dict) -> dict:
    """model.json's ``validation``: the split, where early stopping ended, and the
    model's metrics on the held-out rows."""
    o = cfg.optimizer
    return {"fraction": o.validation_fraction, "seed": o.seed, "n_iter_no_change": o.n_iter_no_change,
            "rows": rows, "stopped_early": state.stopped_early, "best_epoch": state.best_epoch,
            "best_loss": state.best_val, "metrics": metrics}


def _certify_full_gradient(cfg, state: LoopState, ex: Executor, certifier) -> None:
    """Minibatch steps see batches: after the last one, one full pass gives the exact
    gradient, and with it the same certified bound as batch training (none with l1)."""
    if not isinstance(certifier, (CoefficientBound, LocalBound)):
        return
    params = state.params
    grads = gradient_at(ex.gradient_sums, params, Rules.of(cfg.model, cfg.optimizer))
    state.bound = certifier.bound(params, grads, certifier.grad_error(params))
    state.converged = cfg.optimizer.tol > 0 and state.bound <= cfg.optimizer.tol


def run_key(cfg, source: ParquetSource, init) -> str:
    """What a checkpoint must match to be resumed: everything but cluster and output."""
    doc = cfg.model_dump(mode="json", exclude={"cluster", "output", "registry"})
    doc["data_fingerprint"] = source.fingerprint()
    doc["init"] = None if init is None else [list(map(float, init[0])), float(init[1])]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _checkpoints(cfg) -> bool:
    """Checkpoints live next to the output; object-store outputs are not checkpointed."""
    return bool(cfg.output.checkpoint_every) and not store.is_url(cfg.output_dir)


def _resume(cfg, key: str, dtype) -> LoopState | None:
    if not _checkpoints(cfg):
        return None
    doc = store.read_checkpoint(cfg.output_dir, key)
    if doc is None:
        return None
    state = state_from_dict(doc)
    if state.params.dtype != dtype:
        return None
    log.info("resuming from the checkpoint at epoch %d", state.epoch)
    return state
