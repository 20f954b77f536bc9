"""The gradient at a point, to about twice float64's precision: iterative refinement's
pass over the data. Pure NumPy on one slice of rows; no dask import.

Gradients from float64 co-moments stop improving once ``C·m − c`` is a difference of
large terms (about 7 correct digits of the coefficients on Wampler-like data). Iterative
refinement needs the gradient at the current point from the residuals themselves,
computed more precisely than the point is stored. Here every number is a double-double
``hi + lo`` built with error-free transformations (Dekker's split and product, Knuth's
two-sum; Ogita, Rump & Oishi 2005, "Accurate sum and dot product"), all vectorized over
rows:

* the residual ``r = x·m + b − y`` at a point ``(m, b)`` in original units, given as
  double-double pairs, is computed as a compensated dot product (Dot2), so it is right
  to about ε·|r| + ε²·(|x|·|m| + |b| + |y|) even where ``x·m`` and ``y`` agree in most
  digits;
* ``Σ w·r·x``, ``Σ w·r`` are summed pairwise in double-double, so the sums carry about
  ε² of the magnitudes instead of ε.

The sums also carry magnitudes (``Σ |w·r·x|`` and the like), from which the caller bounds
what rounding is left (``certify``). Partial results add in double-double as well, so the
fixed reduction tree gives the same bits on any number of workers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

U = float(np.finfo(np.float64).eps) / 2

#: Dekker's splitter for float64: 2^27 + 1.
_SPLITTER = 134217729.0


def two_sum(a, b):
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a):
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def two_prod(a, b):
    """``(p, e)`` with ``p = fl(a·b)`` and ``a·b = p + e`` exactly (Dekker; no FMA needed)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def dd_add(ahi, alo, bhi, blo):
    """Double-double ``(ahi + alo) + (bhi + blo)``, normalized."""
    s, e = two_sum(ahi, bhi)
    e = e + (alo + blo)
    return two_sum(s, e)


def dd_mul(ahi, alo, bhi, blo):
    """Double-double ``(ahi + alo)·(bhi + blo)``, normalized: off by at most ``DD_OP`` of
    ``|a|·|b|``."""
    p, e = two_prod(ahi, bhi)
    return two_sum(p, e + (ahi * blo + alo * bhi))


def dd_div(ahi, alo, bhi, blo):
    """Double-double ``(ahi + alo)/(bhi + blo)``: a quotient, its remainder exactly, a
    correction; off by at most ``DD_OP`` of ``|a/b|``."""
    q = ahi / bhi
    ph, pl = dd_mul(q, np.zeros_like(q), bhi, blo)
    rh, _ = dd_add(ahi, alo, -ph, -pl)
    return two_sum(q, rh / bhi)


#: What one double-double operation above (``dd_add``, ``dd_mul``, ``dd_div``) may be off
#: by, against the magnitudes it combines: a few u², counted generously.
DD_OP = 16 * U * U


def dd_sum(hi, lo):
    """Pairwise double-double sum along axis 0: ``(hi, lo)`` of shape ``hi.shape[1:]``."""
    hi, lo = np.asarray(hi, dtype=np.float64), np.asarray(lo, dtype=np.float64)
    if hi.shape[0] == 0:
        return np.zeros(hi.shape[1:]), np.zeros(hi.shape[1:])
    while hi.shape[0] > 1:
        if hi.shape[0] % 2:
            pad = np.zeros((1,) + hi.shape[1:])
            hi, lo = np.concatenate([hi, pad]), np.concatenate([lo, pad])
        hi, lo = dd_add(hi[0::2], lo[0::2], hi[1::2], lo[1::2])
    return hi[0], lo[0]


class RefineSums(NamedTuple):
    """Partial sums for the gradient at a point (original units), in double-double.

    gx_hi, gx_lo : ndarray (n_features,) — Σ w·r·x
    g1_hi, g1_lo : float — Σ w·r
    sq : float — Σ w·r² (float64: only reported)
    ax : ndarray (n_features,) — Σ |w·r·x|;  a1 : float — Σ |w·r|
    bx : ndarray (n_features,) — Σ |w·x|·t;  b1 : float — Σ |w|·t, with
        t = Σ|x·m| + |b| + |y| (what a residual's last rounding is relative to)
    n : float — rows (Σw with weights)
    """

    gx_hi: np.ndarray
    gx_lo: np.ndarray
    g1_hi: float
    g1_lo: float
    sq: float
    ax: np.ndarray
    a1: float
    bx: np.ndarray
    b1: float
    n: float


class PointGradient(NamedTuple):
    """The least-squares gradient's sums at a point (original units) in double-double,
    with bounds on their absolute error.

    gx_hi, gx_lo : ndarray (d,) — Σ w·r·x;  g1_hi, g1_lo : float — Σ w·r
    err_x : ndarray (d,), err_1 : float — absolute error bounds of those sums
    sq : float — Σ w·r² (only reported);  n : float — rows (Σw);  passes : int — passes
    over the data this took (0 where a cached Gram matrix served);  center : ndarray (d,)
    or None — gx is Σ w·r·(x − center) (None: about 0)
    """

    gx_hi: np.ndarray
    gx_lo: np.ndarray
    g1_hi: float
    g1_lo: float
    err_x: np.ndarray
    err_1: float
    sq: float
    n: float
    passes: int = 1
    center: np.ndarray | None = None


def point_gradient(s: RefineSums) -> PointGradient:
    """The residual pass's sums with their rounding bounded: the residual's compensation
    term, summed in float64 over d + 2 products and sums each off by ε of its part, is off
    by about (d + 2)·ε²·t; the pairwise double-double sums by log2(n)·ε² of Σ|w·r·x|.
    Twice that, to be safe."""
    d = len(s.gx_hi)
    eps2 = (2 * U) ** 2
    depth = math.log2(max(s.n, 2)) + 4
    err_x = eps2 * (2 * (d + 3) * np.asarray(s.bx) + depth * np.asarray(s.ax))
    err_1 = eps2 * (2 * (d + 3) * s.b1 + depth * s.a1)
    return PointGradient(s.gx_hi, s.gx_lo, s.g1_hi, s.g1_lo, err_x, float(err_1), s.sq, s.n)


def refine_sums(z, m_hi, m_lo, b_hi, b_lo, weighted: bool = False) -> RefineSums:
    """``RefineSums`` of one raw slice ``[X, y]`` (``[X, y, w]`` when ``weighted``) at
    ``m = m_hi + m_lo``, ``b = b_hi + b_lo`` in original units."""
    k = z.shape[1] - (2 if weighted else 1)
    X, y = z[:, :k], z[:, k]
    n = z.shape[0]
    s, e = two_sum(-y, np.full(n, float(b_hi)))
    e = e + float(b_lo)
    mag = np.abs(y) + abs(float(b_hi))
    for j in range(k):
        p, pe = two_prod(X[:, j], np.full(n, float(m_hi[j])))
        s, t = two_sum(s, p)
        e = e + (t + pe + X[:, j] * float(m_lo[j]))
        mag += np.abs(p)
    r_hi, r_lo = two_sum(s, e)
    if weighted:
        w = z[:, k + 1]
        sq = float(w @ (r_hi * r_hi))
        r_hi, pe = two_prod(w, r_hi)
        r_lo = pe + w * r_lo
        mag = mag * np.abs(w)
        count = float(w.sum())
    else:
        count = float(n)
        sq = float(r_hi @ r_hi)
    p, pe = two_prod(X, r_hi[:, None])
    pe = pe + X * r_lo[:, None]
    gx_hi, gx_lo = dd_sum(p, pe)
    g1_hi, g1_lo = dd_sum(r_hi, r_lo)
    r_abs = np.abs(r_hi)
    x_abs = np.abs(X)
    return RefineSums(gx_hi, gx_lo, float(g1_hi), float(g1_lo), sq, r_abs @ x_abs, float(r_abs.sum()),
                      mag @ x_abs, float(mag.sum()), count)


def add_refine(a: RefineSums, b: RefineSums) -> RefineSums:
    """Merge two partial ``RefineSums`` (double-double where it matters)."""
    gx_hi, gx_lo = dd_add(a.gx_hi, a.gx_lo, b.gx_hi, b.gx_lo)
    g1_hi, g1_lo = dd_add(a.g1_hi, a.g1_lo, b.g1_hi, b.g1_lo)
    return RefineSums(gx_hi, gx_lo, float(g1_hi), float(g1_lo), a.sq + b.sq, a.ax + b.ax, a.a1 + b.a1,
                      a.bx + b.bx, a.b1 + b.b1, a.n + b.n)


def split_pairs(a) -> tuple[np.ndarray, np.ndarray]:
    """``(hi, lo)`` float64 arrays with ``hi + lo`` equal to the long double array ``a``."""
    a = np.asarray(a, dtype=np.longdouble)
    hi = a.astype(np.float64)
    return hi, (a - hi).astype(np.float64)


def exact_bincount(idx, values, k: int):
    """Σ values per index (``np.bincount``) as a normalized double-double ``(hi, lo)``
    whose only error is far below u of the magnitudes added: bincount adds one row after
    another, up to a slice's rows in one chain, so its float64 sum is off by up to that
    many roundings. Each value is split at σ, a power of 2 at least twice Σ|values|
    (Rump, Ogita & Oishi's ExtractScalar): q = fl(σ + v) − σ is v on a grid of σ·2⁻⁵³,
    exactly, and v − q is exact; the q's partial sums stay on that grid below σ, so their
    sum is exact, and the remainders' is off by at most m²·u²·σ."""
    values = np.asarray(values, dtype=np.float64)
    total = float(np.abs(values).sum()) if values.size else 0.0
    if not (total > 0 and np.isfinite(total)):
        return np.bincount(idx, values, k), np.zeros(k)
    sigma = 2.0 ** (np.ceil(np.log2(total)) + 1)
    q = (values + sigma) - sigma
    return two_sum(np.bincount(idx, q, k), np.bincount(idx, values - q, k))


def dd_bincount(index, hi, lo, L: int):
    """Σ of a double-double ``hi + lo`` per index, as a double-double (``exact_bincount`` of
    each part)."""
    h1, l1 = exact_bincount(index, hi, L)
    h2, l2 = exact_bincount(index, lo, L)
    return dd_add(h1, l1, h2, l2)


def exact_dots(X, hi, lo):
    """[Σ x_j·(hi + lo) ..., Σ (hi + lo)] over the rows of X (n, d), as double-doubles
    ``(hi, lo)`` of d + 1: each x_j·hi split exactly (``two_prod``) and every part summed
    by ``exact_bincount``. What is left is x_j·lo's rounding and that of adding it to the
    product's error, about 2u² of |x_j·hi| per row, and the sums' m²·u²·σ."""
    n, d = X.shape
    one = np.zeros(n, dtype=np.intp)
    out_hi, out_lo = np.empty(d + 1), np.empty(d + 1)
    for j in range(d):
        p, e = two_prod(X[:, j], hi)
        a = exact_bincount(one, p, 1)
        b = exact_bincount(one, e + X[:, j] * lo, 1)
        out_hi[j], out_lo[j] = (float(v[0]) for v in dd_add(*a, *b))
    a, b = exact_bincount(one, hi, 1), exact_bincount(one, lo, 1)
    out_hi[d], out_lo[d] = (float(v[0]) for v in dd_add(*a, *b))
    return out_hi, out_lo
