"""Moments of a block (shifted, merged in a fixed order by Chan's formulas), the Gram
matrix solved from them, the standardizer, the Hessian, and the HC1 meat for robust
standard errors."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .blocks import block_slices_shifted, split_block
from .gradient import BlockSums


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
