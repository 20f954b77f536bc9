"""Per-block math in plain NumPy: no dask import here.

Two kinds of partial results, both in the shape of dask's own reductions (a chunk returns
sums and a count; one aggregate step divides once):

* ``BlockSums`` — what one partition contributes to the batch gradient at (m, b):
  ``(Σ err·x, Σ err, Σ err², n)`` with ``err = x·m + b − y``. Used each epoch by the
  ``stream`` strategy.
* ``Moments`` — n, column means and the co-moment matrix of ``Z = [X, y]``. Merged
  pairwise with the update of Chan, Golub & LeVeque, they are the sufficient statistics
  of squared loss: ``gram_sums`` turns them into the very same ``BlockSums`` for any
  (m, b), so the ``gram`` strategy needs one pass over the data for all epochs.

Features enter the gradient *standardized*: ``xs = (x − center) / scale`` (center 0 and
scale 1 when standardization is off), so the steps follow the gradient in the space where
training happens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .losses import SQUARED, Loss


class BlockSums(NamedTuple):
    """Partial sums of one block (or of several, once merged).

    grad : ndarray of shape (n_features,) — Σ ψ·xs (ψ = err for squared loss)
    err : float — Σ ψ
    loss : float — Σ of the reported per-row loss (err² for squared loss)
    n : int — number of rows (Σw with weights)
    """

    grad: np.ndarray
    err: float
    loss: float
    n: int


_scratch = threading.local()


def _scratch_like(z) -> np.ndarray:
    """A per-thread reused column-major array of ``z``'s shape. dask workers set
    MALLOC_TRIM_THRESHOLD_, which pins glibc's mmap threshold at 128 KiB: a fresh
    slice-sized temporary would be mapped and faulted in anew for every slice."""
    size = z.shape[0] * z.shape[1]
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = _scratch.buf = np.empty(size)
    return buf[:size].reshape(z.shape, order="F")


def scratch_vector(n: int) -> np.ndarray:
    """A per-thread reused vector of length n (``_scratch_like``'s reason), for the linear
    predictor of a slice; ``Loss.terms`` may overwrite it."""
    buf = getattr(_scratch, "vec", None)
    if buf is None or buf.size < n:
        buf = _scratch.vec = np.empty(max(n, SLICE_ROWS))
    return buf[:n]


def standardize_block(block, center, scale, y_center=0.0, out=None, weighted: bool = False):
    """``[(x − center)/scale, y − y_center]`` of one block (``[…, w]`` with the weight
    column kept as is when ``weighted``), shape unchanged.

    ``y_center`` (ȳ when centering) keeps y ≈ 1e6 ± 1 from costing digits in ``err``.
    ``out``: where to write (a scratch array for a slice that is used once), else new.
    """
    out = np.empty_like(block, dtype=np.float64) if out is None else out
    k = block.shape[1] - (2 if weighted else 1)
    np.subtract(block[:, :k], center, out=out[:, :k])
    out[:, :k] /= scale
    np.subtract(block[:, k], y_center, out=out[:, k])
    if weighted:
        out[:, -1] = block[:, -1]
    return out


def block_sums_std(zs, m, b_centered, loss: Loss = SQUARED, weighted: bool = False) -> BlockSums:
    """Gradient sums of one *standardized* block (see ``standardize_block``):
    ``(Σ w·ψ·xs, Σ w·ψ, Σ w·ℓ, Σw)`` at ``eta = xs·m + b``, with ψ and the reported
    loss ℓ from ``loss`` (for squared loss ψ = err and ℓ = err²); without weights
    w = 1 and Σw = n.

    Parameters
    ----------
    zs : ndarray of shape (n_rows, n_features + 1), or + 2 with a weight column
    m : ndarray of shape (n_features,)
    b_centered : float
        ``b − y_center``.
    """
    X, y, w = split_block(zs, weighted)
    eta = np.matmul(X, m, out=scratch_vector(X.shape[0]))
    eta += b_centered
    psi, total = loss.terms(eta, y, w)
    return BlockSums(X.T @ psi, float(psi.sum()), total, zs.shape[0] if w is None else float(w.sum()))


class SGDSums(NamedTuple):
    """One round of minibatch steps in one chunk (or several, once merged): the chunk
    models weighted by the chunk's rows, for parameter mixing.

    theta : Σ n_c·θ_c — each chunk's parameters after its steps
    average : Σ n_c·θ̄_c — each chunk's average of its iterates (ASGD), or zeros
    n : Σ n_c (Σw with weights)
    loss, rows : Σ of each batch's reported loss before its step, and its rows
    """

    theta: np.ndarray
    average: np.ndarray
    n: float
    loss: float
    rows: float


@dataclass(frozen=True)
class SGDPlan:
    """How a chunk runs its minibatch steps (``sgd_block``)."""

    batch: int  # rows per step
    seed: int
    epoch: int  # 1, 2, …
    round: int  # 0 … rounds − 1 within the epoch
    sync_every: int | None  # steps per round; None: the whole epoch
    rate: tuple  # (schedule name, eta0, power_t, step_size, gamma, l2 for "optimal")
    l2: float = 0.0
    l1: float = 0.0
    fit_intercept: bool = True
    average: bool = False


def sgd_block(zs, theta, index: int, plan: SGDPlan, loss: Loss = SQUARED, weighted: bool = False) -> SGDSums:
    """Minibatch steps over one *standardized* chunk from ``theta`` (training space).

    The chunk's rows are cut into consecutive batches of ``plan.batch`` rows (the last
    one shorter); each epoch visits them in an order drawn from (seed, epoch, chunk
    index), so the steps depend on the data and the seed only, never on the workers.
    A step at the batch's rows: θ ← θ − η_t·(Σ w·ψ·x̃ / Σw + l2·m), then soft
    thresholding by η_t·l1 (proximal SGD for lasso); t counts this chunk's steps from the
    first epoch.
    """
    from ..optimization.rates import schedule, soft_threshold

    X, y, w = split_block(aligned(zs), weighted)
    n, d = X.shape
    steps = -(-n // plan.batch) if n else 0
    order = np.random.default_rng([plan.seed, plan.epoch, index]).permutation(steps)
    first = 0
    if plan.sync_every:
        first = plan.round * plan.sync_every
        order = order[first:first + plan.sync_every]
    name, eta0, power_t, step_size, gamma = plan.rate
    rate_at = schedule(name, eta0, power_t=power_t, step_size=step_size, gamma=gamma, alpha=plan.l2)
    m, b = np.array(theta[:d], dtype=np.float64), float(theta[d])
    total = np.zeros(d + 1) if plan.average else None
    loss_sum = rows = 0.0
    t = (plan.epoch - 1) * steps + first
    for j in order:
        lo, hi = j * plan.batch, min((j + 1) * plan.batch, n)
        xb, yb = X[lo:hi], y[lo:hi]
        wb = None if w is None else w[lo:hi]
        eta = np.matmul(xb, m, out=scratch_vector(hi - lo))
        eta += b
        psi, part = loss.terms(eta, yb, wb)
        nb = (hi - lo) if wb is None else float(wb.sum())
        if nb <= 0:
            continue
        t += 1
        lr = rate_at(t)
        gm = xb.T @ psi / nb
        if plan.l2:
            gm += plan.l2 * m
        m -= lr * gm
        if plan.fit_intercept:
            b -= lr * float(psi.sum()) / nb
        if plan.l1:
            m = soft_threshold(m, lr * plan.l1)
        loss_sum += part
        rows += nb
        if total is not None:
            total[:d] += m
            total[d] += b
    weight = float(n if w is None else w.sum())
    end = np.append(m, b)
    avg = total / max(len(order), 1) if total is not None else np.zeros(d + 1)
    return SGDSums(weight * end, weight * avg, weight, loss_sum, rows)


def sgd_raw(block, theta, index: int, plan: SGDPlan, center, scale, y_center, loss: Loss = SQUARED,
            weighted: bool = False) -> SGDSums:
    """``sgd_block`` on a raw chunk, standardized first, in place: ``block`` is a chunk
    just read from its file, used once (a second chunk-sized array to fault in cost as
    much as the steps)."""
    zs = standardize_block(block, center, scale, y_center, block, weighted)
    return sgd_block(zs, theta, index, plan, loss, weighted)


def add_sgd(a: SGDSums, b: SGDSums) -> SGDSums:
    return SGDSums(a.theta + b.theta, a.average + b.average, a.n + b.n, a.loss + b.loss, a.rows + b.rows)


def block_sums(block, m, b, center, scale, y_center=0.0, loss: Loss = SQUARED, weighted: bool = False) -> BlockSums:
    """Gradient sums of one raw block at (m, b): ``block_sums_std`` of the block
    standardized on the fly.

    Parameters
    ----------
    block : ndarray of shape (n_rows, n_features + 1)
        Feature columns followed by the target column (then the weight, if ``weighted``).
    m : ndarray of shape (n_features,)
        Coefficients in the training (standardized) space.
    b : float
        Intercept in the training space.
    center, scale : ndarray of shape (n_features,)
    y_center : float

    Same bits as ``block_sums_std(standardize_block(...), m, b − y_center)``, which is
    what it computes, so cached standardized blocks and re-read raw ones agree exactly.
    """
    zs = standardize_block(block, center, scale, y_center, _scratch_like(block), weighted)
    return block_sums_std(zs, m, b - y_center, loss, weighted)


class CurvatureSums(NamedTuple):
    """The loss's curvature at (m, b), for losses that are not quadratic (``certify``).

    hess : ndarray (d + 1, d + 1) — Σ w·ℓ''(eta)·x̃x̃ᵀ with x̃ = [xs, 1]
    radius2 : float — max ‖x̃‖² over the rows (with w > 0)
    n : float — rows (Σw with weights)
    """

    hess: np.ndarray
    radius2: float
    n: float


#: Rows per slice of the curvature pass: big enough for BLAS, small enough that the
#: slice's temporaries stay in cache and are not faulted in afresh for every chunk.
CURVATURE_ROWS = 65536


def block_curvature_std(zs, m, b_centered, loss: Loss, weighted: bool = False) -> CurvatureSums:
    """``CurvatureSums`` of one standardized block at ``eta = xs·m + b``, slice by slice
    (``CURVATURE_ROWS``): Σ h·xs·xsᵀ, Σ h·xs and Σ h make up H over x̃ = [xs, 1]."""
    X, y, w = split_block(zs, weighted)
    n, d = X.shape
    hess = np.zeros((d + 1, d + 1))
    r2 = 0.0
    for lo in range(0, n, CURVATURE_ROWS):
        hi = min(lo + CURVATURE_ROWS, n)
        xs = X[lo:hi]
        eta = np.matmul(xs, m, out=scratch_vector(hi - lo))
        eta += b_centered
        h = loss.second(eta, y[lo:hi])
        if w is not None:
            h *= w[lo:hi]
        xh = xs * h[:, None]
        hess[:d, :d] += xh.T @ xs
        hess[:d, d] += xh.sum(axis=0)
        hess[d, d] += h.sum()
        rows = xs if w is None else xs[w[lo:hi] > 0]
        if rows.shape[0]:
            r2 = max(r2, float(np.einsum("ij,ij->i", rows, rows).max()) + 1.0)
    hess[d, :d] = hess[:d, d]
    return CurvatureSums(hess, r2, n if w is None else float(w.sum()))


def block_curvature(block, m, b, center, scale, y_center, loss: Loss, weighted: bool = False) -> CurvatureSums:
    """``block_curvature_std`` of a raw block, standardized on the fly."""
    zs = standardize_block(block, center, scale, y_center, _scratch_like(block), weighted)
    return block_curvature_std(zs, m, b - y_center, loss, weighted)


def add_curvature(a: CurvatureSums, b: CurvatureSums) -> CurvatureSums:
    return CurvatureSums(a.hess + b.hess, max(a.radius2, b.radius2), a.n + b.n)


def target_values(block, loss: Loss, weighted: bool = False) -> tuple[int, tuple]:
    """(count, up to 5 distinct values) of the targets ``loss`` refuses in one block."""
    _, y, _ = split_block(block, weighted)
    bad = loss.check_target(y)
    if bad is None or bad.size == 0:
        return 0, ()
    return int(bad.size), tuple(float(v) for v in np.unique(bad)[:5])


def add_target_values(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], tuple(sorted(set(a[1]) | set(b[1]), key=lambda v: (v != v, v)))[:5]


def add_sums(a: BlockSums, b: BlockSums) -> BlockSums:
    """Merge two partial sums; associative, so any fixed tree gives fixed bits."""
    return BlockSums(a.grad + b.grad, a.err + b.err, a.loss + b.loss, a.n + b.n)


class Moments(NamedTuple):
    """Sufficient statistics of ``Z = [X, y]`` (k = n_features + 1 columns).

    n : int
    mean : ndarray of shape (k,)
    comoment : ndarray of shape (k, k) — Σ (z − mean)(z − mean)ᵀ
    """

    n: int
    mean: np.ndarray
    comoment: np.ndarray

    def finite(self) -> bool:
        """No NaN or ±inf in the means or co-moments (bad values, or squares that overflow)."""
        return bool(np.isfinite(self.mean).all() and np.isfinite(self.comoment).all())


#: Rows per slice for passes that add up over rows (moments, metrics, gradient sums): a
#: slice of a few columns and its shifted or standardized copy stay in the CPU cache.
SLICE_ROWS = 8192


def aligned(block):
    """``block`` itself, or a copy in the same order at an aligned address. A block that
    moved between workers can arrive at an address that is no multiple of 8; NumPy then
    leaves BLAS for loops of its own whose sums round differently (two workers' loss
    curves differed in a last digit when a single cached block was stolen)."""
    if block.flags.aligned:
        return block
    return np.array(block, order="F" if block.flags.f_contiguous else "C")


def block_slices(block, rows: int = SLICE_ROWS):
    """A block's consecutive slices of ``rows`` rows (at least one, maybe empty)."""
    block = aligned(block)
    if block.shape[0] == 0:
        yield block
    for lo in range(0, block.shape[0], rows):
        yield block[lo:lo + rows]


def fold_slices(slices, func, combine, *args):
    """``func(slice, *args)`` folded left to right with ``combine``: for functions that
    add up over rows, the same value as on the whole block; the same bits whether the
    slices come from a cached block or straight from the file (``data.read_slices``)."""
    total = None
    for z in slices:
        part = func(z, *args)
        total = part if total is None else combine(total, part)
    return total


def fold_block(block, func, combine, *args):
    """``fold_slices`` over a block in memory."""
    return fold_slices(block_slices(block), func, combine, *args)


def block_slices_shifted(block, rows: int = SLICE_ROWS):
    """``(slice − shift, shift)`` for each of ``block_slices(block)``, with ``shift`` the
    mean of the first slice; each shifted slice is a reused scratch array."""
    shift = None
    for z in block_slices(block, rows):
        if shift is None:
            shift = z.mean(axis=0) if z.shape[0] else np.zeros(z.shape[1])
        yield np.subtract(z, shift, out=_scratch_like(z)), shift


def shifted_moments(pairs) -> Moments:
    """Moments from ``(z − shift, shift)`` slices (``block_slices_shifted`` or
    ``data.read_slices(shifted=True)``): with s = Σ(z − shift) and S = Σ(z − shift)(z − shift)ᵀ,
    mean = shift + s/n and comoment = S − s·sᵀ/n.

    The shifted-data algorithm: S − s·sᵀ/n cancels log10(1 + (mean − shift)²/σ²) digits,
    none when the first slice looks like the rest. Since the first slice is part of the
    data, σ² ≥ (rows/n)·(mean − shift)², so even a first slice far from all other rows
    costs at most log10(1 + n/rows) digits (under 2.3 for a 128 MiB chunk of 10
    columns). In exchange: one pass, and no mean and no centered copy per slice (the
    shift is subtracted while the slice is copied out of Arrow). Chunks are merged
    pairwise (``merge_moments``).
    """
    n, s, S, shift = 0, None, None, None
    for z, shift in pairs:
        if s is None:
            s, S = np.zeros(z.shape[1]), np.zeros((z.shape[1], z.shape[1]))
        s += z.sum(axis=0)
        S += z.T @ z
        n += z.shape[0]
    if n == 0:
        return Moments(0, np.zeros_like(s), np.zeros_like(S))
    return Moments(n, shift + s / n, S - np.outer(s, s) / n)


def block_moments(block, weighted: bool = False) -> Moments:
    """Moments of one block [X, y] (``shifted_moments``); of [X, y, w] with n = Σw when
    ``weighted``."""
    if weighted:
        return _weighted_moments(block)
    return shifted_moments(block_slices_shifted(block))


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Pairwise update of Chan, Golub & LeVeque (1979): stable for any split."""
    if a.n == 0:
        return b
    if b.n == 0:
        return a
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    comoment = a.comoment + b.comoment + np.outer(delta, delta) * (a.n * b.n / n)
    return Moments(n, mean, comoment)


def merge_all(moments: list[Moments]) -> Moments:
    """``merge_moments`` folded left to right over a list (file order: fixed bits)."""
    total = moments[0]
    for m in moments[1:]:
        total = merge_moments(total, m)
    return total


#: Up to this many features the gram gradient is evaluated in extended precision.
EXTENDED_MAX_FEATURES = 512


class Gram:
    """The whole dataset's ``BlockSums`` at any (m, b), from its moments alone.

    With ``xs̄`` the mean of the standardized features and ``ē = xs̄·m + b − ȳ``:
    ``Σ err·xs = n·ē·xs̄ + Cs·m − Csy``, ``Σ err = n·ē`` and
    ``Σ err² = n·ē² + mᵀCs·m − 2·mᵀCsy + Cyy``, where C are centered co-moments
    (scaled by ``scale``). Centering keeps large means from cancelling digits.

    Near the solution ``Cs·m − Csy`` is a small difference of large terms, and descent
    (heavy ball above all, which sums ~1/(1−β) gradients) turns its rounding noise into
    error along the flattest direction. The O(d²) work runs on the client, so for up to
    ``EXTENDED_MAX_FEATURES`` features it is done in ``np.longdouble`` (64-bit mantissa
    on x86-64; on platforms where it equals float64 nothing changes).
    """

    def __init__(self, mom: Moments, scaling: Standardizer):
        d = mom.mean.shape[0] - 1
        L = np.longdouble if d <= EXTENDED_MAX_FEATURES else np.float64
        scale = scaling.scale.astype(L)
        self.n = mom.n
        self.cxx = mom.comoment[:-1, :-1].astype(L) / np.outer(scale, scale)
        self.cxy = mom.comoment[:-1, -1].astype(L) / scale
        self.cyy = L(mom.comoment[-1, -1])
        self.xs_mean = (mom.mean[:-1].astype(L) - scaling.center) / scale
        self.y_mean = L(mom.mean[-1])
        self.dtype = L

    def sums(self, m, b) -> BlockSums:
        m = np.asarray(m).astype(self.dtype)
        n = self.n
        e_mean = self.xs_mean @ m + self.dtype(b) - self.y_mean
        cm = self.cxx @ m
        grad = n * e_mean * self.xs_mean + (cm - self.cxy)
        sq = n * e_mean * e_mean + (m @ cm - 2 * (m @ self.cxy) + self.cyy)
        # grad keeps the extended precision: the caller iterates in it (train.fit).
        return BlockSums(grad, float(n * e_mean), float(max(sq, 0)), n)


def gram_sums(mom: Moments, m, b, center, scale) -> BlockSums:
    """``Gram(mom, Standardizer(center, scale)).sums(m, b)`` (one-off use)."""
    return Gram(mom, Standardizer(np.asarray(center), np.asarray(scale))).sums(m, b)


class Standardizer(NamedTuple):
    """``xs = (x − center) / scale``; maps trained (m, b) back to original units.

    ``y_center`` (ȳ when centering) only improves the rounding of ``err``.
    """

    center: np.ndarray
    scale: np.ndarray
    y_center: float = 0.0

    @classmethod
    def identity(cls, d: int) -> Standardizer:
        return cls(np.zeros(d), np.ones(d))

    @classmethod
    def from_moments(cls, mom: Moments, fit_intercept: bool) -> Standardizer:
        """Mean/std scaling with an intercept; without one, scale by the root mean
        square and do not center (centering would imply an intercept)."""
        var = np.diag(mom.comoment)[:-1] / mom.n
        mean = mom.mean[:-1]
        if fit_intercept:
            return cls(mean.copy(), np.sqrt(var), float(mom.mean[-1]))
        return cls(np.zeros_like(mean), np.sqrt(var + mean * mean))

    def to_original(self, m, b):
        """(m, b) in original units, in the precision of the inputs."""
        m_orig = np.asarray(m) / self.scale
        return m_orig, b - self.center @ m_orig

    def to_training(self, m_orig, b_orig) -> tuple[np.ndarray, float]:
        m = np.asarray(m_orig) * self.scale
        return m, float(b_orig + self.center @ np.asarray(m_orig))


def hessian(mom: Moments, scaling: Standardizer, fit_intercept: bool, l2: float = 0.0) -> np.ndarray:
    """Hessian of ½·MSE + (l2/2)·‖m‖² in the training space, shape (d + 1, d + 1) or (d, d)."""
    n = mom.n
    cxx = mom.comoment[:-1, :-1] / np.outer(scaling.scale, scaling.scale)
    xs_mean = (mom.mean[:-1] - scaling.center) / scaling.scale
    hxx = cxx / n + np.outer(xs_mean, xs_mean) + l2 * np.eye(cxx.shape[0])
    if not fit_intercept:
        return hxx
    d = hxx.shape[0]
    h = np.empty((d + 1, d + 1))
    h[:d, :d] = hxx
    h[:d, d] = h[d, :d] = xs_mean
    h[d, d] = 1.0
    return h


class ErrorSums(NamedTuple):
    """Partial sums for evaluation metrics of a fixed model.

    abs_err, sq_err : float — Σ|err|, Σ err²
    n : int
    y_mean, y_m2 : float — mean of y and Σ (y − ȳ)², merged like ``Moments``
    """

    abs_err: float
    sq_err: float
    n: int
    y_mean: float
    y_m2: float


def split_block(z, weighted: bool = False):
    """``(X, y, w)`` views of a block ``[X, y]`` or ``[X, y, w]``; w is None unweighted."""
    if weighted:
        return z[:, :-2], z[:, -2], z[:, -1]
    return z[:, :-1], z[:, -1], None


def _error_sums(err, y, w=None, y_center: float = 0.0) -> ErrorSums:
    """Metric sums of residuals ``err`` of targets ``y``; with weights ``w``, the
    weighted sums (scikit-learn's sample_weight definitions) and n = Σw."""
    if w is None:
        n = y.shape[0]
        if n == 0:
            return ErrorSums(0.0, 0.0, 0, 0.0, 0.0)
        y_mean = float(y.mean())
        dev = y - y_mean
        return ErrorSums(float(np.abs(err).sum()), float(err @ err), n, y_mean + y_center, float(dev @ dev))
    total = float(w.sum())
    if y.shape[0] == 0 or total == 0:
        return ErrorSums(0.0, 0.0, 0, 0.0, 0.0)
    y_mean = float(w @ y) / total
    dev = y - y_mean
    return ErrorSums(float(w @ np.abs(err)), float(w @ (err * err)), total, y_mean + y_center, float(w @ (dev * dev)))


def block_errors(block, m, b, weighted: bool = False) -> ErrorSums:
    """Metric sums of one block for a model (m, b) in original units."""
    X, y, w = split_block(block, weighted)
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing predictions: the caller names the model
        return _error_sums(X @ m + b - y, y, w)


def block_errors_std(zs, m, b_centered, y_center, weighted: bool = False) -> ErrorSums:
    """``block_errors`` of a standardized block, for training-space (m, b − y_center)."""
    X, yc, w = split_block(zs, weighted)
    return _error_sums(X @ m + b_centered - yc, yc, w, y_center)


def add_errors(a: ErrorSums, b: ErrorSums) -> ErrorSums:
    """Sums add; y's mean and Σ(y − ȳ)² merge like any ``Moments``."""
    ya = Moments(a.n, np.array([a.y_mean]), np.array([[a.y_m2]]))
    yb = Moments(b.n, np.array([b.y_mean]), np.array([[b.y_m2]]))
    y = merge_moments(ya, yb)
    return ErrorSums(a.abs_err + b.abs_err, a.sq_err + b.sq_err, y.n, float(y.mean[0]), float(y.comoment[0, 0]))


def metrics(e: ErrorSums) -> dict:
    """mse, rmse, mae, r2, n — the same definitions as scikit-learn's metrics."""
    mse = e.sq_err / e.n
    r2 = 1.0 - e.sq_err / e.y_m2 if e.y_m2 > 0 else (1.0 if e.sq_err == 0 else 0.0)
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": e.abs_err / e.n, "r2": r2, "n": e.n}


def block_moments_and_errors(block, models, weighted: bool = False) -> tuple:
    """``(block_moments(block), [block_errors(block, m, b) for (m, b) in models])``:
    one read of a holdout block serves the gate and next night's statistics."""
    return block_moments(block, weighted), [block_errors(block, m, b, weighted) for m, b in models]


def add_moments_and_errors(a, b) -> tuple:
    return merge_moments(a[0], b[0]), [add_errors(x, y) for x, y in zip(a[1], b[1])]


# --------------------------------------------------------------------------- sample weights
# Weighted blocks carry the weight as their last column: [X, y, w]. The weighted sums
# replace the count n by Σw, so everything built on Moments and BlockSums (standardization,
# curvature, the gram formulas, the reductions) becomes weighted least squares unchanged.


def _weighted_moments(block) -> Moments:
    """Weighted moments of [X, y]: n = Σw, mean = Σw·z/Σw, comoment = Σ w (z − mean)(z − mean)ᵀ."""
    z, w = block[:, :-1], block[:, -1]
    total = float(w.sum())
    if block.shape[0] == 0 or total == 0:
        k = z.shape[1]
        return Moments(0, np.zeros(k), np.zeros((k, k)))
    mean = (w @ z) / total
    centered = z - mean
    return Moments(total, mean, (centered * w[:, None]).T @ centered)


# --------------------------------------------------------------------------- classification
#: ROC AUC from histograms of the linear predictor, in this many bins over ±AUC_RANGE.
AUC_BINS = 4096
AUC_RANGE = 16.0


class ClassSums(NamedTuple):
    """Partial sums for the metrics of a classifier at a threshold on its probability.

    loss : Σ w·ℓ (log-loss); brier : Σ w·(p − y)²; correct, tp, fp, fn : Σ w over rows;
    n : Σw; pos, neg : histograms (Σ w) of the linear predictor of positive and negative
    rows in ``AUC_BINS`` bins over ±``AUC_RANGE`` (the ends take everything beyond).
    """

    loss: float
    brier: float
    correct: float
    tp: float
    fp: float
    fn: float
    n: float
    pos: np.ndarray
    neg: np.ndarray


def block_classification(block, m, b, loss: Loss, threshold: float = 0.5, weighted: bool = False) -> ClassSums:
    """``ClassSums`` of one raw block for a model (m, b) in original units."""
    X, y, w = split_block(block, weighted)
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing predictions: the caller names the model
        eta = X @ m + b
    p = loss.predict(eta)
    bins = np.clip(((eta + AUC_RANGE) * (AUC_BINS / (2 * AUC_RANGE))).astype(np.int64), 0, AUC_BINS - 1)
    _, total = loss.terms(eta, y, w)  # may overwrite eta
    w = np.ones_like(y) if w is None else w
    label = p >= threshold
    pos = y > 0.5
    return ClassSums(total, float(w @ ((p - y) ** 2)), float(w @ (label == pos)), float(w @ (label & pos)),
                     float(w @ (label & ~pos)), float(w @ (~label & pos)), float(w.sum()),
                     np.bincount(bins[pos], w[pos], AUC_BINS), np.bincount(bins[~pos], w[~pos], AUC_BINS))


def add_class_sums(a: ClassSums, b: ClassSums) -> ClassSums:
    return ClassSums(*(x + y for x, y in zip(a, b)))


def class_metrics(s: ClassSums) -> dict:
    """log_loss, accuracy, precision, recall, brier, roc_auc with ``roc_auc_error``, n
    (scikit-learn's definitions, weighted by sample weights).

    ROC AUC counts, over pairs of a positive and a negative row, those ranked right plus
    half the ties. Pairs in different bins are ranked as their predictors are; pairs in
    one bin count one half whatever their order, so the histogram's AUC is within
    ``roc_auc_error`` = Σ_bins pos·neg / (2·P·N) of the exact one.
    """
    P, N = float(s.pos.sum()), float(s.neg.sum())
    below = np.concatenate(([0.0], np.cumsum(s.neg)[:-1]))
    if P > 0 and N > 0:
        auc = float(s.pos @ below + 0.5 * (s.pos @ s.neg)) / (P * N)
        auc_err = float(s.pos @ s.neg) / (2 * P * N)
    else:
        auc = auc_err = None
    return {"log_loss": s.loss / s.n, "accuracy": s.correct / s.n,
            "precision": s.tp / (s.tp + s.fp) if s.tp + s.fp else 0.0,
            "recall": s.tp / (s.tp + s.fn) if s.tp + s.fn else 0.0,
            "roc_auc": auc, "roc_auc_error": auc_err, "brier": s.brier / s.n, "n": s.n}


# --------------------------------------------------------------------------- inference
def row_sums(block, weighted: bool = False) -> tuple[int, float]:
    """(rows, Σ log w) of one block: what weighted least squares' summary needs beyond the
    moments (``inference.RowSums``)."""
    if not weighted:
        return block.shape[0], 0.0
    w = block[:, -1]
    return block.shape[0], float(np.log(w[w > 0]).sum())


def add_row_sums(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], a[1] + b[1]


def block_meat(block, m, b, fit_intercept: bool, weighted: bool = False) -> np.ndarray:
    """Σ w²·r²·x̃x̃ᵀ over one block for the model (m, b) in original units, x̃ = [x, 1]
    (or x without an intercept): the middle of HC1's sandwich (``inference``)."""
    X, y, w = split_block(block, weighted)
    r = X @ m + b - y
    if w is not None:
        r = r * w
    xa = np.column_stack([X, np.ones(X.shape[0])]) if fit_intercept else X
    xr = xa * r[:, None]
    return xr.T @ xr

