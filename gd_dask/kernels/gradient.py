"""The gradient of one block in plain NumPy (no dask import here), its curvature sums, and
the target's values (what a family's label rule checks).

Two kinds of partial results, both in the shape of dask's own reductions (a chunk returns
sums and a count; one aggregate step divides once):

* ``BlockSums`` — what one partition contributes to the batch gradient at (m, b):
  ``(Σ err·x, Σ err, Σ err², n)`` with ``err = x·m + b − y``. Used each epoch by the
  ``stream`` strategy.
* ``Moments`` (``kernels.moments``) — n, column means and the co-moment matrix of
  ``Z = [X, y]``. Merged pairwise with the update of Chan, Golub & LeVeque, they are the
  sufficient statistics of squared loss: ``gram_sums`` turns them into the very same
  ``BlockSums`` for any (m, b), so the ``gram`` strategy needs one pass over the data for
  all epochs.

Features enter the gradient *standardized*: ``xs = (x − center) / scale`` (center 0 and
scale 1 when standardization is off), so the steps follow the gradient in the space where
training happens.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .blocks import _scratch_like, scratch_vector, split_block, standardize_block
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

