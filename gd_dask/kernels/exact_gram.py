"""The Gram matrix of the raw rows to about 24 digits, from float64 matrix products:
iterative refinement's one pass over the data (least squares, unweighted). Pure NumPy on
one slice of rows; no dask import.

Refinement needs the gradient ``Σ r·x`` at points ever closer to the solution, far more
precisely than float64 sums give it. For least squares that gradient is linear in the
Gram matrix ``G = Z̃ᵀZ̃`` of ``Z̃ = [X − c_x, y − c_y, 1]`` (any float64 shift c; the
training means keep the sums as small as the residuals): with
``v = [m, −1, b + c_x·m − c_y]``, ``Σ r·(x − c_x) = (G·v)_x`` and ``Σ r = (G·v)_1``. So one
pass that gets G right far below float64's rounding serves every refinement round after
it, on the client, in O(k²). (The residual pass, ``compensated.refine_sums``, costs a pass
per round and about twice the time per row; it remains for weighted rows.)

G comes from BLAS, error-free where it matters (Ozaki, Ogita, Oishi & Rump 2012,
"Error-free transformations of matrix multiplication by using fast routines of matrix
multiplication and its applications", Numer. Algorithms 59):

* ``z − c = R + D`` exactly (Knuth's two-sum);
* R is split into pieces ``P₁ + P₂ + rest``: P₁ holds the top ``b`` bits relative to the
  column's largest magnitude 2^e in the slice, P₂ the next ``b``; D joins the rest, which
  is below about 2^(e−2b−1);
* a product of two pieces is an integer below 2^(2b) in its unit, so a slice of 2^s rows
  sums them exactly whenever 2b + s ≤ 53: with 32,768-row slices b = 19, and ``P₁ᵀP₁``,
  ``P₁ᵀP₂``, ``P₂ᵀP₂`` come out of BLAS exact, in whatever order it adds;
* only ``P₁ᵀrest`` and ``P₂ᵀrest`` round (γₙ of magnitudes 2^-2b below the column scales'),
  and ``restᵀrest`` (below 2^-4b of them) is left out; the pieces add up in double-double,
  smallest first.

Every result carries an explicit bound on its absolute error, elementwise, built from the
column scales as it is computed (no analysis of the reduction tree needed): rounding of
the inexact products at γₙ, the omitted term, and each double-double addition at
4u²·(|a| + |b|). Against the scales' sums ``mag`` that is about 2^-78 in the worst case
(2^-81 with slices of 8,192 rows).

The cost is five Gram-sized float64 products per slice plus a few in-place passes over
it (about 10 × the float64 moments' arithmetic, 2 ms for 8,192 × 22). Where a column's
exponents would underflow or overflow the pieces (magnitudes beyond about 1e±120), the
slice is marked inexact and the caller falls back to the residual pass.
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numpy as np

from .compensated import PointGradient, U, dd_add, dd_sum, two_prod, two_sum

#: Per double-double addition: absolute error at most this times (|a| + |b|) (Knuth's
#: two-sum of the leading parts, one rounding of the trailing ones; 3u² with slack).
DD_ADD = 4 * U * U
#: Column exponents outside [−MAX_EXP, MAX_EXP] are not split (products would underflow
#: or their sums overflow).
MAX_EXP = 400
#: Pieces each column is split into (the rest rounds in its products with them).
PIECES = 2

_LOCAL = threading.local()


class ExactGram(NamedTuple):
    """``G = Z̃ᵀZ̃`` for ``Z̃ = [X − c_x, y − c_y, 1]`` as ``hi + lo``; ``err`` bounds
    |G − (hi + lo)| elementwise; ``mag`` bounds Σ|z̃_i·z̃_j| (the sums of the slices'
    column scales); ``shift`` is ``c = [c_x, c_y]``; ``exact`` is False where some slice
    could not be split."""

    hi: np.ndarray
    lo: np.ndarray
    err: np.ndarray
    mag: np.ndarray
    shift: np.ndarray
    exact: bool = True

    def point_gradient(self, m_hi, m_lo, b_hi: float, b_lo: float) -> PointGradient:
        """The gradient's sums at m = m_hi + m_lo, b = b_hi + b_lo, about the shift:
        ``Σ r·(x − c_x)`` and ``Σ r`` are ``G·v`` in double-double with
        ``v = [m, −1, b + c_x·m − c_y]`` (r = x·m + b − y = x̃·m − ỹ + b̃); their error is
        G's own (``err·|v|``), the products' and sums' roundings, and b̃'s."""
        m_hi, m_lo = np.asarray(m_hi, dtype=np.float64), np.asarray(m_lo, dtype=np.float64)
        d = len(m_hi)
        c_x, c_y = self.shift[:d], float(self.shift[d])
        # b̃ = b + c_x·m − c_y, in double-double: a few ε² of the magnitudes it adds.
        p, pe = two_prod(c_x, m_hi)
        parts_hi = np.concatenate([[b_hi, -c_y], p])
        parts_lo = np.concatenate([[b_lo, 0.0], pe + c_x * m_lo])
        bt_hi, bt_lo = dd_sum(*two_sum(parts_hi, parts_lo))
        depth = math.ceil(math.log2(len(parts_hi)))
        bt_err = (8 * U * U + DD_ADD * depth) * float(np.abs(parts_hi).sum()) * (1 + 1e-10)
        v_hi = np.concatenate([m_hi, [-1.0, float(bt_hi)]])
        v_lo = np.concatenate([m_lo, [0.0, float(bt_lo)]])
        gv_hi, gv_lo, gv_err = _dd_matvec(self.hi, self.lo, self.err, v_hi, v_lo)
        gv_err = gv_err + bt_err * (np.abs(self.hi[:, -1]) + self.err[:, -1])
        # Σ r² = vᵀGv, only reported (as the pass's mse): float64 is plenty; never below 0.
        sq = max(0.0, float(v_hi @ gv_hi + v_hi @ gv_lo + v_lo @ gv_hi))
        return PointGradient(gv_hi[:d], gv_lo[:d], float(gv_hi[-1]), float(gv_lo[-1]), gv_err[:d],
                             float(gv_err[-1]), sq, float(self.hi[-1, -1] + self.lo[-1, -1]), passes=0,
                             center=c_x)


def _dd_matvec(hi, lo, err, v_hi, v_lo):
    """``(hi + lo)·(v_hi + v_lo)`` row by row in double-double, and a bound on its error."""
    p, pe = two_prod(hi, v_hi[None, :])
    p, low = two_sum(p, pe + (hi * v_lo[None, :] + lo * v_hi[None, :]))
    terms = np.abs(hi) @ (np.abs(v_hi) + np.abs(v_lo))
    s_hi, s_lo = dd_sum(p.T, low.T)
    depth = math.ceil(math.log2(max(hi.shape[1], 2)))
    # Each product: ``pe`` exact, the two cross terms and their sums a few u² of |G||v|
    # (the omitted lo·lo below u⁴); the pairwise sum: DD_ADD per level of what it adds.
    # (1 + 1e-10) covers the float64 rounding of the bound's own arithmetic.
    bound = (err @ (np.abs(v_hi) + np.abs(v_lo)) + (8 * U * U + DD_ADD * depth) * terms) * (1 + 1e-10)
    return s_hi, s_lo, bound


def exact_gram(z, shift, weighted: bool = False) -> ExactGram:
    """``ExactGram`` of one raw slice ``[X, y]`` about ``shift`` (float64, one per column;
    the data's means make the sums small where refinement needs them small). Weights are
    not supported: the caller refines weighted problems from the residuals."""
    if weighted:
        raise ValueError("exact_gram: weighted rows are refined from the residuals")
    n, k = z.shape
    K, p = k + 1, PIECES
    shift = np.asarray(shift, dtype=np.float64)
    # Blocks of W: the pieces P₁ … Pₚ, then the rest R; D: the rounding of z − shift.
    W, D, T = _workspace(n, K, p)
    R = W[:, p * K:]
    # z − shift = R + D exactly (Knuth's two-sum, in place); D joins the rest after the split.
    np.subtract(z, shift, out=R[:, :k])
    np.subtract(R[:, :k], z, out=T)             # bb = s − a
    np.subtract(R[:, :k], T, out=D)             # s − bb
    np.subtract(z, D, out=D)                    # a − (s − bb)
    np.subtract(-shift, T, out=T)               # b − bb
    D += T
    R[:, k] = 1.0
    top = np.maximum(R.max(axis=0), -R.min(axis=0)) if n else np.zeros(K)
    e = np.where(top > 0, np.frexp(top)[1], -MAX_EXP).astype(np.int64)  # every |z̃| < 2^e
    if n == 0 or e.max() > MAX_EXP or e.min() < -MAX_EXP:
        zero = np.zeros((K, K))
        return ExactGram(zero, zero, zero, zero, shift, exact=n == 0)
    bits = (53 - math.ceil(math.log2(max(n, 2)))) // 2
    for i in range(p):
        # fl(r + σ) − σ rounds r to a multiple of ulp(σ) = 2^(e − (i + 1)·bits); |r| ≤ 2^(e − i·bits)
        # keeps r + σ in σ's binade, so the subtraction and the remainder are exact.
        sigma = np.ldexp(0.75, e - (i + 1) * bits + 53)
        piece = W[:, i * K:(i + 1) * K]
        np.add(R, sigma, out=piece)
        piece -= sigma
        R -= piece
    R[:, :k] += D
    scale = np.ldexp(1.0, e)
    mag = n * np.outer(scale, scale)         # ≥ Σ|z̃_i z̃_j|, and ≥ every partial sum below
    gamma = n * U / (1 - n * U)
    two_b = 2.0 ** -bits
    # |Pᵢ| ≤ 2^(e − i·bits) (i from 0); the rest before D joined was below 2^(e − p·bits − 1),
    # and |D| ≤ u·2^e, so |R| ≤ ρ·2^e. Each PᵢᵀR and its transpose round (γₙ) and carry
    # the rounding of R + D (u·ρ); RᵀR is left out.
    rho = (two_b ** p / 2 + U) * (1 + 2 * U)
    err = sum(2 * (gamma + U) * two_b ** i * rho for i in range(p)) * mag + rho * rho * mag
    # (term, f) with |term| ≤ f·mag: Pᵢᵀ(Pᵢ₊ₕ or R), and transposes.
    bound = [two_b ** i for i in range(p)] + [rho]
    terms = []
    for i in range(p):
        block = W[:, i * K:(i + 1) * K].T @ W[:, i * K:]     # Pᵢᵀ[Pᵢ | Pᵢ₊₁ | … | R]
        terms.append((block[:, :K], bound[i] ** 2))
        for j in range(i + 1, p + 1):
            cross = block[:, (j - i) * K:(j - i + 1) * K]
            terms += [(cross, bound[i] * bound[j]), (cross.T, bound[i] * bound[j])]
    # Smallest first, so each double-double addition's rounding (DD_ADD of what it adds)
    # is of small partial sums until the last few.
    terms.sort(key=lambda t: t[1])
    hi, lo = terms[0][0], np.zeros((K, K))
    running, added = terms[0][1], 0.0
    for term, f in terms[1:]:
        hi, lo = dd_add(hi, lo, term, 0.0)
        added += running + f
        running += f
    err = (err + DD_ADD * added * mag) * (1 + 1e-10)
    return ExactGram(hi, lo, err, mag, shift)


def _workspace(n: int, K: int, p: int):
    """Buffers for one slice, kept per thread: fresh multi-megabyte temporaries cost page
    faults on every slice where the allocator maps them anew (dask's workers set
    MALLOC_TRIM_THRESHOLD_, which turns glibc's adaptive mmap threshold off)."""
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None or bufs[0].shape[0] < n or bufs[0].shape[1] != (p + 1) * K:
        bufs = _LOCAL.bufs = (np.empty((n, (p + 1) * K), order="F"), np.empty((n, K - 1), order="F"),
                              np.empty((n, K - 1), order="F"))
    return tuple(b[:n] for b in bufs)


def add_exact_gram(a: ExactGram, b: ExactGram) -> ExactGram:
    """Merge two partial ``ExactGram`` (double-double; the merge's own rounding added to
    the bound)."""
    hi, lo = dd_add(a.hi, a.lo, b.hi, b.lo)
    mag = (a.mag + b.mag) * (1 + 1e-15)
    err = (a.err + b.err + DD_ADD * mag) * (1 + 1e-15)
    return ExactGram(hi, lo, err, mag, a.shift, a.exact and b.exact)
