"""HC1's middle for least squares with categorical features, without one-hot columns.
Pure NumPy on one slice of rows; no dask import.

With the absorbed column's levels ℓ and the reduced columns w (numeric features, then the
other columns' indicators; ``optimization.categorical``), the coefficients' errors are
linear in the rows' weighted errors: δθ = S⁻¹·Σ wᵢeᵢ·w̃ᵢ with w̃ᵢ = wᵢ − w̄_ℓ(i) (the row's
columns less its level's means), and a level's intercept δa_ℓ = u_ℓ − w̄_ℓ·δθ with
u_ℓ = Σ_{i∈ℓ} wᵢeᵢ / n_ℓ. White's estimate replaces eᵢ² by the squared residual, so the
sandwich needs, with sᵢ = (wᵢ·eᵢ)²:

    Ω = Σ sᵢ·w̃ᵢw̃ᵢᵀ  (k × k),   q_ℓ = Σ_{i∈ℓ} sᵢ,   r_ℓ = Σ_{i∈ℓ} sᵢ·w̃ᵢ  (per level)

(``artifacts.summary.summarize_levels`` forms the covariances from them). Memory grows
with k² and the levels, never with levels².
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Rows × reduced columns formed at a time.
BATCH_CELLS = 1 << 22


class LevelMeat(NamedTuple):
    """omega : (k, k) Σ s·w̃w̃ᵀ;  q : (L,) Σ s per absorbed level;  r : (L, k) Σ s·w̃ per
    absorbed level"""

    omega: np.ndarray
    q: np.ndarray
    r: np.ndarray


def slice_level_meat(X, e, w, level, columns, wbar) -> LevelMeat:
    """``LevelMeat`` of one slice: numeric features ``X`` (n, d), residuals ``e``, weights
    ``w`` (None: 1), each row's absorbed level ``level``, ``columns``: per other
    categorical column each row's reduced column index (−1 at its reference level),
    ``wbar``: (L, k) the absorbed levels' means of the reduced columns."""
    n, d = X.shape
    L, k = wbar.shape
    s = e * e if w is None else (w * e) ** 2
    omega, q, r = np.zeros((k, k)), np.bincount(level, s, L), np.zeros((L, k))
    step = max(1, BATCH_CELLS // max(k, 1))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        rows = np.zeros((hi - lo, k))
        rows[:, :d] = X[lo:hi]
        for col in columns:
            hit = np.flatnonzero(col[lo:hi] >= 0)
            rows[hit, col[lo:hi][hit]] = 1.0
        rows -= wbar[level[lo:hi]]
        weighted = rows * s[lo:hi, None]
        omega += weighted.T @ rows
        for j in range(k):
            r[:, j] += np.bincount(level[lo:hi], weighted[:, j], L)
    return LevelMeat(omega, q, r)


def add_level_meat(a: LevelMeat, b: LevelMeat) -> LevelMeat:
    return LevelMeat(a.omega + b.omega, a.q + b.q, a.r + b.r)
