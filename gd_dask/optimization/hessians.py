"""Newton's Hessian in the two forms a pass may give it, with one interface (what
``newton`` and ``certify.LocalBound`` ask of it): ``DenseHessian``, a k × k matrix, and
``BlockHessian``, with a diagonal block.

- ``normalized``: H/n with l2 on the slopes; ``newton_step``: −H⁻¹g; ``solve``: H⁻¹v.
- ``extremes``: λmin and λmax (for a block: bounds on them, below and above).
- ``diagonal``, ``scaled`` (diag(s)·H·diag(s)) and ``entries`` (those that are not 0):
  the Jacobi coordinates of the certificate.
- ``inverse_diagonal``, ``quad``, ``abs_inverse_times`` and ``abs_inverse_row``:
  (H⁻¹)_jj, uᵀH⁻¹u and upper bounds on |H⁻¹|·e and |uᵀH⁻¹|·e, the per-coefficient
  parts of the certificate (``FoldedHessian``: the last two level by level).

A diagonal block is Newton with a high-cardinality categorical column. The levels of one
categorical column never share a row, so in the Hessian over [numeric features, other
levels, this column's levels, intercept] the block of this column's levels is diagonal
(D: Σℓ″ per level). With the other parameters' dense block A and their coupling B to the
column's levels,

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

import math

import numpy as np

from ..errors import TrainingError
from ..kernels.compensated import U

#: Bisection steps for λmin's lower bound: the bracket shrinks to 2⁻³⁰ of min(D, λmin(A)).
LMIN_STEPS = 30


def jacobi(hess):
    """(diag(H), s = diag(H)^(−1/2), a lower bound on λmin of diag(s)·H·diag(s)): the
    Jacobi coordinates of a certificate; None where a diagonal entry is not positive."""
    diag = hess.diagonal()
    if not np.all(diag > 0):
        return None
    s = 1.0 / np.sqrt(diag)
    return diag, s, hess.scaled(s).extremes()[0]


def inverse_growth(kappa_eta: float) -> float:
    """How much the true H⁻¹ may exceed the computed H's, the true H within κη·λmin of
    it: 1/(1 − κη), with a margin; inf past κη = ½, where nothing is certified."""
    return 1.0 / (1.0 - kappa_eta) * (1.0 + 1e-6) if kappa_eta <= 0.5 else math.inf


class DenseHessian:
    """H as a k × k matrix (``matrix``)."""

    def __init__(self, matrix):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.k = self.matrix.shape[0]
        self.entries = self.matrix.size

    def normalized(self, n: float, l2: float, penalized: int) -> DenseHessian:
        """H/n over its first k parameters with l2 added to the first ``penalized``."""
        out = self.matrix / n
        out[np.arange(penalized), np.arange(penalized)] += l2
        return DenseHessian(out)

    def newton_step(self, g) -> np.ndarray:
        """−H⁻¹g; the least-squares solution where H is singular (collinear features)."""
        try:
            return -np.linalg.solve(self.matrix, g)
        except np.linalg.LinAlgError:
            return -np.linalg.lstsq(self.matrix, g, rcond=None)[0]

    def solve(self, v) -> np.ndarray:
        return np.linalg.solve(self.matrix, v)

    def quad(self, u) -> float:
        return float(u @ self.solve(u))

    def inverse_diagonal(self) -> np.ndarray:
        return np.diag(self.solve(np.eye(self.k))).copy()

    def abs_inverse_times(self, e) -> np.ndarray:
        return np.abs(np.linalg.inv(self.matrix)) @ e

    def abs_inverse_row(self, u, e) -> float:
        """|uᵀH⁻¹|·e."""
        return float(np.abs(self.solve(u)) @ e)

    def extremes(self) -> tuple[float, float]:
        ev = np.linalg.eigvalsh(self.matrix)
        return float(ev[0]), float(ev[-1])

    def diagonal(self) -> np.ndarray:
        return np.diag(self.matrix).copy()

    def scaled(self, s) -> DenseHessian:
        return DenseHessian(self.matrix * np.outer(s, s))


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
    def entries(self) -> int:
        """Those that are not 0: the dense part, its coupling (twice) and the diagonal."""
        p, L = self.B.shape
        return p * p + 2 * p * L + L

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

    def newton_step(self, g) -> np.ndarray:
        """−H⁻¹g; one line where H is singular (there is no dense matrix to fall back on)."""
        try:
            return -self.solve(g)
        except np.linalg.LinAlgError:
            raise TrainingError("the Hessian is singular: a feature or level is collinear with the others "
                                "(or a level's rows are all of one class)") from None

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

    abs_inverse_row = DenseHessian.abs_inverse_row

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


class FoldedHessian:
    """H (``inner``, dense or block) whose gradient's rounding the certificate carries
    through H⁻¹ level by level: ``abs_inverse_times`` and ``abs_inverse_row`` go
    through ``cells``, the same Hessian in the coordinates a where every level of one
    categorical column, its reference too, has a coefficient and the intercept none
    (a_ℓ = c_ℓ + b, a_ref = b); everything else is ``inner``'s.

    Why: the intercept's Σψ adds the rounding of every row, and H⁻¹ carries it into each
    level through the reference level's rows (between a level and the intercept H⁻¹ is
    about n/n_ref), so |H⁻¹|·e grew with all the rows, not with a level's own: 5.6 digits
    on 2,000 levels of 20 rows. In a's coordinates each level's gradient is its own rows'
    Σψ, the reference's too: with θ = T·a (c_ℓ = a_ℓ − a_ref, b = a_ref) and the
    rounding δg of the computed gradient, δθ = H⁻¹·δg = T·Hc⁻¹·(Tᵀ·δg), so
    |δθ| ≤ |T|·|Hc⁻¹|·|Tᵀδg|. (Tᵀδg)_ref = δg_b − Σ_ℓ δg_ℓ is the rounding of the
    reference's rows' ψ — at most ``ref_share`` (their share of the intercept's
    rounding scale) of ``e_b`` — and the float64 rounding of g_b and each g_ℓ (the
    sums are exact double-doubles: ``kernels.level_newton``). Hc's own rounding enters as
    H's does (``certify._local``): through 1/(1 − κη), κ its Jacobi condition number.

    Parameters: ``levels``, the parameters (indices into θ, the intercept last) of the
    column's non-reference levels, in level order; ``reference``, the reference's
    position among the column's levels; ``rest``, the other parameters but the
    intercept, in Hc's order; ``grad``, the gradient's sums; ``eta``, each entry's
    rounding against its magnitudes."""

    def __init__(self, inner, cells: BlockHessian, levels, reference: int, rest, ref_share: float, grad,
                 eta: float):
        self.inner, self.cells = inner, cells
        self.levels, self.reference, self.rest = np.asarray(levels), int(reference), np.asarray(rest)
        self.ref_share, self.grad, self.eta = float(ref_share), np.asarray(grad, dtype=np.float64), eta
        self._grow = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def normalized(self, n: float, l2: float, penalized: int):
        """H/n; with l2 the plain ``inner``'s (the penalty couples each a_ℓ to a_ref)."""
        if l2:
            return self.inner.normalized(n, l2, penalized)
        return FoldedHessian(self.inner.normalized(n, 0.0, penalized), self.cells.normalized(n, 0.0, 0),
                             self.levels, self.reference, self.rest, self.ref_share, self.grad / n, self.eta)

    def _in_cells(self, v, ref: float) -> np.ndarray:
        """A vector over θ in Hc's order, with ``ref`` at the reference."""
        band = np.insert(np.asarray(v, dtype=np.float64)[self.levels], self.reference, ref)
        return np.concatenate((np.asarray(v, dtype=np.float64)[self.rest], band))

    def _errors(self, e) -> np.ndarray:
        """|Tᵀδg| bounded entry by entry from ``e`` (θ's) and the gradient."""
        b = self.inner.k - 1
        ref = e[b] * self.ref_share + U * (abs(self.grad[b]) + float(np.abs(self.grad[self.levels]).sum()))
        return self._in_cells(e, ref)

    def growth(self) -> float:
        """1/(1 − κη) of Hc in Jacobi coordinates (inf past κη = ½)."""
        if self._grow is None:
            coords = jacobi(self.cells)
            lmin = coords[2] if coords is not None else 0.0
            self._grow = inverse_growth(math.sqrt(self.cells.entries) * self.eta / lmin if lmin > 0 else math.inf)
        return self._grow

    def abs_inverse_times(self, e) -> np.ndarray:
        """An upper bound on |H⁻¹·δg| for the rounding |δg| ≤ e (``inner``'s where Hc is
        too ill-conditioned to say)."""
        grow = self.growth()
        if not np.isfinite(grow):
            return self.inner.abs_inverse_times(e)
        x = self.cells.abs_inverse_times(self._errors(e)) * grow
        p = len(self.rest)
        out = np.empty(self.inner.k)
        out[self.rest] = x[:p]
        band = x[p:]
        out[self.levels] = np.delete(band, self.reference) + band[self.reference]
        out[-1] = band[self.reference]
        return out

    def abs_inverse_row(self, u, e) -> float:
        """An upper bound on |uᵀH⁻¹·δg|: |Hc⁻¹·Tᵀu|·|Tᵀδg|."""
        grow = self.growth()
        if not np.isfinite(grow):
            return self.inner.abs_inverse_row(u, e)
        u = np.asarray(u, dtype=np.float64)
        tu = self._in_cells(u, u[-1] - float(u[self.levels].sum()))
        return float(np.abs(self.cells.solve(tu)) @ self._errors(e)) * grow
