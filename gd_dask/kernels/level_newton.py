"""A Newton pass over rows with categorical features (no dense one-hot): per slice, the
numeric block's gradient and Hessian as ``kernels.newton`` sums them, and the levels'
parts as per-level sums — Σψ and Σℓ'' per level, Σℓ''·x per level and numeric feature,
and Σℓ'' per pair of levels of two columns. The client assembles the Hessian over
[numeric features, every level, intercept] from them (``assemble``). Plain NumPy; no dask.

The levels' Σψ are exact double-doubles (``compensated.exact_bincount``); their Σℓ''
sums are bincount's float64 chains of up to a slice's rows, which the certificate counts
in the Hessian's rounding (``LocalBound.hess_eta``).

Level keys are those of ``data.read`` (integers by value, text by its 52-bit key); each
column's levels arrive sorted, so a row's level index is a binary search.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .compensated import dd_add, dd_bincount, split_pairs
from .irls import LONG
from .losses import Loss
from .newton import (
    NewtonSums,
    exposures_refused,
    newton_rows,
    numeric_sums,
    split_offset,
)


class LevelSums(NamedTuple):
    """One pass's sums over [numeric features (d), levels of every column (L in all)].

    num : NewtonSums of the numeric features and the intercept (their blocks only)
    level_grad, level_grad_lo : ndarray (L,) — Σψ per level (double-double)
    level_h : ndarray (L,) — Σℓ'' per level
    level_x : ndarray (L, d) — Σℓ''·x per level
    pairs : tuple of ndarray (L_a, L_b) — Σℓ'' per pair of levels, for each pair of columns
    level_scale : ndarray (L,) — the rounding scale of each level's Σψ
    """

    num: NewtonSums
    level_grad: np.ndarray
    level_grad_lo: np.ndarray
    level_h: np.ndarray
    level_x: np.ndarray
    pairs: tuple
    level_scale: np.ndarray


def level_indices(z, cat_idx, level_keys) -> list:
    """Each categorical column's level index per row (``level_keys``: sorted keys)."""
    return [np.searchsorted(keys, z[:, j]) for j, keys in zip(cat_idx, level_keys)]


def slice_level_sums(z, num_idx, target: int, cat_idx, level_keys, m, b, coef, center, scale, loss: Loss,
                     data_terms: bool, offset: tuple | None = None, information: bool = False,
                     weight: int | None = None, idx=None):
    """``LevelSums`` of one raw slice at numeric (m, b) in the training space and the
    levels' coefficients ``coef`` (all levels, in column order; references 0);
    ``offset``: (its column, "add" or "log") where the linear predictor has one;
    ``weight``: the sample weights' column, if any (every row's terms times its weight).

    ``information``: (the sums with Fisher's weights in the place of ℓ'', Pearson's χ²)
    instead: a non-canonical family's information at the fitted coefficients (its
    summary), which the observed curvature is not. ``idx``: the rows' level indices
    (``level_indices``), where already found."""
    X = (z[:, num_idx] - center) / scale
    y = z[:, target]
    w = None if weight is None else z[:, weight]
    bad_exp, off = (0, ()), None
    if offset is not None:
        col, kind = offset
        bad_exp = exposures_refused(z[:, [col]], kind)
        _, off = split_offset(z[:, [col]], kind)
    idx = level_indices(z, cat_idx, level_keys) if idx is None else idx
    sizes = [len(k) for k in level_keys]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    eta = X.astype(LONG) @ np.asarray(m, dtype=LONG) + LONG(b)
    ax = np.abs(X)
    size = ax @ np.abs(m) + abs(b)
    for c, i in enumerate(idx):
        eta += coef[starts[c] + i]
        size += np.abs(coef[starts[c] + i])
    if off is not None:
        eta += off
        size += np.abs(off)
    if information:
        eta = eta.astype(np.float64)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            mu = loss.link.inverse(eta)
            chi = (y - mu) ** 2 / loss.variance(mu)
            pearson = float(chi.sum() if w is None else w @ chi)
            fisher = loss.fisher(eta) if w is None else loss.fisher(eta) * w
    rows = newton_rows(y, w, eta, size, loss)
    psi, psi_lo = split_pairs(rows.psi)  # ψ in long double, as two float64
    rows = rows._replace(psi=psi, h=np.asarray(fisher if information else rows.h, dtype=np.float64),
                         size=rows.size.astype(np.float64))
    num = numeric_sums(X, ax, y, w, rows, loss, data_terms, indicators=len(idx),
                       psi_lo=psi_lo)._replace(bad_exposures=bad_exp)
    L = int(sum(sizes))
    level_grad, level_lo, level_h, level_scale = np.zeros(L), np.zeros(L), np.zeros(L), np.zeros(L)
    level_x = np.zeros((L, X.shape[1]))
    for c, i in enumerate(idx):
        s, k = starts[c], sizes[c]
        # Σψ per level as a double-double, exact but for ψ's own rounding (the certificate
        # counts no summation roundings for the levels: ``LEVEL_SUM_ROUNDINGS``).
        level_grad[s:s + k], level_lo[s:s + k] = dd_bincount(i, psi, psi_lo, k)
        level_h[s:s + k] = np.bincount(i, rows.h, k)
        level_scale[s:s + k] = np.bincount(i, rows.size, k)
        for j in range(X.shape[1]):
            level_x[s:s + k, j] = np.bincount(i, rows.h * X[:, j], k)
    pairs = tuple(np.bincount(idx[a] * sizes[bb] + idx[bb], rows.h, sizes[a] * sizes[bb]).reshape(sizes[a], sizes[bb])
                  for a in range(len(idx)) for bb in range(a + 1, len(idx)))
    sums = LevelSums(num, level_grad, level_lo, level_h, level_x, pairs, level_scale)
    return (sums, pearson) if information else sums


def add_information(a: tuple, b: tuple) -> tuple:
    """Merge two ``slice_level_sums(..., information=True)`` results."""
    return add_level_sums(a[0], b[0]), a[1] + b[1]


def add_level_sums(a: LevelSums, b: LevelSums) -> LevelSums:
    from .newton import add_newton

    hi, lo = dd_add(a.level_grad, a.level_grad_lo, b.level_grad, b.level_grad_lo)
    return LevelSums(add_newton(a.num, b.num), hi, lo, a.level_h + b.level_h, a.level_x + b.level_x,
                     tuple(x + y for x, y in zip(a.pairs, b.pairs)), a.level_scale + b.level_scale)


def assemble(s: LevelSums, widths, keep, absorbed: int | None = None) -> NewtonSums:
    """The pass as ``NewtonSums`` over the parameters [numeric (d), the levels ``keep``
    (indices among all levels: the non-reference ones), intercept]: gradient, Hessian and
    rounding scale, the rest as the numeric part's. ``widths``: each column's levels.

    ``absorbed``: a column whose levels' block of the Hessian is diagonal (no row has two
    of its levels) and stays so: the Hessian is then an ``optimization.hessians.
    BlockHessian``, dense over the other parameters only."""
    num = s.num
    d = num.grad.shape[0]
    keep = np.asarray(keep, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
    dense_cols = [c for c in range(len(widths)) if c != absorbed]
    sub = (np.concatenate([starts[c] + np.arange(widths[c]) for c in dense_cols]) if dense_cols
           else np.zeros(0, dtype=np.int64))
    full = _dense_part(s, widths, starts, dense_cols, sub, d)
    in_band = ((keep >= starts[absorbed]) & (keep < starts[absorbed] + widths[absorbed]) if absorbed is not None
               else np.zeros(len(keep), dtype=bool))
    order = np.concatenate((np.arange(d), d + np.searchsorted(sub, keep[~in_band]), [d + len(sub)]))
    grad = np.concatenate((num.grad, s.level_grad[keep]))
    scale = np.concatenate((num.scale[:d], s.level_scale[keep], num.scale[d:]))
    hess = full[np.ix_(order, order)]
    if absorbed is not None:
        hess = _with_band(s, hess, widths, starts, keep, in_band, absorbed, d)
    return num._replace(grad=grad, hess=hess, scale=scale,
                        grad_lo=np.concatenate((num.grad_lo[:d], s.level_grad_lo[keep], num.grad_lo[d:])))


def _pair_blocks(s: LevelSums, n_cols: int) -> dict:
    """{(a, b): Σℓ'' per pair of levels of columns a < b}."""
    pairs = iter(s.pairs)
    return {(a, b): next(pairs) for a in range(n_cols) for b in range(a + 1, n_cols)}


def _dense_part(s: LevelSums, widths, starts, cols, sub, d: int) -> np.ndarray:
    """The Hessian over [numeric, every level of ``cols`` (global indices ``sub``),
    intercept]."""
    num = s.num
    L = len(sub)
    full = np.zeros((d + L + 1, d + L + 1))
    full[:d, :d] = num.hess[:d, :d]
    full[:d, -1] = full[-1, :d] = num.hess[:d, d]
    full[-1, -1] = num.hess[d, d]
    lv = slice(d, d + L)
    full[lv, :d] = s.level_x[sub]
    full[:d, lv] = s.level_x[sub].T
    full[lv, -1] = full[-1, lv] = s.level_h[sub]
    full[d + np.arange(L), d + np.arange(L)] = s.level_h[sub]
    at = {c: d + int(np.searchsorted(sub, starts[c])) for c in cols}
    for (a, b), block in _pair_blocks(s, len(widths)).items():
        if a in at and b in at:
            full[at[a]:at[a] + widths[a], at[b]:at[b] + widths[b]] = block
            full[at[b]:at[b] + widths[b], at[a]:at[a] + widths[a]] = block.T
    return full


def _with_band(s: LevelSums, A, widths, starts, keep, in_band, absorbed: int, d: int):
    """The ``BlockHessian`` whose band is the absorbed column's kept levels: A the dense
    part (rows in parameter order), B their coupling to the band, D the band's Σℓ''."""
    from ..optimization.hessians import BlockHessian

    ga = keep[in_band]
    B = np.concatenate(_coupling(s, widths, starts, keep[~in_band], absorbed, ga) + [s.level_h[ga][None, :]])
    first = d + int(np.flatnonzero(in_band)[0])
    band = slice(first, first + len(ga))
    return BlockHessian(A, B, s.level_h[ga], band, d + len(keep) + 1)


def _coupling(s: LevelSums, widths, starts, others, column: int, ga) -> list:
    """The rows of Σℓ'' between the numeric features and then the levels ``others`` (of
    the other columns) and the levels ``ga`` of ``column`` (global indices)."""
    la = ga - starts[column]
    pairs = _pair_blocks(s, len(widths))
    col_of = np.searchsorted(starts, others, side="right") - 1
    rows = [s.level_x[ga].T]
    for g, c in zip(others, col_of):
        local = g - starts[c]
        rows.append((pairs[(c, column)][local, la] if c < column else pairs[(column, c)][la, local])[None, :])
    return rows


def cells(s: LevelSums, A, widths, keep, column: int):
    """The pass's Hessian in the coordinates where every level of ``column``, its
    reference too, has a coefficient and the intercept has none
    (``optimization.hessians.FoldedHessian``): a ``BlockHessian`` over [numeric, the
    kept levels of the other columns, every level of ``column``]. ``A``: the assembled
    Hessian's block over the first two."""
    from ..optimization.hessians import BlockHessian

    starts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
    keep = np.asarray(keep, dtype=np.int64)
    others = keep[(keep < starts[column]) | (keep >= starts[column] + widths[column])]
    every = starts[column] + np.arange(widths[column])
    B = np.concatenate(_coupling(s, widths, starts, others, column, every))
    p = A.shape[0]
    return BlockHessian(A, B, s.level_h[every], slice(p, p + len(every)), p + len(every))
