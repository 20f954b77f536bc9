"""What the moments decide before the first epoch: the scaling, the curvature and the
learning rates, the certifier of the coefficients' error, the epoch budget. Pure: it takes
the moments and the ``model`` and ``optimizer`` sections of a run config, never the run
config itself."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from ..kernels import losses
from ..kernels.metrics import sse_metrics
from ..kernels.moments import Gram, Moments, Standardizer, hessian
from .certify import CoefficientBound, LocalBound, ProxBound
from .rates import Curvature, choose_rates
from . import newton
from .refine import Refiner
from .strategy import Strategy

log = logging.getLogger(__name__)

#: ``epochs: auto`` for stream and minibatch (every epoch is a pass over the data).
STREAM_EPOCHS = 1000
#: ``epochs: auto`` for gram: heavy ball needs about √κ·ln(1/tol) epochs; this many
#: times that, plus ``STREAM_EPOCHS``, leaves room for refinement's corrections.
GRAM_EPOCHS_PER_ROOT_KAPPA = 4


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
    l1: float = 0.0

    @classmethod
    def of(cls, model, optimizer, mom: Moments) -> Setup:
        """From the ``model`` and ``optimizer`` sections of a run config and the moments."""
        d = mom.mean.shape[0] - 1
        fit_b = model.fit_intercept
        loss = losses.of(model)
        scaling = Standardizer.from_moments(mom, fit_b) if model.standardize else Standardizer.identity(d)
        if not loss.center_target:
            scaling = scaling._replace(y_center=0.0)
        setup = cls(scaling, None, None, fit_b, mom, loss, model.l2, model.l1)
        setup.curv = curv = Curvature.of(setup.hessian, rank=setup.rank)
        setup.rates = rates = choose_rates(curv, optimizer.learning_rate, optimizer.momentum, model.l1)
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
        if self.loss.curvature == 1.0 or not self.loss.bounded_curvature:  # unbounded: the features' own
            return hessian(self.mom, self.scaling, self.fit_b, self.l2)
        h = hessian(self.mom, self.scaling, self.fit_b) * self.loss.curvature
        d = self.d
        h[np.arange(d), np.arange(d)] += self.l2
        return h

    def certifier(self, curvature_pass=None):
        """What bounds the coefficients' error (``certify``): per coefficient for a
        quadratic loss, the proximal mapping's norm bound with l1; for a self-concordant
        loss without l1, per coefficient from the curvature that ``curvature_pass``
        (``Executor.curvature_sums``) measures; none otherwise."""
        if not self.loss.quadratic:
            if not (self.loss.self_concordant and curvature_pass is not None and not self.l1):
                return None
            return LocalBound(self.hessian, self.scaling.center, self.scaling.scale, self.fit_b, self.mom.n,
                              self._local_curvature(curvature_pass),
                              grad_scale=float(np.sqrt(np.linalg.eigvalsh(self.hessian)[-1])))
        n = self.mom.n
        rms_y = float(np.sqrt(max(self.mom.comoment[-1, -1], 0.0) / n + self.mom.mean[-1] ** 2))
        if self.l1:
            return ProxBound(self.hessian, n, rms_y)
        return CoefficientBound(self.hessian, self.scaling.center, self.scaling.scale, self.fit_b, n, rms_y)

    def newton_certifier(self) -> LocalBound:
        """``LocalBound`` for Newton passes, each measuring its own Hessian."""
        return LocalBound(None, self.scaling.center, self.scaling.scale, self.fit_b, self.mom.n)

    def newton_start(self, init, offset_mean: float = 0.0) -> np.ndarray:
        """Newton's first θ: the warm start ``init`` (original units), else the
        intercept-only model, b = link(ȳ) − the offset's mean (the exact start for
        Poisson with an exposure: log(Σy/Σexposure)); zeros where ȳ is outside the link's
        range."""
        if init is not None:
            return self.initial_params(init, extended=False)
        y_mean = float(self.mom.mean[-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            b = float(self.loss.link(np.array(y_mean))) - offset_mean
        return newton.start_params(self.d, self.fit_b, b)

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

    def epochs(self, optimizer, strategy: Strategy, certifier=None) -> int:
        """``optimizer.epochs``, with ``auto`` resolved against the curvature (and
        ``STREAM_EPOCHS`` where nothing can be certified: more epochs cannot make
        ``converged`` true)."""
        o = optimizer
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
        return sse_metrics(float(gram.sums(params[:d], params[d]).loss), mom.comoment[-1, -1], mom.n)

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
