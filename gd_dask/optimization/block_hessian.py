"""A Hessian with a diagonal block: Newton with a high-cardinality categorical column.

The levels of one categorical column never share a row, so in the Hessian over
[numeric features, other levels, this column's levels, intercept] the block of this
column's levels is diagonal (D: Σℓ″ per level). With the other parameters' dense block A
and their coupling B to the column's levels,

    H = [[A, B], [Bᵀ, D]]

and every operation Newton and its certificate need goes through the Schur complement
S = A − B·D⁻¹·Bᵀ, of the size of the dense part alone: memory and time grow with the
levels, never with levels². The parameters keep their order (``band``: the column's
levels, a contiguous range; the dense part is every other index, in order).

- ``solve``: H⁻¹v by block elimination.
- ``inverse_diagonal`` and ``quad``: (H⁻¹)_jj for every parameter and uᵀH⁻¹u, for
  the certificate's per-coefficient spread (and the summary's standard errors):
  (H⁻¹)_ℓℓ = 1/D_ℓ + ‖L⁻¹·B_ℓ‖²/D_ℓ² with S = L·Lᵀ.
- ``extremes``: a lower bound on λmin (the largest λ found with H − λI ⪰ 0: D − λ > 0
  and the Cholesky factorization of S(λ) = A − λI − B·(D − λ)⁻¹·Bᵀ succeeding, by
  bisection) and an upper bound on λmax (max(λmax(A), max D) + ‖B‖_F).
"""

from __future__ import annotations

import numpy as np

#: Bisection steps for λmin's lower bound: the bracket shrinks to 2⁻³⁰ of min(D, λmin(A)).
LMIN_STEPS = 30


class BlockHessian:
    """H over k parameters whose ``band`` (a slice) couple only through the diagonal D.

    A : (p, p) over the other parameters ``rest`` (indices, in order); B : (p, L); D : (L,)."""

    def __init__(self, A, B, D, band: slice, k: int):
        self.A, self.B, self.D = (np.asarray(x, dtype=np.float64) for x in (A, B, D))
        self.band, self.k = band, k
        mask = np.ones(k, dtype=bool)
        mask[band] = False
        self.rest = np.flatnonzero(mask)
        self._chol = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.k, self.k)

    def normalized(self, n: float, l2: float, penalized: int) -> BlockHessian:
        """H/n with l2 added to the diagonal of the first ``penalized`` parameters."""
        A, B, D = self.A / n, self.B / n, self.D / n
        A[np.arange(len(self.rest)), np.arange(len(self.rest))] += l2 * (self.rest < penalized)
        D = D + l2 * (np.arange(self.band.start, self.band.stop) < penalized)
        return BlockHessian(A, B, D, self.band, self.k)

    def dense(self) -> np.ndarray:
        """The whole matrix (tests, and small problems)."""
        H = np.zeros((self.k, self.k))
        r, band = self.rest, np.arange(self.band.start, self.band.stop)
        H[np.ix_(r, r)] = self.A
        H[np.ix_(r, band)] = self.B
        H[np.ix_(band, r)] = self.B.T
        H[band, band] = self.D
        return H

    def diagonal(self) -> np.ndarray:
        out = np.empty(self.k)
        out[self.rest] = np.diag(self.A)
        out[self.band] = self.D
        return out

    def scaled(self, s) -> BlockHessian:
        """diag(s)·H·diag(s)."""
        s = np.asarray(s, dtype=np.float64)
        sr, sb = s[self.rest], s[self.band]
        return BlockHessian(self.A * np.outer(sr, sr), self.B * np.outer(sr, sb), self.D * sb ** 2, self.band, self.k)

    def _schur(self, shift: float = 0.0) -> np.ndarray:
        E = self.B / (self.D - shift)
        S = self.A - E @ self.B.T
        S[np.diag_indices_from(S)] -= shift
        return S

    def _factor(self) -> np.ndarray:
        """L with S = L·Lᵀ (raises LinAlgError where H is not positive definite)."""
        if self._chol is None:
            if not np.all(self.D > 0):
                raise np.linalg.LinAlgError("a level's curvature is not positive")
            self._chol = np.linalg.cholesky(self._schur())
        return self._chol

    def solve(self, v) -> np.ndarray:
        """H⁻¹v (v of length k)."""
        v = np.asarray(v, dtype=np.float64)
        L = self._factor()
        vr, vb = v[self.rest], v[self.band]
        rhs = vr - self.B @ (vb / self.D)
        xr = np.linalg.solve(L.T, np.linalg.solve(L, rhs))
        out = np.empty(self.k)
        out[self.rest] = xr
        out[self.band] = (vb - self.B.T @ xr) / self.D
        return out

    def quad(self, u) -> float:
        """uᵀH⁻¹u."""
        u = np.asarray(u, dtype=np.float64)
        return float(u @ self.solve(u))

    def inverse_diagonal(self) -> np.ndarray:
        """(H⁻¹)_jj for every parameter."""
        L = self._factor()
        Linv = np.linalg.inv(L)
        out = np.empty(self.k)
        out[self.rest] = np.einsum("ij,ij->j", Linv, Linv)  # diag(S⁻¹) = column norms of L⁻¹
        W = Linv @ self.B  # (p, L)
        out[self.band] = 1.0 / self.D + np.einsum("ij,ij->j", W, W) / self.D ** 2
        return out

    def abs_inverse_times(self, e) -> np.ndarray:
        """An upper bound on |H⁻¹|·e for e ≥ 0, entry by entry, through the blocks of
        H⁻¹ = [[S⁻¹, −W], [−Wᵀ, D⁻¹ + (B·D⁻¹)ᵀ·W]], W = S⁻¹·B·D⁻¹, with |XY| ≤ |X|·|Y|
        for the last block (no L × L matrix)."""
        e = np.asarray(e, dtype=np.float64)
        er, eb = e[self.rest], e[self.band]
        L = self._factor()
        Sinv = np.linalg.inv(L).T @ np.linalg.inv(L)
        BD = self.B / self.D
        W = Sinv @ BD
        out = np.empty(self.k)
        out[self.rest] = np.abs(Sinv) @ er + np.abs(W) @ eb
        out[self.band] = np.abs(W).T @ er + eb / self.D + np.abs(BD).T @ (np.abs(W) @ eb)
        return out

    def extremes(self) -> tuple[float, float]:
        """(a lower bound on λmin, an upper bound on λmax); λmin's bound is 0 or below
        where H is not positive definite."""
        ev_a = np.linalg.eigvalsh(self.A)
        hi = float(max(ev_a[-1], self.D.max(initial=0.0)) + np.linalg.norm(self.B))
        try:
            self._factor()
        except np.linalg.LinAlgError:
            return 0.0, hi
        lo, top = 0.0, float(min(ev_a[0], self.D.min(initial=np.inf)))
        for _ in range(LMIN_STEPS):  # H − λI ⪰ 0 holds at lo, and lo < λmin ≤ top
            mid = 0.5 * (lo + top)
            try:
                np.linalg.cholesky(self._schur(mid))
                lo = mid
            except np.linalg.LinAlgError:
                top = mid
        return lo, hi
