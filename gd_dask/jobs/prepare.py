"""Before the first epoch: what train, sweep and refit share.

``prepare`` opens the data, lays out its chunks for the cluster, splits off validation
rows, and makes one pass for the moments of [X, y], checked for what they reveal
(no rows, constant features, NaN/inf, overflow). ``Setup`` turns moments into what
descent needs: the scaling, the curvature and the learning rates, the certifier of the
coefficients' error, the epoch budget.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from ..kernels.moments import Gram, Moments, Standardizer, hessian
from ..kernels import losses
from ..optimization.certify import CoefficientBound, LocalBound, ProxBound
from ..data import CHUNK_BYTES, Pack, ParquetSource, open_source
from ..errors import DataError
from ..runtime.executor import Executor, chunk_bytes_for, decide_cache
from ..optimization.rates import Curvature, choose_rates
from ..optimization.refine import Refiner
from ..optimization.strategy import Strategy

log = logging.getLogger(__name__)

#: ``epochs: auto`` for stream and minibatch (every epoch is a pass over the data).
STREAM_EPOCHS = 1000
#: ``epochs: auto`` for gram: heavy ball needs about √κ·ln(1/tol) epochs; this many
#: times that, plus ``STREAM_EPOCHS``, leaves room for refinement's corrections.
GRAM_EPOCHS_PER_ROOT_KAPPA = 4


def pick_strategy(cfg) -> Strategy:
    """The run's ``Strategy``, ``optimizer.strategy: auto`` resolved."""
    o = cfg.optimizer
    return Strategy.of(o.strategy, losses.of(cfg.model).quadratic, o.method, len(cfg.data.features))


@dataclass
class Prepared:
    """The data ready for descent: the training rows' executor and moments (checked),
    and the validation rows' where ``optimizer.validation_fraction`` holds some out."""

    source: ParquetSource
    strategy: Strategy
    ex: Executor
    mom: Moments
    val_ex: Executor | None = None
    val_mom: Moments | None = None
    rows_dropped: int | None = 0

    def release(self) -> None:
        for e in filter(None, (self.ex, self.val_ex)):
            e.release()


def prepare(cfg, client, source: ParquetSource | None = None) -> Prepared:
    """Open (unless ``source`` holds the footers already), lay out, split, one pass for
    the moments, checks."""
    source = source or open_source(cfg.data)
    # The layout is the data's alone (the bits must not depend on the cluster); the
    # workers' memory only sets which row groups are streamed.
    source.layout(CHUNK_BYTES, stream_above=chunk_bytes_for(client, CHUNK_BYTES))
    strategy = pick_strategy(cfg)
    cache = decide_cache(cfg.optimizer.cache, source, client, strategy)
    log.info("%s rows in %d files, %d chunks; strategy %s",
             "?" if source.n_rows is None else source.n_rows, len(source.files),
             len(source.chunks), strategy)
    loss = losses.of(cfg.model)
    val_ex = val_mom = None
    if cfg.optimizer.validation_fraction:
        source, val_source = source.split(cfg.optimizer.seed, cfg.optimizer.validation_fraction)
        val_ex = Executor(client, val_source, cache, loss)
    ex = Executor(client, source, cache, loss)
    mom = ex.moments()
    check_moments(mom, cfg, ex)
    if loss.target_rule:
        check_targets(cfg, ex, val_ex)
    if val_ex is not None:
        val_mom = validation_moments(val_ex, cfg)
    dropped = rows_dropped(cfg, source, mom.n + (val_mom.n if val_mom else 0))
    return Prepared(source, strategy, ex, mom, val_ex, val_mom, dropped)


def check_moments(mom: Moments, cfg, ex: Executor) -> None:
    """Data problems that the moments reveal, each naming the column."""
    cols = ex.source.columns
    if not mom.finite():
        _diagnose_nonfinite(mom, ex)
    d = len(cfg.data.features)
    if mom.n == 0:
        raise DataError(f"data.path '{cfg.data.path}': no rows left to train on")
    if mom.n < 2:
        raise DataError(f"only {mom.n} row: need at least 2")
    if cfg.model.standardize:
        var = np.diag(mom.comoment)[:-1]
        for j, f in enumerate(cols[:d]):
            rms = var[j] + (0 if cfg.model.fit_intercept else mom.n * mom.mean[j] ** 2)
            if rms <= 0:
                raise DataError(f"feature '{f}' is constant ({mom.mean[j]:g}): it cannot be standardized; "
                                "drop it from data.features")


def check_targets(cfg, *executors) -> None:
    """The target's values against the loss's rule (0/1 for logistic): one pass."""
    count, values = 0, ()
    for e in filter(None, executors):
        c, v = e.bad_targets()
        count, values = count + c, tuple(sorted(set(values) | set(v)))[:5]
    if count:
        loss = losses.of(cfg.model)
        shown = ", ".join(f"{v:g}" for v in values)
        raise DataError(f"target '{cfg.data.target}' holds {count} values that are not {loss.target_rule} "
                        f"(e.g. {shown}); model.loss {loss.name} needs {loss.target_rule} labels")


def rows_dropped(cfg, source: ParquetSource, kept) -> int | None:
    """Rows skipped for NaN/inf/null values (``missing: drop``): the footers' row count
    minus the rows ``kept`` (training and validation); 0 where row filters or weights
    leave no count to compare with; None where files planned from the listing have no
    row count before they are read."""
    if cfg.data.missing != "drop" or source.row_filters or source.weighted:
        return 0
    if source.n_rows is None:
        log.info("rows dropped for NaN/inf/null values: not counted (small files planned from the listing)")
        return None
    dropped = source.n_rows - kept
    if dropped:
        log.warning("dropped %d of %d rows holding NaN/inf/null values (data.missing: drop)",
                    dropped, source.n_rows)
    return dropped


def _diagnose_nonfinite(mom: Moments, ex: Executor) -> None:
    """Non-finite moments: NaN/inf in the data (a second pass names column, count and
    first file, in file order), or values whose squares overflow float64."""
    cols = ex.source.columns
    if any(isinstance(c, Pack) for c in ex.source.chunks):  # packed files: name the very file
        ex = Executor(ex.client, ex.source.unpacked(), False, ex.loss)
    counts = np.asarray(ex.nonfinite_by_block())
    total = counts.sum(axis=0)
    if total.any():
        j = int(np.flatnonzero(total)[0])
        i = int(np.flatnonzero(counts[:, j])[0])
        first = getattr(ex.source.chunks[i], "path", f"partition {i}")
        raise DataError(f"column '{cols[j]}' has {int(total[j])} NaN/inf/null values (first in {first}); "
                        "fix the data or set data.missing: drop to skip such rows")
    bad = ~(np.isfinite(mom.mean) & np.isfinite(np.diag(mom.comoment)))
    j = int(np.flatnonzero(bad)[0]) if bad.any() else int(np.flatnonzero(~np.isfinite(mom.comoment).all(0))[0])
    raise DataError(f"column '{cols[j]}' has values too large for float64 (their squares overflow); "
                    "rescale the column")


def validation_moments(ex: Executor, cfg) -> Moments:
    """Moments of the held-out rows, checked: some rows, all values finite."""
    mom = ex.moments()
    if not mom.finite():
        _diagnose_nonfinite(mom, ex)
    if mom.n == 0:
        raise DataError(f"optimizer.validation_fraction {cfg.optimizer.validation_fraction:g} holds out "
                        f"no rows of {ex.source.n_rows}: raise it")
    return mom


@dataclass
class Setup:
    """What the moments decide before the first epoch: scaling, curvature, rates."""

    scaling: Standardizer
    curv: Curvature | None
    rates: object
    fit_b: bool
    mom: Moments
    loss: losses.Loss
    l2: float = 0.0

    @classmethod
    def of(cls, cfg, mom: Moments) -> Setup:
        d = mom.mean.shape[0] - 1
        fit_b = cfg.model.fit_intercept
        loss = losses.of(cfg.model)
        scaling = Standardizer.from_moments(mom, fit_b) if cfg.model.standardize else Standardizer.identity(d)
        if not loss.center_target:
            scaling = scaling._replace(y_center=0.0)
        setup = cls(scaling, None, None, fit_b, mom, loss, cfg.model.l2)
        setup.curv = curv = Curvature.of(setup.hessian, rank=setup.rank)
        setup.rates = rates = choose_rates(curv, cfg.optimizer.learning_rate, cfg.optimizer.momentum, cfg.model.l1)
        log.info("curvature λmin=%.3g λmax=%.3g (κ=%.3g); learning rate %.6g, momentum %.6g",
                 curv.lmin, curv.lmax, curv.condition, rates.learning_rate, rates.momentum)
        return setup

    @property
    def d(self) -> int:
        return self.mom.mean.shape[0] - 1

    @property
    def rank(self) -> int | None:
        """The Hessian's rank where fewer rows than parameters bound it (no l2): at most
        n, so the descent from zero stays in its row space and its rates are set by the
        smallest nonzero curvature there. None: full rank is expected."""
        k = self.d + int(self.fit_b)
        if not self.loss.quadratic or self.l2 or self.mom.n >= k:
            return None
        return max(1, int(self.mom.n))

    @property
    def hessian(self) -> np.ndarray:
        """The objective's Hessian for a quadratic loss; for another, its bound: the
        loss's ``curvature`` times the Gram matrix's, plus l2 (exact for squared loss)."""
        if self.loss.curvature == 1.0:
            return hessian(self.mom, self.scaling, self.fit_b, self.l2)
        h = hessian(self.mom, self.scaling, self.fit_b) * self.loss.curvature
        d = self.d
        h[np.arange(d), np.arange(d)] += self.l2
        return h

    def certifier(self, cfg, curvature_pass=None):
        """What bounds the coefficients' error (``certify``): per coefficient for a
        quadratic loss, the proximal mapping's norm bound with l1; for a self-concordant
        loss without l1, per coefficient from the curvature that ``curvature_pass``
        (``Executor.curvature_sums``) measures; none otherwise."""
        if not self.loss.quadratic:
            if not (self.loss.self_concordant and curvature_pass is not None and not cfg.model.l1):
                return None
            return LocalBound(self.hessian, self.scaling.center, self.scaling.scale, self.fit_b, self.mom.n,
                              self._local_curvature(curvature_pass),
                              grad_scale=float(np.sqrt(np.linalg.eigvalsh(self.hessian)[-1])))
        n = self.mom.n
        rms_y = float(np.sqrt(max(self.mom.comoment[-1, -1], 0.0) / n + self.mom.mean[-1] ** 2))
        if cfg.model.l1:
            return ProxBound(self.hessian, n, rms_y)
        return CoefficientBound(self.hessian, self.scaling.center, self.scaling.scale, self.fit_b, n, rms_y)

    def _local_curvature(self, curvature_pass):
        """params ↦ (the objective's Hessian at params, max ‖x̃‖²): one pass."""
        d, k = self.d, self.d + int(self.fit_b)

        def local(params):
            s = curvature_pass(params[:d], params[d])
            h = np.asarray(s.hess, dtype=np.float64)[:k, :k] / s.n
            h[np.arange(d), np.arange(d)] += self.l2
            return h, s.radius2

        return local

    def refiner(self) -> Refiner:
        return Refiner(self.hessian, self.scaling.center, self.scaling.scale, self.fit_b, self.l2)

    def epochs(self, cfg, strategy: Strategy, certifier=None) -> int:
        """``optimizer.epochs``, with ``auto`` resolved against the curvature (and
        ``STREAM_EPOCHS`` where nothing can be certified: more epochs cannot make
        ``converged`` true)."""
        o = cfg.optimizer
        if o.epochs != "auto":
            return o.epochs
        if not strategy.gram or (isinstance(certifier, CoefficientBound) and not certifier.certifiable):
            return STREAM_EPOCHS
        tol = max(o.tol, 1e-16)
        root_kappa = float(np.sqrt(min(self.curv.condition, 1e12)))
        return STREAM_EPOCHS + int(np.ceil(GRAM_EPOCHS_PER_ROOT_KAPPA * root_kappa * np.log(1e6 / tol)))

    @functools.cached_property
    def gram(self) -> Gram:
        return Gram(self.mom, self.scaling)

    def moments_metrics(self, params, mom: Moments | None = None) -> dict:
        """mse, rmse, r2 and n at ``params`` (training space), exact from the moments
        alone (the training rows', or ``mom``); mae needs the rows and is None."""
        d = self.d
        if mom is None:
            gram, mom = self.gram, self.mom
        else:
            gram = Gram(mom, self.scaling)
        sq = float(gram.sums(params[:d], params[d]).loss)
        cyy = mom.comoment[-1, -1]
        return {"mse": sq / mom.n, "rmse": float(np.sqrt(sq / mom.n)), "mae": None,
                "r2": 1.0 - sq / cyy if cyy > 0 else 0.0, "n": mom.n}

    def validation_loss(self, val_mom: Moments):
        """The loss on the validation rows at any (m, b), exact from their moments."""
        gram = Gram(val_mom, self.scaling)
        return lambda m, b: float(gram.sums(m, b).loss) / val_mom.n

    def initial_params(self, init, extended: bool) -> np.ndarray:
        """[m..., b] in the training space: zeros, or the warm start ``init`` (original
        units). ``extended``: iterate in the gram's precision, since with momentum near 1
        the rounding of θ + step would otherwise set the accuracy floor (gradient.Gram)."""
        if init is not None:
            m0, b0 = self.scaling.to_training(*init)
            params = np.append(m0, b0 if self.fit_b else 0.0)
        else:
            params = np.zeros(self.d + 1)
        return params.astype(self.gram.dtype) if extended else params
