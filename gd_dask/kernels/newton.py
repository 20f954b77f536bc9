"""One Newton pass over a block, in plain NumPy (no dask import): the gradient sums, the
Hessian, what their rounding is relative to, and — at a pass that may be the last — the
model's metrics and Fisher's information at the same coefficients, so a certified model
needs no pass after its last step (``optimization.newton``).

Features enter standardized (``blocks.standardize_block``); with an offset or an exposure
the column after the features is not a feature but a term of the linear predictor
(``split_offset``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .blocks import _scratch_like, scratch_matrix, scratch_vector, split_block, standardize_block
from .compensated import dd_add, exact_dots
from .losses import Loss
from .metrics import ClassSums, DevianceSums, _error_sums, add_class_sums, add_family_errors, class_sums_of


def pairwise_gradient(X, psi) -> np.ndarray:
    """[Σ ψ·x_j ..., Σ ψ] of one slice, each a NumPy sum of one contiguous vector without an
    axis, which NumPy always adds pairwise: within ``certify.PAIRWISE_ROUNDINGS`` roundings
    of the terms' magnitudes (a BLAS product promises no order, hence no such bound)."""
    P = np.multiply(X, psi[:, None], out=scratch_matrix(X.shape, "products"))
    return np.array([P[:, j].sum() for j in range(X.shape[1])] + [psi.sum()])


class FinalSums(NamedTuple):
    """What a pass that may be the last adds (``block_newton_std(final=True)``).

    metrics : the metric sums at these coefficients — (``ErrorSums``, ``DevianceSums``) for
        a family with a deviance, ``ClassSums`` for a classifier
    info : ndarray (d + 1, d + 1) or None — Fisher's information Σ w·mu'²/V·x̃x̃ᵀ where it is
        not the Hessian (a non-canonical link; None: it is ``hess``)
    pearson : float — Σ w·(y − mu)²/V(mu)
    rows : float — rows (not Σw)
    loglik : ndarray (5,) — Σ w·y·eta, Σ w·mu, Σ w·log y, Σ w·y/mu, Σ w·log(y!) (NaN where
        the targets are not counts of a tabulated size): the log-likelihoods' terms
    tangents : ndarray (3, d + 1) or None — for a family, the derivatives along θ of
        Σ w·(mu − y)², Σ w·|mu − y| and Pearson's Σ w·(y − mu)²/mu^p (log link: dmu/deta =
        mu), so the metrics and the scale of a model one certified Newton step past this
        pass follow to first order (``jobs.training.newton_metrics``)
    """

    metrics: tuple
    info: np.ndarray | None
    pearson: float
    rows: float
    loglik: np.ndarray
    tangents: np.ndarray | None = None


class NewtonSums(NamedTuple):
    """Everything one Newton step needs at (m, b), from one pass (``block_newton_std``).

    grad, err, loss, n : as ``gradient.BlockSums``; the gradient's sums are those of a
        slice added pairwise (``pairwise_gradient``), then the slices' as double-doubles
        (``grad_lo`` holds the low parts), so what rounding is left is that of ψ itself
        and of one pairwise sum (``certify.newton_gradient_errors``)
    hess : ndarray (d + 1, d + 1) — Σ w·ℓ''·x̃x̃ᵀ, x̃ = [xs, 1]
    radius2 : float — max ‖x̃‖² over the rows (with w > 0)
    scale : ndarray (d + 1,) — Σ (|w·ψ| + w·(size of ψ's terms) + w·ℓ''·|x̃|·|θ|)·|x̃|:
        what the rounding of each row's ψ is relative to, eta's own rounding included
    bad_targets, bad_exposures : (count, up to 5 values) the loss or the log refuses
    constant : float — Σ w·``constant_terms(y)``, already in ``loss``, where the pass had
        ``data_terms`` (NaN otherwise: ``loss`` lacks it, and radius2 is 0)
    final : FinalSums or None
    y_terms : ndarray (3,) — the other sums of y alone a final pass reports, from a pass
        with ``data_terms`` (NaN otherwise; ``with_data_terms`` fills them in): Σ w·
        ``null_term(y)``, Σ w·log(y!) (Poisson), Σ w·log y (Gamma)
    """

    grad: np.ndarray
    err: float
    loss: float
    n: float
    hess: np.ndarray
    radius2: float
    scale: np.ndarray
    bad_targets: tuple
    bad_exposures: tuple
    constant: float = math.nan
    grad_lo: np.ndarray | None = None
    final: FinalSums | None = None
    y_terms: np.ndarray = np.full(3, math.nan)


def y_terms(y, w, loss: Loss) -> np.ndarray:
    """``NewtonSums.y_terms`` of a slice."""
    if loss.task == "classification":
        return np.zeros(3)
    ww = np.ones_like(y) if w is None else w
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.array([float(ww @ loss.null_term(y)),
                         log_factorials(y, ww) if loss.name == "poisson" else math.nan,
                         float(ww @ np.log(y)) if loss.name == "gamma" else 0.0])


def with_data_terms(s: NewtonSums, constant: float, radius2: float, terms) -> NewtonSums:
    """A pass without ``data_terms`` completed with the first pass's: the loss's constant
    terms, max ‖x̃‖², and in a final pass's sums the deviance's and the likelihood's terms
    of y alone (which that pass did not compute again)."""
    s = s._replace(loss=s.loss + constant, constant=constant, radius2=radius2, y_terms=terms)
    f = s.final
    if f is None or isinstance(f.metrics, ClassSums):
        return s
    errors, dev = f.metrics
    loglik = f.loglik.copy()
    loglik[4], loglik[2] = terms[1], terms[2]
    return s._replace(final=f._replace(metrics=(errors, dev._replace(dev=dev.dev + constant, sum_null=terms[0])),
                                       loglik=loglik))

def past_step(s: NewtonSums, step) -> NewtonSums:
    """A final pass's sums carried a step past its coefficients (``optimization.newton``
    ends there when that step's result is certified): the squared and absolute errors
    and Pearson's χ² to first order along their ``tangents``, the deviance to second
    order from the pass's own gradient and Hessian; off by the step's square (cube for
    the deviance), far below a rounding. Fisher's information stays the pass's. As it is
    where there is no step or nothing to carry (a classifier: accuracy and AUC do not
    follow a step, and Newton takes none past its pass)."""
    f = s.final
    if step is None or f is None or f.tangents is None:
        return s
    step = np.asarray(step, dtype=np.float64)
    t = f.tangents @ step
    errors, deviance = f.metrics
    errors = errors._replace(sq_err=errors.sq_err + float(t[0]), abs_err=errors.abs_err + float(t[1]))
    grad = np.append(s.grad, s.err)
    deviance = deviance._replace(dev=deviance.dev + float(grad @ step) + 0.5 * float(step @ s.hess @ step))
    return s._replace(final=f._replace(metrics=(errors, deviance), pearson=f.pearson + float(t[2])))


def split_offset(X, offset: str | None):
    """(features, offset per row or None) of a block's feature columns: with an offset
    ("add") or an exposure ("log", its log) the last column is not a feature."""
    if offset is None:
        return X, None
    col = X[:, -1]
    if offset != "log":
        return X[:, :-1], col
    with np.errstate(divide="ignore", invalid="ignore"):
        return X[:, :-1], np.log(col)


def exposures_refused(X, offset: str | None) -> tuple:
    """(count, up to 5 values) of the exposures (the column after the features) that are
    not positive."""
    if offset != "log":
        return 0, ()
    col = X[:, -1]
    return _bad(col[~(col > 0)])


def _bad(values) -> tuple:
    return (int(values.size), tuple(float(v) for v in np.unique(values)[:5])) if values.size else (0, ())


def block_newton_std(zs, m, b_centered, loss: Loss, weighted: bool = False, offset: str | None = None,
                     final: bool = False, data_terms: bool = True) -> NewtonSums:
    """``NewtonSums`` of one standardized block at ``eta = xs·m + b`` (+ the row's offset);
    ``final``: with ``FinalSums`` too; ``data_terms``: with what depends on the data alone
    (the loss's constant terms, the largest ‖x̃‖²), which a pass needs once."""
    X, y, w = split_block(zs, weighted)
    bad_exp = exposures_refused(X, offset)
    X, off = split_offset(X, offset)
    eta = np.matmul(X, m, out=scratch_vector(X.shape[0]))
    eta += b_centered
    ax = np.abs(X, out=scratch_matrix(X.shape, "abs"))
    size = ax @ np.abs(m)
    size += abs(b_centered)
    if off is not None:
        eta += off
        size += np.abs(off)
    keep = eta.copy() if final else None
    rows = newton_rows(y, w, eta, size, loss)
    s = numeric_sums(X, ax, y, w, rows, loss, data_terms)._replace(bad_exposures=bad_exp)
    return s._replace(final=_final(X, y, w, keep, loss, s.loss, s.y_terms)) if final else s


class Rows(NamedTuple):
    """A slice's per-row Newton terms: w·ψ, w·ℓ'', the size ψ's rounding is relative to;
    Σ w·loss (less its constant terms) and the targets the loss refuses."""

    psi: np.ndarray
    h: np.ndarray
    size: np.ndarray
    total: float
    bad_targets: tuple


def newton_rows(y, w, eta, size, loss: Loss) -> Rows:
    """``Rows`` at the linear predictor ``eta`` (overwritten), ``size`` holding |x̃|·|θ| (the
    size of eta's own rounding; it becomes the row's rounding size)."""
    bad = loss.check_target(y)
    bad = _bad(bad) if bad is not None else (0, ())
    psi, total, h, mag = loss.newton_terms(eta, y, w)
    size *= h
    size += mag
    if w is not None:
        h = h * w
        size *= w
    size += np.abs(psi)
    return Rows(psi, h, size, total, bad)


def numeric_sums(X, ax, y, w, rows: Rows, loss: Loss, data_terms: bool, indicators: int = 0,
                 psi_lo=None) -> NewtonSums:
    """``NewtonSums`` of the numeric features ``X`` (|X| in ``ax``) and the intercept from
    a slice's ``Rows``; ``indicators``: each row's one-hot entries besides (categorical
    columns), for the largest ‖x̃‖². ``psi_lo``: ψ's low parts (ψ computed in long
    double as ``rows.psi`` + ``psi_lo``), whose gradient is then summed exactly
    (``compensated.exact_dots``) rather than pairwise."""
    n, d = X.shape
    psi, h, size = rows.psi, rows.h, rows.size
    xh = np.multiply(X, h[:, None], out=scratch_matrix(X.shape, "weighted"))
    hess = np.empty((d + 1, d + 1))
    hess[:d, :d] = xh.T @ X
    hess[:d, d] = hess[d, :d] = X.T @ h
    hess[d, d] = h.sum()
    scale = np.append(ax.T @ size, size.sum())
    total, r2, constant = rows.total, 0.0, math.nan
    if data_terms:
        counted = X if w is None else X[w > 0]
        r2 = float(np.einsum("ij,ij->i", counted, counted).max()) + 1.0 + indicators if counted.shape[0] else 0.0
        c = loss.constant_terms(y)
        constant = 0.0 if c is None else float(c.sum() if w is None else w @ c)
        total += constant
    if psi_lo is None:
        g, g_lo = pairwise_gradient(X, psi), np.zeros(d + 1)
    else:
        g, g_lo = exact_dots(X, psi, psi_lo)
    return NewtonSums(g[:d], float(g[d]), total, n if w is None else float(w.sum()), hess, r2, scale,
                      rows.bad_targets, (0, ()), constant, g_lo,
                      y_terms=y_terms(y, w, loss) if data_terms else np.full(3, math.nan))


def _final(X, y, w, eta, loss: Loss, total: float, terms) -> FinalSums:
    """``FinalSums`` of a block at its linear predictor ``eta``; ``terms``: the sums of y
    alone (``y_terms``; NaN where the pass has no data terms: filled in later)."""
    ww = np.ones_like(y) if w is None else w
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        mu = loss.link.inverse(eta)
        dmu = mu - y
        sq = dmu * dmu
        v = loss.variance(mu)
        pearson = float(ww @ (sq / v))
        if loss.task == "classification":
            metrics = class_sums_of(eta, mu, y, w, total)
        else:
            metrics = (_error_sums(dmu, y, w), DevianceSums(total, float(ww.sum()), float(ww @ y), float(terms[0])))
        if loss.name == "poisson":  # only what each family's likelihood needs (``glm_summary``)
            logs = [float(ww @ (y * eta)), float(ww @ mu), 0.0, 0.0]
        elif loss.name == "gamma":
            logs = [0.0, 0.0, float(terms[2]), float(ww @ (y / mu))]
        else:
            logs = [0.0] * 4
    info = None
    if not loss.canonical:
        f = loss.fisher(eta) * ww
        d = X.shape[1]
        info = np.empty((d + 1, d + 1))
        xf = X * f[:, None]
        info[:d, :d] = xf.T @ X
        info[:d, d] = info[d, :d] = xf.sum(axis=0)
        info[d, d] = f.sum()
    loglik = np.array(logs + [float(terms[1])])
    tangents = None
    if loss.task != "classification":
        # d/dθ of Σ w·(mu − y)², Σ w·|mu − y|, Σ w·(y − mu)²/V(mu) (dmu/deta = mu), one
        # column-major row weight each: their sums over rows are contiguous.
        W = np.empty((len(y), 3), order="F")
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(dmu, mu, out=W[:, 0])
            np.multiply(W[:, 0], 2.0, out=W[:, 2])
            W[:, 2] -= loss.power * sq
            W[:, 2] /= v
            W[:, 0] *= 2.0
            np.sign(dmu, out=W[:, 1])
            W[:, 1] *= mu
            if w is not None:
                W *= w[:, None]
        tangents = np.concatenate([(X.T @ W).T, W.sum(axis=0)[:, None]], axis=1)
    return FinalSums(metrics, info, pearson, float(len(y)), loglik, tangents)


#: Σ log(y!) is tabulated for count targets up to this value (larger: not reported).
MAX_FACTORIAL = 1 << 20
_log_factorial = np.zeros(1)


def log_factorials(y, w) -> float:
    """Σ w·log(y!) for integer y in [0, ``MAX_FACTORIAL``], else NaN (Poisson's likelihood)."""
    global _log_factorial
    if y.size == 0:
        return 0.0
    top = float(y.max())
    if not (y.min() >= 0 and top <= MAX_FACTORIAL and np.all(y == np.floor(y))):
        return math.nan
    if _log_factorial.size <= top:
        size = int(top) + 1
        _log_factorial = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, size, dtype=np.float64)))))
    return float(w @ _log_factorial[y.astype(np.int64)])


def block_newton(block, m, b, center, scale, y_center, loss: Loss, weighted: bool = False,
                 offset: str | None = None, final: bool = False, data_terms: bool = True) -> NewtonSums:
    """``block_newton_std`` of a raw block, standardized on the fly (``center`` and
    ``scale`` cover the offset's column too: 0 and 1)."""
    zs = standardize_block(block, center, scale, y_center, _scratch_like(block), weighted)
    return block_newton_std(zs, m, b - y_center, loss, weighted, offset, final, data_terms)


def _add_bad(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], tuple(sorted(set(a[1]) | set(b[1]), key=lambda v: (v != v, v)))[:5]


def add_newton(a: NewtonSums, b: NewtonSums) -> NewtonSums:
    """Merge two passes' sums, the gradient's as double-doubles."""
    final = None
    hi, lo = dd_add(np.append(a.grad, a.err), a.grad_lo, np.append(b.grad, b.err), b.grad_lo)
    if a.final is not None and b.final is not None:
        fa, fb = a.final, b.final
        metrics = add_class_sums(fa.metrics, fb.metrics) if isinstance(fa.metrics, ClassSums) else \
            add_family_errors(fa.metrics, fb.metrics)
        info = None if fa.info is None else fa.info + fb.info
        tangents = None if fa.tangents is None else fa.tangents + fb.tangents
        final = FinalSums(metrics, info, fa.pearson + fb.pearson, fa.rows + fb.rows, fa.loglik + fb.loglik, tangents)
    return NewtonSums(hi[:-1], float(hi[-1]), a.loss + b.loss, a.n + b.n, a.hess + b.hess,
                      max(a.radius2, b.radius2), a.scale + b.scale, _add_bad(a.bad_targets, b.bad_targets),
                      _add_bad(a.bad_exposures, b.bad_exposures), a.constant + b.constant, lo, final,
                      a.y_terms + b.y_terms)
