"""The epoch loop: one global gradient per epoch, one step of (m, b).

``fit`` needs a client and a config. It reads the footers, makes one pass for the
moments of [X, y] (standardization, curvature, and for ``gram`` everything), then runs
the epochs against a *gradient oracle* that returns the global ``BlockSums`` at (m, b):
a distributed map-reduce for ``stream``, an O(d²) formula for ``gram``. Only here are
the sums divided by N.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from . import gradient as g
from .data import CHUNK_BYTES, ParquetSource, open_source
from . import store
from .errors import DataError
from .executor import Executor, chunk_bytes_for, decide_cache
from .cluster import compute
from .certify import CoefficientBound, ProxBound, digits
from .loop import LoopState, Rules, criterion_name, descend, gradient_at, state_from_dict, state_to_dict
from .optim import Curvature, choose_rates
from .refine import AUTO_PASSES, Refiner, refine

log = logging.getLogger(__name__)

#: Largest number of features for which ``strategy: auto`` picks gram.
GRAM_MAX_FEATURES = 4096
#: ``epochs: auto`` for stream and minibatch (every epoch is a pass over the data).
STREAM_EPOCHS = 1000
#: ``epochs: auto`` for gram: heavy ball needs about √κ·ln(1/tol) epochs; this many
#: times that, plus ``STREAM_EPOCHS``, leaves room for refinement's corrections.
GRAM_EPOCHS_PER_ROOT_KAPPA = 4


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
    rows_dropped: int = 0  # rows with NaN/inf/null skipped (data.missing: drop)
    validation: dict | None = None  # early stopping: split, best epoch, metrics on held-out rows
    convergence: dict | None = None  # criterion, bound, digits, epochs, refinements (``certify``)


def pick_strategy(cfg) -> str:
    if cfg.optimizer.strategy != "auto":
        return cfg.optimizer.strategy
    ok = cfg.model.loss == "squared" and cfg.optimizer.method == "batch"
    return "gram" if ok and len(cfg.data.features) <= GRAM_MAX_FEATURES else "stream"


def check_moments(mom: g.Moments, cfg, ex: Executor) -> None:
    """Data problems that the moments reveal, each naming the column."""
    cols = ex.source.columns
    if not mom.finite():
        _diagnose_nonfinite(mom, ex)
    d = len(cfg.data.features)
    need = d + int(cfg.model.fit_intercept)
    if mom.n == 0:
        raise DataError(f"data.path '{cfg.data.path}': no rows left to train on")
    if mom.n < need:
        raise DataError(f"only {mom.n} rows for {d} features{' and an intercept' * cfg.model.fit_intercept}: "
                        f"need at least {need}")
    if cfg.model.standardize:
        var = np.diag(mom.comoment)[:-1]
        for j, f in enumerate(cols[:d]):
            rms = var[j] + (0 if cfg.model.fit_intercept else mom.n * mom.mean[j] ** 2)
            if rms <= 0:
                raise DataError(f"feature '{f}' is constant ({mom.mean[j]:g}): it cannot be standardized; "
                                "drop it from data.features")


def rows_dropped(cfg, source: ParquetSource, kept) -> int:
    """Rows skipped for NaN/inf/null values (``missing: drop``): the footers' row count
    minus the rows ``kept`` (training and validation); 0 where row filters or weights
    leave no count to compare with."""
    if cfg.data.missing != "drop" or source.row_filters or source.weighted:
        return 0
    dropped = source.n_rows - kept
    if dropped:
        log.warning("dropped %d of %d rows holding NaN/inf/null values (data.missing: drop)",
                    dropped, source.n_rows)
    return dropped


def _diagnose_nonfinite(mom: g.Moments, ex: Executor) -> None:
    """Non-finite moments: NaN/inf in the data (a second pass names column, count and
    first file, in file order), or values whose squares overflow float64."""
    cols = ex.source.columns
    counts = np.asarray(ex.nonfinite_by_block())
    total = counts.sum(axis=0)
    if total.any():
        j = int(np.flatnonzero(total)[0])
        first = ex.source.pieces[int(np.flatnonzero(counts[:, j])[0])].path
        raise DataError(f"column '{cols[j]}' has {int(total[j])} NaN/inf/null values (first in {first}); "
                        "fix the data or set data.missing: drop to skip such rows")
    bad = ~(np.isfinite(mom.mean) & np.isfinite(np.diag(mom.comoment)))
    j = int(np.flatnonzero(bad)[0]) if bad.any() else int(np.flatnonzero(~np.isfinite(mom.comoment).all(0))[0])
    raise DataError(f"column '{cols[j]}' has values too large for float64 (their squares overflow); "
                    "rescale the column")


@dataclass
class Setup:
    """What the moments decide before the first epoch: scaling, curvature, rates."""

    std: g.Standardizer
    curv: Curvature
    rates: object
    fit_b: bool
    mom: g.Moments
    l2: float = 0.0

    @classmethod
    def of(cls, cfg, mom: g.Moments) -> Setup:
        d = mom.mean.shape[0] - 1
        fit_b = cfg.model.fit_intercept
        std = g.Standardizer.from_moments(mom, fit_b) if cfg.model.standardize else g.Standardizer.identity(d)
        curv = Curvature.of(g.hessian(mom, std, fit_b, cfg.model.l2))
        rates = choose_rates(curv, cfg.optimizer.learning_rate, cfg.optimizer.momentum, cfg.model.l1)
        log.info("curvature λmin=%.3g λmax=%.3g (κ=%.3g); learning rate %.6g, momentum %.6g",
                 curv.lmin, curv.lmax, curv.condition, rates.learning_rate, rates.momentum)
        return cls(std, curv, rates, fit_b, mom, cfg.model.l2)

    @property
    def hessian(self) -> np.ndarray:
        return g.hessian(self.mom, self.std, self.fit_b, self.l2)

    def certifier(self, cfg):
        """What bounds the coefficients' error (``certify``): per coefficient for squared
        loss, the proximal mapping's norm bound with l1, none for Huber."""
        if cfg.model.loss != "squared":
            return None
        n = self.mom.n
        rms_y = float(np.sqrt(max(self.mom.comoment[-1, -1], 0.0) / n + self.mom.mean[-1] ** 2))
        if cfg.model.l1:
            return ProxBound(self.hessian, n, rms_y)
        return CoefficientBound(self.hessian, self.std.center, self.std.scale, self.fit_b, n, rms_y)

    def refiner(self) -> Refiner:
        return Refiner(self.hessian, self.std.center, self.std.scale, self.fit_b, self.l2)

    def epochs(self, cfg, strategy: str, certifier=None) -> int:
        """``optimizer.epochs``, with ``auto`` resolved against the curvature (and
        ``STREAM_EPOCHS`` where nothing can be certified: more epochs cannot make
        ``converged`` true)."""
        o = cfg.optimizer
        if o.epochs != "auto":
            return o.epochs
        if strategy != "gram" or (isinstance(certifier, CoefficientBound) and not certifier.certifiable):
            return STREAM_EPOCHS
        tol = max(o.tol, 1e-16)
        root_kappa = float(np.sqrt(min(self.curv.condition, 1e12)))
        return STREAM_EPOCHS + int(np.ceil(GRAM_EPOCHS_PER_ROOT_KAPPA * root_kappa * np.log(1e6 / tol)))

    @functools.cached_property
    def gram(self) -> g.Gram:
        return g.Gram(self.mom, self.std)

    def moments_metrics(self, params, mom: g.Moments | None = None) -> dict:
        """mse, rmse, r2 and n at ``params`` (training space), exact from the moments
        alone (the training rows', or ``mom``); mae needs the rows and is None."""
        d = self.mom.mean.shape[0] - 1
        if mom is None:
            gram, mom = self.gram, self.mom
        else:
            gram = g.Gram(mom, self.std)
        sq = float(gram.sums(params[:d], params[d]).sq_err)
        cyy = mom.comoment[-1, -1]
        return {"mse": sq / mom.n, "rmse": float(np.sqrt(sq / mom.n)), "mae": None,
                "r2": 1.0 - sq / cyy if cyy > 0 else 0.0, "n": mom.n}

    def validation_loss(self, val_mom: g.Moments):
        """The loss on the validation rows at any (m, b), exact from their moments."""
        gram = g.Gram(val_mom, self.std)
        return lambda m, b: float(gram.sums(m, b).sq_err) / val_mom.n

    def initial_params(self, init, extended: bool) -> np.ndarray:
        """[m..., b] in the training space: zeros, or the warm start ``init`` (original
        units). ``extended``: iterate in the gram's precision, since with momentum near 1
        the rounding of θ + step would otherwise set the accuracy floor (gradient.Gram)."""
        d = self.mom.mean.shape[0] - 1
        if init is not None:
            m0, b0 = self.std.to_training(*init)
            params = np.append(m0, b0 if self.fit_b else 0.0)
        else:
            params = np.zeros(d + 1)
        return params.astype(self.gram.dtype) if extended else params


def fit_moments(cfg, mom: g.Moments, init=None, on_epoch=None, val_mom: g.Moments | None = None,
                refine_pass=None) -> FitResult:
    """gram training from moments alone: no pass over the data (nightly refits, sweeps).

    ``metrics`` are exact from the moments (mse, rmse, r2, n); mae needs the rows and is
    None. ``val_mom``: moments of the validation rows, for early stopping.
    ``refine_pass``: ``Executor.refine_sums`` of the training rows, for refinement past
    the float64 floor (read only when the descent stalls there).
    """
    t0 = time.perf_counter()
    setup = Setup.of(cfg, mom)
    gram = setup.gram
    validate = None if val_mom is None else setup.validation_loss(val_mom)
    certifier = setup.certifier(cfg)
    epochs = setup.epochs(cfg, "gram", certifier)
    state = descend(LoopState.start(setup.initial_params(init, extended=True)), gram.sums, setup.rates,
                    setup.curv, epochs=epochs, tol=cfg.optimizer.tol,
                    fit_intercept=setup.fit_b, certifier=certifier, on_epoch=on_epoch, rules=Rules.of(cfg),
                    validate=validate)
    state = finish(cfg, setup, state, certifier, refine_pass, epochs, on_epoch)
    m, b = final_coefficients(setup, state)
    metrics = setup.moments_metrics(state.params)
    validation = None
    if val_mom is not None:
        validation = validation_summary(cfg, state, val_mom.n, setup.moments_metrics(state.params, val_mom))
    return FitResult(
        m=m, b=b, epochs_run=state.epoch, converged=state.converged,
        final_loss=metrics["mse"], learning_rate=setup.rates.learning_rate, momentum=setup.rates.momentum,
        strategy="gram", metrics=metrics, history=state.history, params=state.params.astype(np.float64),
        curvature=setup.curv, seconds=time.perf_counter() - t0, validation=validation,
        convergence=convergence_report(cfg, state, certifier))


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
    if not state.converged and not state.stopped_early and o.tol > 0:
        reached = digits(state.bound)
        how = f"{reached:.1f} digits of {-np.log10(o.tol):.1f} reached" if reached is not None else \
            f"relative loss change above tol={o.tol:g}"
        if isinstance(certifier, CoefficientBound) and not certifier.certifiable:
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
        m, b = setup.std.to_original(state.params[:d], state.params[d])
    return np.asarray(m, dtype=np.float64), float(b)


def convergence_report(cfg, state: LoopState, certifier) -> dict:
    """model.json's ``convergence``: what ``converged`` rests on and how right the
    coefficients are (``bound``: relative error of the worst coefficient; null where
    the criterion gives none or nothing can be certified)."""
    bound = state.bound
    finite = bound is not None and np.isfinite(bound)
    return {"criterion": criterion_name(certifier, Rules.of(cfg)), "tol": cfg.optimizer.tol,
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


def validation_moments(ex: Executor, cfg) -> g.Moments:
    """Moments of the held-out rows, checked: some rows, all values finite."""
    mom = ex.moments()
    if not mom.finite():
        _diagnose_nonfinite(mom, ex)
    if mom.n == 0:
        raise DataError(f"optimizer.validation_fraction {cfg.optimizer.validation_fraction:g} holds out "
                        f"no rows of {ex.source.n_rows}: raise it")
    return mom


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
    source.layout(chunk_bytes_for(client, CHUNK_BYTES))
    strategy = pick_strategy(cfg)
    cache = decide_cache(cfg.optimizer.cache, source, client, strategy)
    log.info("%d rows in %d files, %d blocks; strategy %s", source.n_rows, len(source.files),
             len(source.pieces), strategy)
    val_ex = None
    if cfg.optimizer.validation_fraction:
        source, val_source = source.split(cfg.optimizer.seed, cfg.optimizer.validation_fraction)
        val_ex = Executor(client, val_source, cache)
    ex = Executor(client, source, cache)

    mom = ex.moments()
    check_moments(mom, cfg, ex)
    setup = Setup.of(cfg, mom)
    val_mom = validation_moments(val_ex, cfg) if val_ex else None
    dropped = rows_dropped(cfg, source, mom.n + (val_mom.n if val_mom else 0))
    validate = None
    if strategy == "gram":
        oracle = setup.gram.sums
        if val_ex:
            validate = setup.validation_loss(val_mom)
    else:
        loss = g.Loss("huber", cfg.model.huber_delta) if cfg.model.loss == "huber" else g.SQUARED
        for e in filter(None, (ex, val_ex)):
            e.standardize(setup.std)
            # The squared loss's curvature bounds Huber's (ψ′ ≤ 1): its rates stay stable.
            e.loss = loss
        oracle = ex.gradient_sums
        if val_ex:
            oracle, validate = _paired_passes(ex, val_ex)
    params = setup.initial_params(init, extended=strategy == "gram")
    certifier = setup.certifier(cfg)
    epochs = setup.epochs(cfg, strategy, certifier)

    key = run_key(cfg, source, init)
    state = _resume(cfg, key, params.dtype) or LoopState.start(params)
    resumed_from = state.epoch or None
    if cfg.optimizer.method == "minibatch":
        oracle = _minibatch_oracle(cfg, ex, mom.n, state.epoch)  # steps continue after a resume
    rates, curv, std, fit_b = setup.rates, setup.curv, setup.std, setup.fit_b
    state = descend(
        state, oracle, rates, curv, epochs=epochs, tol=cfg.optimizer.tol,
        fit_intercept=fit_b, certifier=certifier, on_epoch=on_epoch, rules=Rules.of(cfg),
        checkpoint=lambda st: store.write_checkpoint(cfg.output_dir, key, state_to_dict(st)),
        checkpoint_every=cfg.output.checkpoint_every if _checkpoints(cfg) else 0, validate=validate,
    )
    if cfg.optimizer.method == "minibatch" and isinstance(certifier, CoefficientBound):
        _certify_full_gradient(cfg, state, ex, certifier)
    state = finish(cfg, setup, state, certifier, ex.refine_sums, epochs, on_epoch)

    m, b = final_coefficients(setup, state)
    if cfg.output.metrics == "moments":
        metrics = setup.moments_metrics(state.params)
    else:
        metrics = g.metrics(ex.error_sums(m, b))
    validation = None
    if val_ex:
        val_metrics = (setup.moments_metrics(state.params, val_mom) if cfg.output.metrics == "moments"
                       else g.metrics(val_ex.error_sums(m, b)))
        validation = validation_summary(cfg, state, val_mom.n, val_metrics)
        val_ex.release()
        if state.stopped_early:
            log.info("early stop at epoch %d: no better validation loss for %d epochs; kept epoch %d (%.6g)",
                     state.epoch, cfg.optimizer.n_iter_no_change, state.best_epoch, state.best_val)
    ex.release()
    return FitResult(
        m=m, b=b, epochs_run=state.epoch, converged=state.converged, final_loss=metrics["mse"],
        learning_rate=rates.learning_rate, momentum=rates.momentum, strategy=strategy,
        metrics=metrics, history=state.history, params=state.params.astype(np.float64),
        curvature=curv, seconds=time.perf_counter() - t0, source=source, resumed_from=resumed_from,
        rows_dropped=dropped, validation=validation, convergence=convergence_report(cfg, state, certifier),
    )


def _certify_full_gradient(cfg, state: LoopState, ex: Executor, certifier: CoefficientBound) -> None:
    """Minibatch steps see samples: after the last one, one full pass gives the exact
    gradient, and with it the same certified bound as batch training."""
    params = state.params
    grads = gradient_at(ex.gradient_sums, params, Rules.of(cfg), cfg.model.fit_intercept)
    state.bound = certifier.bound(params, grads, certifier.grad_error(params))
    state.converged = cfg.optimizer.tol > 0 and state.bound <= cfg.optimizer.tol


def _paired_passes(ex: Executor, val_ex: Executor):
    """(oracle, validate) for stream with early stopping: one round trip per epoch
    computes the training sums and the validation loss at the same (m, b); ``validate``
    hands back that loss (or makes its own pass at other parameters)."""
    last: dict = {}

    def oracle(m, b):
        # Compute: two small results (a few numbers each) come back to the client.
        s, v = compute(ex.client, [ex.gradient_graph(m, b), val_ex.gradient_graph(m, b)])
        last.update(m=np.array(m, copy=True), b=float(b), loss=v.sq_err / v.n)
        return s

    def validate(m, b):
        if last and float(b) == last["b"] and np.array_equal(m, last["m"]):
            return last["loss"]
        v = val_ex.gradient_sums(m, b)
        return v.sq_err / v.n

    return oracle, validate


def _minibatch_oracle(cfg, ex: Executor, n: int, done: int = 0):
    """Gradient sums of a fresh seeded sample of about batch_size rows at each call;
    ``done`` steps were taken before (a resumed run draws the samples it would have)."""
    fraction = min(1.0, cfg.optimizer.batch_size / n)
    step = [done]

    def oracle(m, b):
        step[0] += 1
        return ex.sampled_sums(m, b, fraction, cfg.optimizer.seed, step[0])

    return oracle


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
