"""Update rules and learning rates: pure functions, no I/O, no dask.

An optimizer is a pair of pure functions in the manner of optax: ``init(params) -> state``
and ``update(grads, state) -> (step, state)``; params are the flat vector ``[m..., b]``.

For squared loss the Hessian of ½·MSE is the (standardized) Gram matrix ``H``, known from
one pass over the data. Its extreme eigenvalues ``λmin, λmax`` give the textbook rates:

* plain gradient descent is stable for ``lr < 2/λmax`` and fastest at
  ``lr = 2/(λmax + λmin)`` (convergence factor ``(κ−1)/(κ+1)`` per epoch);
* heavy-ball momentum is stable for ``lr < 2(1+β)/λmax`` and fastest at
  ``lr = 4/(√λmax + √λmin)²``, ``β = ((√λmax − √λmin)/(√λmax + √λmin))²``
  (factor ``(√κ−1)/(√κ+1)``): the fix for ill-conditioned data.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


#: Largest condition number taken at face value (float64 resolves no more).
MAX_CONDITION = 1e12


class Curvature(NamedTuple):
    """Extreme eigenvalues of the Hessian of ½·MSE in the training space."""

    lmin: float
    lmax: float

    @classmethod
    def of(cls, hessian: np.ndarray, rank: int | None = None) -> Curvature:
        """Eigenvalues of ``hessian``, with λmin floored at ``λmax / MAX_CONDITION``.

        Below that floor λmin is rounding noise (or 0 for collinear features); the floor
        keeps heavy ball's β measurably below 1 and its rate below the stable limit.
        ``rank``: the Hessian has at most this rank (fewer rows than parameters): λmin is
        then the smallest of its ``rank`` largest eigenvalues, the curvature of the row
        space the descent from zero never leaves.
        """
        ev = np.linalg.eigvalsh(hessian)
        lmax = float(ev[-1])
        lmin = float(ev[0]) if rank is None or rank >= len(ev) else float(ev[len(ev) - rank])
        return cls(max(lmin, lmax / MAX_CONDITION), lmax)

    @property
    def condition(self) -> float:
        return self.lmax / self.lmin if self.lmin > 0 else float("inf")


class Rates(NamedTuple):
    learning_rate: float
    momentum: float


def stable_limit(curv: Curvature, momentum: float = 0.0) -> float:
    """The largest constant rate that does not diverge (exclusive bound)."""
    return 2.0 * (1.0 + momentum) / curv.lmax


def schedule(name: str, eta0: float, *, power_t: float = 0.25, step_size: int = 100, gamma: float = 0.5,
             alpha: float = 0.0):
    """The learning rate of step t = 1, 2, … as a pure function of t.

    constant: eta0; invscaling: eta0 / t^power_t (scikit-learn's); step: eta0 ·
    gamma^floor((t − 1) / step_size); optimal: 1 / (alpha·(t0 + t − 1)) with
    t0 = 1/(alpha·eta0), scikit-learn's for an l2 penalty alpha, starting at eta0.
    """
    if name == "constant":
        return lambda t: eta0
    if name == "optimal":
        if not alpha > 0:
            raise ValueError("schedule optimal needs model.l2 > 0 (its rate is 1/(l2·t))")
        t0 = 1.0 / (alpha * eta0)
        return lambda t: 1.0 / (alpha * (t0 + t - 1))
    if name == "invscaling":
        return lambda t: eta0 / t ** power_t
    if name == "step":
        return lambda t: eta0 * gamma ** ((t - 1) // step_size)
    raise ValueError(f"unknown schedule {name!r}")


def soft_threshold(x: np.ndarray, threshold: float) -> np.ndarray:
    """Proximal map of threshold·‖x‖₁: shrink toward 0, exactly 0 inside ±threshold."""
    return np.sign(x) * np.maximum(np.abs(x) - threshold, 0.0)


def choose_rates(curv: Curvature, learning_rate, momentum, l1: float = 0.0) -> Rates:
    """Resolve ``auto`` settings against the curvature; numbers pass through.

    Parameters
    ----------
    learning_rate : float or "auto"
    momentum : float or "auto"
        ``auto`` with ``learning_rate: auto`` is the optimal heavy ball; with a fixed
        learning rate it is 0 (the article's plain descent).
    """
    L, mu = curv.lmax, curv.lmin
    if momentum == "auto" and l1:
        momentum = 0.0  # proximal (lasso) steps go without momentum
    if momentum == "auto":
        if learning_rate == "auto":
            sl, sm = np.sqrt(L), np.sqrt(mu)
            return Rates(4.0 / (sl + sm) ** 2, float(((sl - sm) / (sl + sm)) ** 2))
        # A tuned β needs its matched rate; with the user's own rate, plain descent.
        return Rates(float(learning_rate), 0.0)
    if learning_rate == "auto":
        return Rates((1.0 + momentum) * 2.0 / (L + mu), float(momentum))
    return Rates(float(learning_rate), float(momentum))


class HeavyBallState(NamedTuple):
    velocity: np.ndarray


def heavy_ball(rates: Rates):
    """Polyak's heavy ball: ``v ← β·v − lr·g``, ``θ ← θ + v`` (β = 0: plain descent).

    Returns the pair ``(init, update)``.
    """
    lr, beta = rates

    def init(params) -> HeavyBallState:
        return HeavyBallState(np.zeros_like(params))

    def update(grads, state: HeavyBallState, rate=None):
        """``rate``: this step's learning rate (a schedule); the base rate otherwise."""
        eta = lr if rate is None else rate
        if beta == 0.0:
            step = -eta * grads
        else:
            step = beta * state.velocity - eta * grads
        return step, HeavyBallState(step)

    return init, update
