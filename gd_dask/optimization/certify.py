"""How right the coefficients are: bounds on their error that never understate it.
Pure NumPy; no dask, no I/O.

``converged: true`` is a promise that every coefficient is within ``tol`` (relative) of
the exact minimizer of the training objective. What a bound means, per criterion:

``coefficients`` (squared loss, with or without l2)
    The objective J is a quadratic in θ = [m..., b] (the training space: standardized
    features, target in its own units) with Hessian H, so θ − θ* = H⁻¹∇J(θ) exactly.
    Each reported coefficient is a linear function c = uᵀθ: a slope m_j = θ_j / σ_j, the
    intercept in original units b = θ_b − Σ_j (center_j/σ_j)·θ_j. Hence, by
    Cauchy–Schwarz, ``|c − c*| ≤ ‖H⁻¹u‖·‖∇J(θ)‖``. A coefficient's relative error is
    that over ``max(|c*|, ZERO_FLOOR · s)``, with ``|c*| ≥ |c| − |c − c*|`` and ``s`` the
    largest standardized slope |θ_j| (in the target's units): a coefficient a million times
    smaller than the largest standardized slope is judged against a millionth of it
    instead of against itself, so an exact zero does not make convergence impossible.
    The slopes' relative errors are the same in original and standardized units. The
    reported ``bound`` is the largest over the coefficients, so ``digits`` (−log10
    bound) is the number of correct digits of the worst coefficient, as NIST's LRE.

    Floating point enters three ways, each added to the bound: the gradient's rounding
    (``grad_error``: float64 moments or sums, ``sums_accuracy``; or a compensated
    refinement pass), H's
    (its inverse is used through ``1/(1 − κ·η)``; beyond κ·η = ½ nothing is certified
    and the bound is infinite), and the final rounding of m, b to float64.

``prox_gradient`` (l1)
    With the proximal gradient mapping G = (θ − prox(θ − η∇f(θ)))/η and the contraction
    q = max(|1 − ημ|, |1 − ηL|) of a proximal step, ``‖θ − θ*‖ ≤ η‖G‖/(1 − q)``: a bound
    on the training-space norm, relative to ‖θ*‖ (lasso sets coefficients to zero, so
    per coefficient would mean nothing).

``local_curvature`` (logistic: losses with |ℓ‴| ≤ ℓ″)
    As ``coefficients``, with the Hessian measured at θ by one more pass over the data
    and a self-concordance factor for how it may change on the way to θ* (``LocalBound``).

``loss_change`` (Huber)
    No certified bound: the relative change of the loss stays below tol for several
    epochs. ``bound`` is null.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..sizes import CHUNK_BYTES, FAN_IN, SLICE_ROWS
from .hessians import DenseHessian, inverse_growth, jacobi

EPS = float(np.finfo(np.float64).eps)
EPS_LONG = float(np.finfo(np.longdouble).eps)
#: The unit roundoff of float64.
U = EPS / 2
#: Relative accuracy taken for a float64 sum over one slice of ``SLICE_ROWS`` rows
#: (moments, gradient sums: BLAS products in whatever order it keeps), against the
#: magnitudes it adds: generous (measured on 20M rows × 21 columns of normal data, the
#: co-moments' largest error was 2.4 u; the 220 exact problems of the tests hold with it).
ETA = 64 * EPS
#: λ of Higham & Mary's probabilistic bound ("A new approach to probabilistic rounding
#: error analysis", SIAM J. Sci. Comput. 2019): with rounding errors independent and of
#: mean zero, a chain of m float64 additions is off by at most λ·√m·u times the
#: magnitudes added, with probability at least 1 − 2m·exp(−λ²(1 − u)²/2): at λ = 10 and
#: m = 1,100, 1 − 4e-19.
PROB_LAMBDA = 10.0
#: The operations after the sums (the shift's subtraction, the division by n, Chan's
#: merge terms): a few roundings each, counted at their worst.
TAIL_ROUNDINGS = 8
#: Coefficients below this fraction of the largest |θ| are judged against that floor.
ZERO_FLOOR = 1e-6
#: Epochs between refreshes of the magnitudes ``CoefficientBound.screen`` caches.
REFRESH_EPOCHS = 16
#: ``screen`` asks for the full bound once its estimate is within this factor of tol.
SCREEN_FACTOR = 8.0


def merge_chain(n: float) -> int:
    """The longest chain of float64 additions that brings the slices' sums over ``n``
    rows together as gd_dask adds them: the slices one task adds one after another (at
    most a chunk's, ``CHUNK_BYTES`` of two float64 columns), then ``FAN_IN`` sequential
    merges at each level of the fixed tree over the tasks (no more tasks than slices)."""
    slices = max(1, math.ceil(float(n) / SLICE_ROWS))
    per_task = min(slices, CHUNK_BYTES // (16 * SLICE_ROWS))
    levels = math.ceil(math.log(slices, FAN_IN) - 1e-12) if slices > 1 else 0
    return per_task + FAN_IN * levels


def sums_accuracy(n: float) -> float:
    """Relative accuracy of float64 moments and gradient sums over ``n`` rows, against the
    magnitudes they add up (``sums_error`` scales it). Each slice's sum is within ``ETA``
    of its magnitudes, so their total is within ``ETA`` of the total magnitudes however
    many slices there are; bringing them together adds the rounding of a chain of
    ``merge_chain(n)`` additions (Higham & Mary's λ·√m·u) and the roundings after it. So
    it grows with the chain, not with the rows: 1.6e-14 at a slice's rows or fewer, 3.4e-14
    at 20M (5.1e-14 with slices of 8,192 rows). When it grew like the square root of the
    slices (7.2e-13), a bound of 1e-10 at 20M rows needed one pass more."""
    return ETA + PROB_LAMBDA * math.sqrt(merge_chain(n)) * U + TAIL_ROUNDINGS * U


def sums_error(eta: float, lmax: float, grad_scale: float, theta) -> float:
    """What float64 moments or float64 sums over rows may be off by in ∇J at θ:
    η·(‖H‖·‖θ‖ + √λmax·rms(y)), the sizes of the two terms of Hθ − Xᵀy/n."""
    return eta * (lmax * float(np.linalg.norm(np.asarray(theta, dtype=np.float64))) + grad_scale)


#: A row's ψ in a Newton pass is within (d + ``PSI_ROUNDINGS``)·u of the magnitudes it is
#: computed from (``gradient.NewtonSums.scale``): d + 2 roundings of eta = x·m + b (+ offset)
#: through ℓ'', up to 4 ulp of exp or log1p, and the products and differences after it.
PSI_ROUNDINGS = 14


#: Roundings a term of NumPy's pairwise sum of a slice goes through, at most: blocks of 128
#: add in 8 accumulators of 16 terms (15), combine (3), take the rest (7), then one level
#: per halving of the slice down to 128 rows; and the product before it (1).
PAIRWISE_ROUNDINGS = 26 + max(0, math.ceil(math.log2(SLICE_ROWS / 128)))
#: Roundings of a level's Σψ over a slice (``compensated.exact_bincount``): the product
#: into the remainder's chain and the double-double's normalization; the chain's own
#: error (m²·u²·σ) is far below one.
LEVEL_SUM_ROUNDINGS = 2
#: Roundings per term, in the unit of a row's terms (long double's), of a gradient summed
#: exactly from ψ in two float64 parts (``compensated.exact_dots``, ``dd_bincount``): the
#: low part's product and its addition to the high product's error, about 2u² of the
#: term, and the double-double sums' own, far below one u_L.
EXACT_SUM_ROUNDINGS = 1
#: What a float64 chain of a slice's rows (``np.bincount``: the levels' Σℓ'' and Σℓ''·x)
#: may be off by, against the magnitudes it adds, at its worst (γ_m).
CHAIN_ETA = SLICE_ROWS * U * 1.01


def newton_gradient_errors(scale, grad, n: float, d: int, summed=PAIRWISE_ROUNDINGS, unit: float = U) -> np.ndarray:
    """What each coordinate of a Newton pass's ∇J (``kernels.newton.NewtonSums``) may be
    off by: each row's ψ within (d + ``PSI_ROUNDINGS``)·``unit`` of its magnitudes (d:
    the terms of a row's η; ``unit``: the roundoff of the precision a row's terms are
    computed in), its product with x̃ and the slice's sum within ``summed``·``unit`` of
    theirs (``scale`` bounds both; ``summed``: per coordinate, where exact sums take
    ``LEVEL_SUM_ROUNDINGS`` or ``EXACT_SUM_ROUNDINGS``), the slices' sums added as
    double-doubles, the result rounded to float64 (u·|∇J|)."""
    per_row = (d + PSI_ROUNDINGS + np.asarray(summed, dtype=np.float64)) * unit * 1.01
    return (per_row * np.abs(np.asarray(scale, dtype=np.float64)) + U * np.abs(np.asarray(grad)) * n) / n


def digits(bound: float | None) -> float | None:
    """Correct digits a relative error bound promises: −log10(bound), 0 to 17."""
    if bound is None:
        return None
    if not math.isfinite(bound):
        return 0.0
    return float(min(17.0, max(0.0, -math.log10(bound)))) if bound > 0 else 17.0


def coefficient_map(k: int, d: int, ratio, fit_intercept: bool) -> np.ndarray:
    """Columns u with c = uᵀθ for each reported coefficient: the slopes θ_j (same relative
    error as m_j), then the original-units intercept b = θ_b − Σ (center_j/σ_j)·θ_j."""
    u = np.eye(k)
    if fit_intercept:
        u[:d, d] = -np.asarray(ratio)
    return u


class CoefficientBound:
    """The ``coefficients`` criterion (module docstring).

    Parameters
    ----------
    hess : ndarray (k, k)
        Hessian of the objective in the training space (k = d + 1 with an intercept,
        d without), l2 included.
    center, scale : ndarray (d,)
        The standardization (zeros and ones without it).
    fit_intercept : bool
    n : float
        Rows (Σw with weights).
    rms_y : float
        √(Σy²/n): the size of the gradient's constant term.
    """

    name = "coefficients"

    def __init__(self, hess, center, scale, fit_intercept: bool, n: float, rms_y: float):
        hess = np.asarray(hess, dtype=np.float64)
        self.k = hess.shape[0]
        self.d = len(scale)
        self.fit_intercept = fit_intercept
        self.ratio = np.asarray(center, dtype=np.float64) / np.asarray(scale, dtype=np.float64)
        self.eta = sums_accuracy(n)
        ev = np.linalg.eigvalsh(hess)
        self.lmax = float(ev[-1])
        kappa_eta = self.lmax / ev[0] * self.eta if ev[0] > 0 else math.inf
        self.certifiable = kappa_eta <= 0.5
        self.w = None
        self._hess, self._kappa_eta = hess, kappa_eta
        if self.certifiable:
            self.w = self.inverse_norms(coefficient_map(self.k, self.d, self.ratio, fit_intercept))
        self.grad_scale = math.sqrt(self.lmax) * rms_y
        self._screened = 0
        self._grad_err = 0.0
        self._w_over_c = math.inf

    def inverse_norms(self, U) -> np.ndarray:
        """‖H⁻¹u‖ for each column u of U, for the true H from the computed one (‖H⁻¹‖
        grows by 1/(1 − κη) at most): times ‖∇J‖ plus its rounding, a bound on the
        error of the linear function uᵀθ of the training-space parameters."""
        return np.linalg.norm(np.linalg.solve(self._hess, U), axis=0) / (1.0 - self._kappa_eta) * (1.0 + 1e-6)

    def screen(self, params, grad_norm: float, tol: float) -> tuple[bool, bool]:
        """``(may_converge, stalled)`` at θ from magnitudes cached every
        ``REFRESH_EPOCHS`` calls: a gram epoch costs microseconds, the full bound tens of
        them. ``may_converge``: the full ``bound`` is worth computing; ``stalled``: the
        gradient is within its rounding error, so more descent cannot shrink the bound."""
        if self._screened < REFRESH_EPOCHS or self._screened % REFRESH_EPOCHS == 0:
            self._grad_err = self.grad_error(params)
            if self.w is not None:
                c = np.abs(self.coefficients(params))
                self._w_over_c = float((self.w / np.maximum(c, 1e-300)).max())
        self._screened += 1
        estimate = (grad_norm + self._grad_err) * self._w_over_c
        stalled = grad_norm <= self._grad_err
        # At a stall the full bound decides: it may well be below tol already.
        return stalled or estimate <= SCREEN_FACTOR * tol, stalled

    def grad_error(self, params) -> float:
        """The gradient's float64 rounding at θ (``sums_error``)."""
        return sums_error(self.eta, self.lmax, self.grad_scale, params[:self.k])

    def coefficients(self, params) -> np.ndarray:
        """The reported coefficients' training-space forms: θ_j for the slopes (same
        relative error as m_j), the original-units intercept last (with one)."""
        theta = np.asarray(params, dtype=np.longdouble)
        slopes = theta[:self.d]
        if not self.fit_intercept:
            return slopes.astype(np.float64)
        b = theta[self.d] - slopes @ self.ratio.astype(np.longdouble)
        return np.append(slopes, b).astype(np.float64)

    def rounding(self, params) -> np.ndarray:
        """Absolute error of mapping θ to original units and storing m, b as float64."""
        theta = np.abs(np.asarray(params[:self.k], dtype=np.float64))
        out = 3 * EPS * theta[:self.d]
        if self.fit_intercept:
            b_terms = theta[self.d] + theta[:self.d] @ np.abs(self.ratio)
            out = np.append(out, 4 * EPS_LONG * b_terms + 2 * EPS * abs(float(self.coefficients(params)[-1])))
        return out

    def bound(self, params, grads, grad_error: float) -> float:
        """Largest relative error of a reported coefficient at θ = ``params``, given the
        computed ∇J (``grads``, length d + 1) and a bound on its rounding error."""
        if self.w is None:
            return math.inf
        g = float(np.linalg.norm(np.asarray(grads[:self.k], dtype=np.float64))) + grad_error
        return self.relative(params, self.w * g + self.rounding(params))

    def relative(self, params, err) -> float:
        """The largest relative error of a reported coefficient at θ whose absolute
        errors are at most ``err`` (each over max(|c| − err, the zero floor))."""
        c = np.abs(self.coefficients(params))
        theta = np.abs(np.asarray(params[:self.k], dtype=np.float64))
        slopes = float(theta[:self.d].max()) if self.d else 0.0
        floor = ZERO_FLOOR * (slopes if slopes > 0 else float(theta.max()))
        den = np.maximum(c - err, floor)
        if not np.all(den > 0) or not np.all(np.isfinite(err)):
            return math.inf
        return float((err / den).max())


class ProxBound:
    """The ``prox_gradient`` criterion (l1; module docstring)."""

    name = "prox_gradient"

    def __init__(self, hess, n: float, rms_y: float):
        ev = np.linalg.eigvalsh(np.asarray(hess, dtype=np.float64))
        self.k = len(ev)
        self.eta = sums_accuracy(n)
        self.lmax = float(ev[-1])
        self.lmin = float(ev[0]) - self.eta * self.lmax  # the true λmin is at least this
        self.grad_scale = math.sqrt(max(self.lmax, 0.0)) * rms_y

    def bound(self, params, new_params, rate: float, grad_error: float = 0.0) -> float:
        q = max(abs(1 - rate * self.lmin), abs(1 - rate * self.lmax))
        if q >= 1:
            return math.inf
        theta = np.asarray(params[:self.k], dtype=np.float64)
        step = float(np.linalg.norm((np.asarray(new_params[:self.k], dtype=np.float64) - theta)))
        dist = (step + rate * grad_error) / (1 - q)
        size = float(np.linalg.norm(theta)) - dist
        return dist / size if size > 0 else math.inf

    def grad_error(self, params) -> float:
        return sums_error(self.eta, self.lmax, self.grad_scale, params[:self.k])


#: ``LocalBound`` certifies nothing past this x = R·λ/√μ (the bound's factor
#: −ln(1 − x)/x grows without limit as x → 1).
LOCAL_X_MAX = 0.5
#: Roundings per dimension and unit of κ of a backward-stable solve's result (LU or
#: Cholesky with partial pivoting: a generous constant).
SOLVE_ROUNDINGS = 8
#: Below this x (near the minimum) ``LocalBound`` also bounds each coefficient's error
#: coordinate by coordinate (``_first_order``) and keeps the smaller.
ELEMENTWISE_X = 0.1


class LocalBound:
    """The ``local_curvature`` criterion: losses with |ℓ'''| ≤ ℓ'' (logistic).

    For such a loss the Hessian cannot fall fast along a segment: with R = max‖x̃ᵢ‖ over
    the rows (x̃ = [xs, 1]) and v = θ* − θ, t = ‖v‖, ``F''(θ + s·v) ⪰ e^{−R·t·s}·F''(θ)``
    (Bach 2010, "Self-concordant analysis for logistic regression", Prop. 1). With
    H = F''(θ) measured by one pass, μ = λmin(H) and λ = ‖∇F(θ)‖ in the norm of H⁻¹,
    integrating ∇F(θ*) − ∇F(θ) = ∫ F''(θ + s·v)·v ds against v gives
    ``‖v‖_H·(1 − e^{−x'})/x' ≤ λ`` with x' = R·‖v‖_H/√μ, hence for x = R·λ/√μ < 1:

        ‖θ − θ*‖_H ≤ a = λ·(−ln(1 − x))/x        (≤ 1.39·λ for x ≤ ½)

    and each reported coefficient c = uᵀθ is off by at most √(uᵀH⁻¹u)·a. The relative
    error, the zero floor and the float64 terms are those of ``CoefficientBound``; H's
    own rounding enters through the factor 1/(1 − κ·η). Past x = ``LOCAL_X_MAX`` the
    bound is infinite: the point is too far from the minimum to say.

    ``curvature(params) -> (H, R²)`` is the pass (H with l2, in the training space).
    Until the first pass the screen estimates from ``upper``, the Gram bound on the
    Hessian (optimistic, so the first pass comes early); after it, from the last pass's
    bound scaled by how much the gradient shrank since.
    """

    name = "local_curvature"

    def __init__(self, upper, center, scale, fit_intercept: bool, n: float, curvature=None, grad_scale: float = 0.0):
        self.d = len(scale)
        self.k = self.d + int(fit_intercept)
        self.fit_intercept = fit_intercept
        self.ratio = np.asarray(center, dtype=np.float64) / np.asarray(scale, dtype=np.float64)
        self.eta = sums_accuracy(n)
        self.curvature = curvature
        self.certifiable = True
        self.grad_scale = grad_scale
        if upper is not None:  # descent's screen (Newton measures H in every pass: ``certify``)
            upper = np.asarray(upper, dtype=np.float64)
            self.lmax = float(np.linalg.eigvalsh(upper)[-1])
            self._w_upper = self._w(upper)
        self._last = None  # (gradient norm + its error, bound) at the last pass
        self._measured = None  # (params, grads, H, x) of the last pass whose bound held
        self.passes = 0
        self.row_terms = None  # the terms of a row's η where fewer than the parameters (levels)
        self._point = None  # what ``after_step`` needs from the last ``certify``
        self.sum_roundings = PAIRWISE_ROUNDINGS  # per gradient coordinate (``newton_gradient_error``)
        self.row_unit = U  # the roundoff a row's terms are computed with
        self.hess_eta = self.eta  # the Hessian's rounding per entry, against its magnitudes

    def _w(self, hess):
        """√(uᵀH⁻¹u) for each reported coefficient's u, times ‖g‖'s factor 1/√μ."""
        ev = np.linalg.eigvalsh(hess)
        if ev[0] <= 0:
            return np.full(self.k, math.inf)
        return np.sqrt(np.einsum("ij,ij->j", self.u, np.linalg.solve(hess, self.u))) / math.sqrt(ev[0])

    # The same reported coefficients, rounding and relative error as CoefficientBound.
    coefficients = CoefficientBound.coefficients
    rounding = CoefficientBound.rounding
    relative = CoefficientBound.relative

    def grad_error(self, params) -> float:
        return sums_error(self.eta, self.lmax, self.grad_scale, params[:self.k])

    def inverse_norms(self, U) -> np.ndarray:
        """‖H⁻¹u‖ for each column u of U, for the true H from the computed one (‖H⁻¹‖
        grows by 1/(1 − κη) at most): times ‖∇J‖ plus its rounding, a bound on the
        error of the linear function uᵀθ of the training-space parameters."""
        return np.linalg.norm(np.linalg.solve(self._hess, U), axis=0) / (1.0 - self._kappa_eta) * (1.0 + 1e-6)

    def screen(self, params, grad_norm: float, tol: float) -> tuple[bool, bool]:
        err = self.grad_error(params)
        stalled = grad_norm <= err
        if self._last is None:
            estimate = self._upper_estimate(params, grad_norm + err)
        else:
            g0, b0 = self._last
            if math.isfinite(b0):
                estimate = b0 * (grad_norm + err) / g0
            else:  # too far to say at the last pass: look again once the gradient shrank 4 ×
                estimate = self._upper_estimate(params, grad_norm + err) if grad_norm + err <= g0 / 4 else math.inf
        return stalled or estimate <= tol, stalled

    def _upper_estimate(self, params, grad_norm: float) -> float:
        """The relative error the Gram bound on the Hessian suggests (optimistic)."""
        c = np.abs(self.coefficients(params))
        return float((self._w_upper * grad_norm / np.maximum(c, 1e-300)).max())

    def bound(self, params, grads, grad_error: float) -> float:
        hess, radius2 = self.curvature(params)
        self.passes += 1
        g = np.asarray(grads[:self.k], dtype=np.float64)
        hess = np.asarray(hess, dtype=np.float64)
        bound, x = self.certify(params, g, grad_error, DenseHessian(hess), radius2)
        self._last = (float(np.linalg.norm(g)) + grad_error, bound)
        self._measured = (params, grads, hess, x) if math.isfinite(bound) else None
        return bound

    def newton_step(self, params, grads) -> np.ndarray | None:
        """The damped Newton step −H⁻¹∇F/(1 + x) from the Hessian the last ``bound``
        measured at these very ``params`` (None where it measured none, or too far from
        the minimum for its bound to hold). Where the bound holds (x < ½) the log-loss is
        close to its quadratic model and the step gains digits quadratically; the damping
        keeps every step a descent one (Bach 2010, Prop. 5)."""
        if self._measured is None or self._measured[0] is not params or self._measured[1] is not grads:
            return None
        _, _, hess, x = self._measured
        self._last = None  # the next screen looks afresh: the point moves far in one step
        step = np.zeros_like(params)
        step[:self.k] = -np.linalg.solve(hess, np.asarray(grads[:self.k], dtype=np.float64)) / (1.0 + x)
        return step

    def certify(self, params, g, grad_error: float, hess, radius2: float, errors=None) -> tuple[float, float]:
        """(the bound, x = R·λ/√μ) at ``params`` from the gradient ``g`` (with its rounding
        ``grad_error``; ``errors``: per coordinate), the Hessian ``hess`` (``hessians``)
        and max ‖x̃‖² ``radius2`` measured there; x is inf where H is too ill-conditioned
        to say.

        The bound holds in any coordinates φ = S⁻¹θ with S diagonal: the rows become Sx̃,
        H becomes SHS, and the Newton decrement λ and each uᵀH⁻¹u stay as they are. With
        S = diag(H)^(−1/2) (Jacobi) the levels of a categorical column, whose diagonal
        entries are their small shares of the rows, no longer set μ: the gradient's
        rounding term ‖S·e‖/√μ_S (per-coordinate errors e) is then far below ‖e‖/√μ.
        ``R_S² = radius2 / min diag(H)`` bounds every ‖Sx̃‖²."""
        decrement = max(float(g @ hess.solve(g)), 0.0)  # gᵀH⁻¹g: the same in any coordinates
        lmin, lmax = hess.extremes()
        best = _local(lmin, lmax * self.hess_eta, decrement, grad_error, radius2)  # ‖δH‖ ≤ η·λmax
        if errors is not None:  # also in Jacobi coordinates (below); the smaller bound holds
            best = min(best, _jacobi_radius(hess, decrement, errors, radius2, self.hess_eta))
        a, x, grow = best
        self._point = None
        if not math.isfinite(a):
            return math.inf, x
        spread = np.sqrt(self._coefficient_quads(hess) * grow)
        err = spread * a
        if errors is not None and x < ELEMENTWISE_X:
            first, carried = self._first_order(hess, g, errors, spread, a, x, grow)
            err = np.minimum(err, first)
            self._point = (params, lmin, lmax, spread, a, x, grow, carried)
        return self.relative(params, err + self.rounding(params)), x

    def after_step(self, params, step) -> float:
        """A bound on the relative error of θ + ``step``, the Newton step −H⁻¹g from the
        point ``certify`` just measured (inf where it took no first-order bound there), with
        no pass at θ + step. With v = θ* − θ, g_true = −H̄·v (``_first_order``) and the
        computed step ŝ = −H⁻¹g + δs:

            θ + ŝ − θ* = H⁻¹(H̄ − H)·v + H⁻¹·δg + δs

        so each coefficient is off by at most √(uᵀH⁻¹u)·ε·a (ε as in ``_first_order``) plus
        |uᵀH⁻¹|·e (the gradient's rounding, carried) plus the solve's own error (backward
        stable: ``SOLVE_ROUNDINGS``·k·u·κ·‖ŝ‖) and the rounding of θ + ŝ. Near the
        minimum ε·a is of the order of the error squared: the step's result is certified
        from the pass that computed it, and Newton's last pass is saved."""
        if self._point is None or self._point[0] is not params:
            return math.inf
        _, lmin, lmax, spread, a, x, grow, carried = self._point
        eps = _movement(x, grow)
        if eps >= 1:
            return math.inf
        step = np.asarray(step[:self.k], dtype=np.float64)
        solve = SOLVE_ROUNDINGS * self.k * U * (lmax / lmin) * float(np.linalg.norm(step)) if lmin > 0 else math.inf
        new = np.asarray(params, dtype=np.float64).copy()
        new[:self.k] += step
        norm = float(np.linalg.norm(self.u_intercept)) if self.fit_intercept else 1.0
        err = (spread * eps * a + carried) * (1.0 + 1e-6) + solve * max(norm, 1.0)
        stored = U * np.abs(new[:self.k])  # θ + ŝ rounded to float64, carried into each coefficient
        if self.fit_intercept:
            stored[self.d] = U * (abs(new[self.d]) + np.abs(self.ratio) @ np.abs(new[:self.d]))
        return self.relative(new, err + stored + self.rounding(new))

    def _first_order(self, hess, g, errors, spread, a: float, x: float, grow: float) -> tuple:
        """(each reported coefficient's error, |uᵀH⁻¹|·e of each), coordinate by coordinate rather than through
        ‖θ − θ*‖_H. With v = θ* − θ and H̄ = ∫₀¹ F''(θ + s·v) ds, 0 = ∇F(θ*) = g_true + H̄·v,
        so uᵀv = −uᵀH⁻¹g_true − uᵀ(H̄⁻¹ − H⁻¹)·g_true, where g_true = g + δg, |δg| ≤ e:

        - |uᵀH⁻¹g| + |uᵀH⁻¹|·e: the step still to take and the gradient's rounding carried
          through H⁻¹ entry by entry (a level's own rows, not every level's);
        - H̄ is within a factor 1 ± ε of the computed H, ε = (x + κη)/(1 − x) (Bach: the
          Hessian moves by at most e^{±R·‖v‖} ≤ (1 − x)^{∓1} along v; κη its rounding,
          in ``grow``), so the last term is at most √(uᵀH⁻¹u)·ε/(1 − ε)·‖g_true‖_{H⁻¹},
          and ‖g_true‖_{H⁻¹} = ‖H̄·v‖_{H⁻¹} ≤ (1 + ε)·a, ``a`` ≥ ‖v‖_H."""
        g = np.asarray(g, dtype=np.float64)
        e = np.asarray(errors, dtype=np.float64)[:self.k]
        step, carried = np.abs(hess.solve(g)), hess.abs_inverse_times(e)
        if self.fit_intercept:  # b = u_bᵀθ: its own row of H⁻¹
            step[self.d] = abs(float(hess.solve(self.u_intercept) @ g))
            carried[self.d] = hess.abs_inverse_row(self.u_intercept, e)
        eps = _movement(x, grow)
        if eps >= 1:
            return np.full(self.k, math.inf), carried
        # ‖g_true‖_{H⁻¹} = ‖H̄·v‖_{H⁻¹} ≤ (1 + ε)·‖v‖_H ≤ (1 + ε)·a
        tail = spread * (eps / (1.0 - eps)) * (1.0 + eps) * a
        return ((step + carried) * grow + tail) * (1.0 + 1e-6), carried

    def _coefficient_quads(self, hess) -> np.ndarray:
        """uᵀH⁻¹u for each reported coefficient's u (``coefficient_map``): the diagonal of
        H⁻¹, and the intercept's own (no k × k matrix for a ``BlockHessian``)."""
        out = hess.inverse_diagonal()[:self.k]
        if self.fit_intercept:
            out[self.d] = hess.quad(self.u_intercept)
        return out

    @functools.cached_property
    def u(self) -> np.ndarray:
        return coefficient_map(self.k, self.d, self.ratio, self.fit_intercept)

    @property
    def u_intercept(self) -> np.ndarray:
        """The intercept's u: b = θ_b − Σ (center_j/σ_j)·θ_j."""
        u = np.zeros(self.k)
        u[:self.d] = -self.ratio
        u[self.d] = 1.0
        return u


def _movement(x: float, grow: float) -> float:
    """ε: H̄ (the Hessian along the way to θ*) is within a factor 1 ± ε of the computed H
    (Bach's e^{±R·‖v‖} ≤ (1 − x)^{∓1}, and κη, the computed H's rounding, in ``grow``)."""
    return (x + (1.0 - 1.0 / grow)) / (1.0 - x)


def _jacobi_radius(hess, decrement: float, errors, radius2: float, eta: float) -> tuple[float, float, float]:
    """``_radius`` in Jacobi coordinates (``LocalBound.certify``). H's rounding there: each
    entry's sum is within η of the magnitudes it adds, Σ w·ℓ''·|x̃_i·x̃_j| ≤ √(H_ii·H_jj), so
    each entry of S·δH·S is within η and ‖S·δH·S‖₂ ≤ η·√(the entries that are not 0)."""
    coords = jacobi(hess)
    if coords is None:
        return math.inf, math.inf, math.inf
    diag, s, lmin = coords
    err = float(np.linalg.norm(s * np.asarray(errors, dtype=np.float64)))
    return _local(lmin, math.sqrt(hess.entries) * eta, decrement, err, radius2 / float(diag.min()))


def _local(lmin: float, delta: float, decrement: float, grad_error: float, radius2: float):
    """(a ≥ ‖θ − θ*‖_H, x = R·λ/√μ, the growth of H⁻¹ from the computed H to the true one):
    Bach's bound from λmin, ‖δH‖ ≤ ``delta``, gᵀH⁻¹g, the gradient's rounding (in these
    coordinates) and max ‖x̃‖²; a is inf past ``LOCAL_X_MAX``."""
    kappa_eta = delta / lmin if lmin > 0 else math.inf
    grow = inverse_growth(kappa_eta)  # H⁻¹ of the true H from the computed one
    if not math.isfinite(grow):
        return math.inf, math.inf, math.inf
    mu = float(lmin) * (1.0 - kappa_eta)
    lam = math.sqrt(decrement * grow) + grad_error / math.sqrt(mu)
    x = math.sqrt(radius2) * lam / math.sqrt(mu)
    if x >= LOCAL_X_MAX:
        return math.inf, x, grow
    return lam * (-math.log1p(-x) / x if x > 0 else 1.0), x, grow

