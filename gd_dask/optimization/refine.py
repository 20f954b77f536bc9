"""Mixed-precision iterative refinement: descent past the float64 floor. Pure: the pass
over the data is a function handed in.

Near the solution the gradient from float64 moments (or float64 row sums) is a small
difference of large terms; once it is down to its own rounding error, more epochs cannot
make the coefficients more accurate (``LoopState.stalled``). Refinement then alternates:

1. the gradient at the current point ``p`` (original units, held in long double), far
   more precisely than float64 sums give it, with a certified bound (``certify``): for
   unweighted least squares from the Gram matrix of the raw rows, which one pass computes
   to about 24 digits (``exact_gram``) and every later round reuses on the client; with
   weights, from the residuals themselves in double-double, a pass per round
   (``compensated.refine_sums``);
2. if the bound is above tol, descent on the *correction* δ minimizes the quadratic
   model ``½δᵀHδ + ∇J(p)ᵀδ`` with the Hessian from the moments (O(d²) an epoch, on the
   client, heavy ball at the curvature's rates) until its gradient is ``CONTRACTION``
   times the pass's; then ``p ← p + δ``.

The correction is small, so H's rounding costs digits of δ only, not of p: each round
gains about −log10(CONTRACTION + κ·η) digits (Moler 1967; Higham, "Accuracy and
Stability of Numerical Algorithms", ch. 12). Rounds stop at tol, when a round no longer
halves the bound, or after the passes allowed; the point kept is the one with the
smallest certified bound.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..kernels import compensated as c
from ..kernels.moments import Standardizer
from .certify import EPS_LONG
from .rates import Curvature, choose_rates

log = logging.getLogger(__name__)

#: Each correction is solved until its gradient is this fraction of the pass's.
CONTRACTION = 1e-6
#: ``refine: auto``: at most this many passes (each must halve the bound).
AUTO_PASSES = 10


class Refiner:
    """The training-space side of refinement for one problem.

    Parameters
    ----------
    hess : ndarray (k, k)
        Hessian of the objective in the training space (l2 included).
    center, scale : ndarray (d,)
    fit_intercept : bool
    l2 : float
    """

    def __init__(self, hess, center, scale, fit_intercept: bool, l2: float = 0.0):
        self.hess = np.asarray(hess, dtype=np.float64)
        self.center = np.asarray(center, dtype=np.longdouble)
        self.scale = np.asarray(scale, dtype=np.longdouble)
        self.fit_intercept = fit_intercept
        self.l2 = l2
        self.d = len(scale)
        self.k = self.hess.shape[0]

    def to_original(self, params) -> tuple[np.ndarray, np.longdouble]:
        """(m, b) in original units, in long double (``Standardizer.to_original``)."""
        theta = np.asarray(params, dtype=np.longdouble)
        return Standardizer(self.center, self.scale).to_original(theta[:self.d], theta[self.d])

    def to_training(self, m, b) -> np.ndarray:
        return np.append(m * self.scale, b + self.center @ m if self.fit_intercept else 0)

    def gradient(self, s: c.PointGradient, m, b) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(θ, ∇J(θ), a bound on its rounding error, mse) at the point (m, b) whose
        gradient sums are ``s``; θ, ∇J in the training space, length d + 1."""
        n = np.longdouble(s.n)
        gx = (np.asarray(s.gx_hi, dtype=np.longdouble) + np.asarray(s.gx_lo, dtype=np.longdouble)) / n
        g1 = (np.longdouble(s.g1_hi) + np.longdouble(s.g1_lo)) / n
        # Σ w·r·(x − center): the sums come about their own center (or 0), moved to ours.
        own = 0 if s.center is None else np.asarray(s.center, dtype=np.longdouble)
        shift = (self.center - own) * g1
        g = np.append((gx - shift) / self.scale, g1 if self.fit_intercept else 0)
        theta = self.to_training(m, b)
        g[:self.d] += self.l2 * theta[:self.d]
        # The sums' own rounding (``s.err_*``, bounded where they were computed), then
        # long double for the client's arithmetic.
        raw_x = np.asarray(s.err_x) / s.n
        raw_1 = s.err_1 / s.n
        ld = 4 * EPS_LONG * (np.abs(gx) + np.abs(shift)).astype(np.float64)
        err_x = (raw_x + np.abs((self.center - own).astype(np.float64)) * raw_1 + ld) / self.scale.astype(np.float64)
        err_x += 4 * EPS_LONG * self.l2 * np.abs(theta[:self.d].astype(np.float64))
        err = float(np.linalg.norm(np.append(err_x, raw_1 if self.fit_intercept else 0.0)))
        return theta, g, err, s.sq / s.n

    def correction(self, g, rates, max_epochs: int):
        """δ (training space, length d + 1) that makes ``Hδ + g`` small, by heavy ball;
        returns (δ, epochs)."""
        H = self.hess.astype(np.longdouble)
        g = np.asarray(g[:self.k], dtype=np.longdouble)
        lr, beta = rates
        delta = np.zeros(self.k, dtype=np.longdouble)
        v = np.zeros_like(delta)
        target = CONTRACTION * float(np.linalg.norm(g.astype(np.float64)))
        epochs = 0
        while epochs < max_epochs:
            r = H @ delta + g
            if float(np.linalg.norm(r.astype(np.float64))) <= target:
                break
            v = beta * v - lr * r
            delta = delta + v
            epochs += 1
        out = np.zeros(self.d + 1, dtype=np.longdouble)
        out[:self.k] = delta
        return out, epochs


def refine(state, pass_fn, refiner: Refiner, certifier, curv: Curvature, *, tol: float, passes: int,
           epochs: int, on_epoch=None):
    """Refinement rounds from ``state.params`` (module docstring); updates and returns the
    state: ``params`` (training space), ``point`` (original units, long double),
    ``bound``, ``converged``, ``refinements``, ``epoch``; history rows for the passes and
    the corrections' epochs.

    ``pass_fn(m_hi, m_lo, b_hi, b_lo)`` returns the data's ``compensated.PointGradient``
    at m = m_hi + m_lo, b = b_hi + b_lo (original units); its ``passes`` (over the data)
    count as epochs.
    """
    rates = choose_rates(curv, "auto", "auto")
    m, b = refiner.to_original(state.params)
    best = None
    previous = math.inf
    t_last = time.perf_counter()
    for round_ in range(passes):
        b_hi = float(b)
        s = pass_fn(*c.split_pairs(m), b_hi, float(b - np.longdouble(b_hi)))
        state.epoch += s.passes  # a pass over the data, like a stream epoch (none from a cached Gram)
        theta, g, err, mse = refiner.gradient(s, m, b)
        bound = certifier.bound(theta, g, err)
        state.refinements += 1
        log.info("refinement %d: coefficients' relative error ≤ %.3g (%s)", state.refinements, bound,
                 "converged" if bound <= tol else f"tol {tol:g}")
        now = time.perf_counter()
        _record(state, mse, g, now - t_last, on_epoch, refinement=state.refinements)
        t_last = now
        if best is None or bound < best[0]:
            best = (bound, m, b, theta)
        if bound <= tol or bound > previous / 2 or round_ == passes - 1 or state.epoch >= epochs:
            break
        previous = bound
        delta, spent = refiner.correction(g, rates, epochs - state.epoch)
        state.epoch += spent
        dm = delta[:refiner.d] / refiner.scale
        m = m + dm
        if refiner.fit_intercept:
            b = b + (delta[refiner.d] - refiner.center @ dm)
    bound, m, b, theta = best
    state.params = theta.astype(state.params.dtype)
    state.point = (m, b)
    state.bound = bound
    state.converged = bound <= tol
    state.stalled = not state.converged
    return state


def _record(state, mse: float, g, seconds: float, on_epoch, refinement: int) -> None:
    row = {"epoch": state.epoch, "loss": float(mse), "grad_norm": float(np.linalg.norm(g.astype(np.float64))),
           "learning_rate": 0.0, "seconds": seconds, "refinement": refinement}
    state.history.append(row)
    if on_epoch is not None:
        on_epoch(row)
