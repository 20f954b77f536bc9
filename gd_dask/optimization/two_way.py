"""Least squares with two categorical columns of many levels each (user × item, store ×
product), solved without their co-occurrence block ever being dense. Pure NumPy on the
client, from the grouped moments (``kernels.groups``: one group per pair of levels seen).

The model ``y = x·θ + α_a + β_b`` (β = 0 at B's reference level; α free on every level of
A, the column with the most levels, which holds the intercept). Eliminating α is the
within transformation over A's levels, ``P_A`` (``optimization.categorical``); what
remains is the normal equations in (θ, β):

    [S_xx  S_xB] [θ]   [s_x]       S_BB = Bᵀ N (I − P_A) B,  S_xB = X̃ᵀ N (I − P_A) B,
    [S_Bx  S_BB] [β] = [s_B],      S_xx = W_xx + X̃ᵀ N (I − P_A) X̃

over the groups (N: their Σw; X̃, ỹ: their means less their A-level's; W: the pooled
within-group co-moment). S_BB is dense when B's levels share A's (every product in many
stores), so it is never formed: a product with it is a gather, a sum per A-level and a
sum per B-level, O(groups). Memory grows with the levels and the pairs seen.

Solving (Frisch–Waugh–Lovell): conjugate gradients on S_BB, preconditioned by its
diagonal, for ``K = S_BB⁻¹ [S_Bx, s_B]`` (d + 1 right-hand sides at once); then the d × d
system ``Σ θ = s_x − S_xB K_y`` with ``Σ = S_xx − S_xB K_x``, and ``β = K_y − K_x θ``. The
residual of the whole system is then computed in double-double and the same steps
solve for a correction, the solution kept in double-double, until the certificate meets
``tol`` (iterative refinement).

The certificate. With δ = (δθ, δβ) the error and r = (r_x, r_B) the exact residual
(computed in double-double, what it is off by, ρ, bounded: ``TwoWay.residual``), block
elimination gives

    δθ = Σ⁻¹ (r_x − Kᵀ r_B),   δβ = S_BB⁻¹ r_B − K δθ.

- S_BB⁻¹ v for v ≥ 0 is bounded entry by entry (``TwoWay.inverse_bound``). S_BB's
  off-diagonal entries are ≤ 0, so a P > 0 with S_BB P ≥ v > 0, checked in double-double,
  proves S_BB a nonsingular M-matrix, whose inverse is ≥ 0 entrywise, and then
  S_BB⁻¹ v ≤ P. No eigenvalue bound is needed, and every level gets its own bound.
- Hence |δβ| ≤ S_BB⁻¹(|r_B| + ρ_B) + |K|·|δθ|; K's error is S_BB⁻¹ R, R its residual,
  bounded the same way.
- ‖δθ‖ ≤ ‖Σ⁻¹‖·‖|r_x| + ρ_x + |K|ᵀ(|r_B| + ρ_B)‖: Σ differs from the Σ̂ computed with
  K̂ by S_xB (K − K̂) = Kᵀ R, so ``λmin(Σ) ≥ λmin(Σ̂) − ‖|K|ᵀ|R|‖`` less Σ̂'s rounding.

The data are the groups' exact sums (``kernels.groups``): X̃ and ỹ are formed from them in
double-double, so what they are off by is some u² of the groups' means, plus what the
sums themselves may be off by (``TwoWay.Z_err``), carried into ρ. The float64 rounding of
the solution is added to each coefficient's bound as it is: on 1M rows with 20,000
levels in each column the bound is some 1e-11 (a long-double residual gave 1e-9: S_BB⁻¹
gathers every level's rounding bound into each level's, the shift of all of B's levels
against the reference being the least determined direction). A coefficient's relative error is then judged as
``certify`` does (``ZERO_FLOOR`` of the largest standardized coefficient). The levels of A,
the intercept among them, follow as in ``categorical.recover``:
``α_ℓ = ȳ_ℓ − x̄_ℓ·θ − B̄_ℓ·β``, whose error is at most ``|x̄_ℓ|·|δθ| + B̄_ℓ·|δβ|`` (B̄_ℓ:
the shares of ℓ's Σw by level of B) plus its rounding.

Standard errors would need the diagonal of S⁻¹ over B's levels: not computed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..kernels.compensated import DD_OP, dd_add, dd_div, dd_mul, exact_bincount
from ..kernels.groups import GroupMoments
from ..sizes import SLICE_ROWS
from .categorical import Coefficients, Encoding
from .certify import EPS, EPS_LONG, U, ZERO_FLOOR, sums_accuracy

#: Conjugate-gradient iterations per solve, at most.
MAX_ITERATIONS = 20000
#: A solve stops when every column's residual is this small against its right-hand side.
SOLVE_RTOL = 1e-12
#: Corrections from the double-double residual, at most.
MAX_REFINEMENTS = 6
#: The unit roundoff of long double.
U_LONG = EPS_LONG / 2


class TwoWayFit(NamedTuple):
    """coef : the model;  bound : the largest relative error of any coefficient;  errors :
    each coefficient's bound on its absolute error (as ``Coefficients``);
    iterations : conjugate-gradient iterations in all;  refinements : corrections;
    sse : Σ w·(y − ŷ)² at the solution;  sigma : the numeric block's Schur complement
    S_xx − S_xB S_BB⁻¹ S_Bx (d × d), for the slopes' covariance;  params : the parameters
    besides the numeric slopes (every level of A, B's free levels)"""

    coef: Coefficients
    bound: float
    errors: Coefficients
    iterations: int
    refinements: int
    sse: float
    sigma: np.ndarray
    params: int


class _Levels(NamedTuple):
    """A column's level index per group and, for sums per level, the groups ordered by
    level and where each level starts."""

    index: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, index, L: int) -> _Levels:
        order = np.argsort(index, kind="stable")
        counts = np.bincount(index, minlength=L)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        return cls(index, order, starts, counts)

    @property
    def longest(self) -> int:
        return int(self.count.max()) if len(self.count) else 0

    def sums(self, v):
        """Σ over each level's groups of v's rows (G × m), in v's precision."""
        if v.dtype == np.float64:
            L = len(self.starts)
            if not v.shape[1]:
                return np.zeros((L, 0))
            return np.column_stack([np.bincount(self.index, weights=v[:, j], minlength=L) for j in range(v.shape[1])])
        return np.add.reduceat(v[self.order], self.starts, axis=0)


class TwoWay:
    """The reduced problem of the module docstring, from the grouped moments of exactly two
    categorical columns."""

    def __init__(self, groups: GroupMoments, enc: Encoding):
        a = enc.absorbed
        o = 1 - a
        self.enc, self.a, self.o = enc, a, o
        la = np.searchsorted(enc.levels[a], groups.keys[:, a])
        lb = np.searchsorted(enc.levels[o], groups.keys[:, o])
        LA, LB = len(enc.levels[a]), len(enc.levels[o])
        self.A, self.B = _Levels.of(la, LA), _Levels.of(lb, LB)
        self.d = groups.mean.shape[1] - 1
        # The certificate's data in double-double, from the groups' exact sums: Σw per group
        # and per A-level, X̃ and ỹ (each group's means less its A-level's). The solver's in
        # float64; the A-levels' means in long double for α.
        self.n2 = (groups.n, groups.n_lo)
        self.level_n2 = _dd_bincount(la, groups.n, groups.n_lo, LA)
        mean = dd_div(groups.total, groups.total_lo, groups.n[:, None], groups.n_lo[:, None])
        level_total = [_dd_bincount(la, groups.total[:, j], groups.total_lo[:, j], LA)
                       for j in range(groups.total.shape[1])]
        lh = np.column_stack([t[0] for t in level_total])
        ll = np.column_stack([t[1] for t in level_total])
        level_mean = dd_div(lh, ll, self.level_n2[0][:, None], self.level_n2[1][:, None])
        self.Z2 = dd_add(mean[0], mean[1], -level_mean[0][la], -level_mean[1][la])
        self.n, self.level_n, self.Z = groups.n, self.level_n2[0] + self.level_n2[1], self.Z2[0]
        # What each entry of X̃, ỹ may be off by: a group's sum is exact but for m²·u²·σ
        # (``compensated.exact_bincount``: m its rows in a slice, σ ≤ 4 × a slice's Σ|w·z|,
        # itself ≤ Σ_g (Σw·|mean| + √(Σw·m2)) by Cauchy–Schwarz), merged in double-double;
        # then the double-double division and subtraction (a level mean's own error shifts
        # its groups alike, which (I − P_A) removes).
        sigma = 4 * np.sum(groups.n[:, None] * np.abs(groups.mean)
                           + np.sqrt(np.maximum(groups.n[:, None] * groups.m2, 0)), axis=0)
        m = np.minimum(groups.count, SLICE_ROWS)
        sums = (m * m * U * U / groups.n)[:, None] * sigma
        self.Z_err = 4 * DD_OP * (np.abs(groups.mean) + np.abs(self.Z)) + sums * (1 + 1e-6)
        self.level_meanL = level_mean[0].astype(np.longdouble) + level_mean[1].astype(np.longdouble)
        self.level_nL = self.level_n2[0].astype(np.longdouble) + self.level_n2[1].astype(np.longdouble)
        self.nL = groups.n.astype(np.longdouble) + groups.n_lo.astype(np.longdouble)
        self.W = groups.within
        self.ref = enc.reference[o]
        self.nonref = enc.non_reference(o)
        self.E = len(self.nonref)
        self.rows = groups.rows
        # S_BB's diagonal (the preconditioner): positive, every level linked to a reference
        # (``categorical.unlinked``).
        diag = self.B.sums((self.n * (1.0 - self.n / self.level_n[la]))[:, None])[self.nonref, 0]
        self.diag = diag

    # -- products with S_BB and its pieces in float64, for the solver

    def _center(self, t):
        """(I − P_A) t: t less its Σw-weighted mean over each A-level's groups."""
        return t - (self.A.sums(self.n[:, None] * t) / self.level_n[:, None])[self.A.index]

    def _gather(self, beta):
        """B β per group (0 at the reference level)."""
        full = np.zeros((len(self.enc.levels[self.o]), beta.shape[1]), dtype=beta.dtype)
        full[self.nonref] = beta
        return full[self.B.index]

    def _scatter(self, t):
        """Bᵀ N t over the non-reference levels."""
        return self.B.sums(self.n[:, None] * t)[self.nonref]

    def s_bb(self, beta):
        """S_BB β for a matrix of columns β (E × m)."""
        return self._scatter(self._center(self._gather(beta)))

    # -- the same in double-double with bounds on what they are off by, for the certificate

    def _center_dd(self, eh, el, err):
        """(I − P_A) e for e = eh + el (G × m) off by at most ``err``: (hi, lo, its bound)."""
        nh, nl = self.n2[0][:, None], self.n2[1][:, None]
        lh, ll = self.level_n2[0][:, None], self.level_n2[1][:, None]
        neh, nel = dd_mul(nh, nl, eh, el)
        n_abs = np.abs(nh) * np.abs(eh)
        sh, sl, s_err = _dd_level_sums(self.A, neh, nel)
        ch, cl = dd_div(sh, sl, lh, ll)
        c_err = ((s_err + self.A.sums(nh * err + DD_OP * n_abs)) / lh + DD_OP * np.abs(ch)) * (1 + 1e-6)
        A = self.A.index
        oh, ol = dd_add(eh, el, -ch[A], -cl[A])
        return oh, ol, err + c_err[A] + DD_OP * (np.abs(eh) + np.abs(ch[A]))

    def residual(self, cols, theta, beta):
        """The residual of the normal equations at (θ, β) (double-double pairs, d × m and
        E × m) for the targets z = the columns ``cols`` of [X̃, ỹ]: ``r_x = W_xz − W_xx θ +
        X̃ᵀ N e`` and ``r_B = Bᵀ N e`` with ``e = (I − P_A)(z − X̃θ − Bβ)``, in double-double,
        rounded to float64; and bounds ρ_x, ρ_B on how far each is from the exact residual
        of the data as given, the rounding of X̃ and z (``Z_err``) included. For the target
        ỹ: the whole system's residual; for X̃ with θ = 0: r_x is Σ̂ and r_B is K's
        residual."""
        d = self.d
        Zh, Zl = self.Z2
        th, tl = theta
        eh, el = Zh[:, cols].copy(), Zl[:, cols].copy()
        mag = np.abs(eh)
        for j in range(d):
            ph, pl = dd_mul(Zh[:, [j]], Zl[:, [j]], th[[j]], tl[[j]])
            eh, el = dd_add(eh, el, -ph, -pl)
            mag = mag + np.abs(Zh[:, [j]]) * np.abs(th[[j]])
        bh, bl = self._gather(beta[0]), self._gather(beta[1])
        eh, el = dd_add(eh, el, -bh, -bl)
        mag = mag + np.abs(bh)
        err = (2 * d + 2) * DD_OP * mag * (1 + 1e-6)
        # The data's own error, centred as e is.
        data = self.Z_err[:, cols] + self.Z_err[:, :d] @ np.abs(th)
        data = data + self.A.sums(self.n[:, None] * data)[self.A.index] / self.level_n[self.A.index, None]
        eh, el, err = self._center_dd(eh, el, err + data)
        nh, nl = self.n2[0][:, None], self.n2[1][:, None]
        neh, nel = dd_mul(nh, nl, eh, el)
        ne_abs = np.abs(nh) * np.abs(eh)
        ne_err = (nh * err + DD_OP * ne_abs) * (1 + 1e-6)
        rbh, rbl, rb_err = _dd_level_sums(self.B, neh, nel)
        rho_B = rb_err + self.B.sums(ne_err)
        # r_x: W's terms, then Σ_g X̃_g·(N e)_g summed pairwise.
        W = self.W
        r_x = np.zeros((d, len(cols)))
        rho_x = np.zeros((d, len(cols)))
        one = np.zeros(len(self.n), dtype=np.int64)
        chain = (len(self.n) + 1.0) ** 2 * U * U * 4
        w_x = np.sqrt(np.maximum(np.diag(W)[:d], 0))
        w_z = np.sqrt(np.maximum(np.diag(W)[cols], 0))
        for j in range(d):
            hi, lo = dd_mul(Zh[:, [j]], Zl[:, [j]], neh, nel)
            total = [_dd_bincount(one, hi[:, c], lo[:, c], 1) for c in range(len(cols))]
            sh, sl = np.array([t[0][0] for t in total]), np.array([t[1][0] for t in total])
            for k in range(d):
                ph, pl = dd_mul(np.full_like(th[k], W[j, k]), np.zeros_like(th[k]), th[k], tl[k])
                sh, sl = dd_add(sh, sl, -ph, -pl)
            sh, sl = dd_add(sh, sl, W[j, cols], np.zeros(len(cols)))
            r_x[j] = sh + sl
            mag_x = np.abs(Zh[:, j]) @ ne_abs
            rho_x[j] = ((chain + 2 * DD_OP) * mag_x + np.abs(Zh[:, j]) @ ne_err + self.Z_err[:, j] @ ne_abs
                        + (d + 2) * DD_OP * (np.abs(W[j, :d]) @ np.abs(th) + np.abs(W[j, cols]))
                        # W's own accuracy, as moments' (|W_ij| ≤ √(W_ii·W_jj)).
                        + sums_accuracy(self.rows) * w_x[j] * (w_z + w_x @ np.abs(th)))
        r_B = (rbh + rbl)[self.nonref]
        rho_x = rho_x * (1 + 1e-6) + U * np.abs(r_x)
        rho_B = rho_B[self.nonref] * (1 + 1e-6) + U * np.abs(r_B)
        return r_x, r_B, rho_x, rho_B

    def inverse_bound(self, v):
        """P ≥ S_BB⁻¹ v, entry by entry, for v ≥ 0 (E × m); inf where it cannot be shown.

        S_BB has no positive entry off its diagonal (a Z-matrix: −Σ_ℓ w_ℓj w_ℓk / w_ℓ), so
        a P > 0 with S_BB P ≥ v, v > 0, proves it a nonsingular M-matrix, whose inverse is
        entrywise nonnegative: then S_BB⁻¹ v ≤ P, as P − S_BB⁻¹ v = S_BB⁻¹ (S_BB P − v).
        P is an approximate solve for v raised a little, checked in float64 with each sum's
        rounding bounded (in double-double where that is not enough)."""
        out = np.zeros_like(v)
        live = v.max(axis=0) > 0
        if not live.any():
            return out
        v = v[:, live]
        v_up = v + 1e-3 * v.mean(axis=0)
        p, _ = self.pcg(v_up, rtol=1e-6)
        for precise in (False, True):
            for factor in (1.01, 1.1, 2.0):
                P = p * factor
                if (P > 0).all() and (self._s_bb_lower(P, precise) >= v).all():
                    out[:, live] = P
                    return out
        out[:, live] = np.inf
        return out

    def _s_bb_lower(self, P, precise: bool = False):
        """A lower bound, entry by entry, on the exact S_BB P: computed in float64, each
        sum's rounding counted by its length (``precise``: in double-double)."""
        t = self._gather(P)
        if precise:
            th, tl, err = self._center_dd(t, np.zeros_like(t), np.zeros_like(t))
            nh, nl = self.n2[0][:, None], self.n2[1][:, None]
            neh, nel = dd_mul(nh, nl, th, tl)
            sh, sl, s_err = _dd_level_sums(self.B, neh, nel)
            bound = s_err + self.B.sums(nh * err + DD_OP * np.abs(nh) * np.abs(th))
            return ((sh + sl) - bound * (1 + 1e-6) - U * np.abs(sh))[self.nonref] - 1e-300
        n, lev, A = self.n[:, None], self.level_n[:, None], self.A.index
        ta = np.abs(t)
        c = self.A.sums(n * t) / lev
        # A level's sum, Σw's own rounding (n is Σw's high part), the division.
        c_err = ((self.A.count + 4) * U)[:, None] * self.A.sums(n * ta) / lev
        e = t - c[A]
        err = c_err[A] + U * (np.abs(e) + ta)
        out = self.B.sums(n * e)
        bound = ((self.B.count + 3) * U)[:, None] * self.B.sums(n * (np.abs(e) + ta + np.abs(c[A]))) \
            + self.B.sums(n * err)
        return (out - bound * (1 + 1e-6))[self.nonref] - 1e-300

    def k_residual(self, K):
        """(Σ̂, R, ρ_Σ, ρ_R) for K ≈ S_BB⁻¹ S_Bx (E × d), in float64: R = S_Bx − S_BB K, the
        residual, and Σ̂ = S_xx − S_xB K, with bounds on what each is off by from the exact
        values for the data as given (``Z_err``, and X̃'s float64 rounding). K only enters
        the certificate through small terms (|K − K̂|·|δθ|, and λmin(Σ) to a few digits), so
        float64 suffices: each sum's rounding is counted by its length."""
        d = self.d
        X = self.Z[:, :d]
        Xa = np.abs(X)
        x_err = self.Z_err[:, :d] + U * Xa
        n = self.n[:, None]
        lev = self.level_n[:, None]
        A = self.A.index
        t = X - self._gather(K)
        err = U * np.abs(t)
        c = self.A.sums(n * t) / lev
        c_err = (((self.A.count + 2) * U)[:, None] * self.A.sums(n * np.abs(t)) + self.A.sums(n * err)) / lev \
            + U * np.abs(c)
        e = t - c[A]
        err = err + c_err[A] + U * np.abs(e)
        data = x_err + self.A.sums(n * x_err)[A] / lev[A]
        ne = n * e
        ne_abs = n * np.abs(e)
        R = self.B.sums(ne)[self.nonref]
        rho_R = (((self.B.count + 2) * U)[:, None] * self.B.sums(ne_abs)
                 + self.B.sums(n * (err + data)))[self.nonref]
        sigma = self.W[:d, :d] + X.T @ ne
        w_x = np.sqrt(np.maximum(np.diag(self.W)[:d], 0))
        rho_sigma = ((len(self.n) + 2) * U * (Xa.T @ ne_abs) + Xa.T @ (n * (err + data)) + x_err.T @ ne_abs
                     + sums_accuracy(self.rows) * np.outer(w_x, w_x))
        return sigma, R, rho_sigma * (1 + 1e-6), rho_R * (1 + 1e-6)

    def rhs(self):
        """[S_Bx, s_B] (E × (d + 1)) and [S_xx, s_x] (d × (d + 1)) in float64, for the solver."""
        Zc = self._center(self.Z)
        nZ = self.n[:, None] * Zc
        return self.B.sums(nZ)[self.nonref], self.W[:self.d] + self.Z[:, :self.d].T @ nZ

    def pcg(self, rhs, x0=None, rtol: float | None = None):
        """S_BB X = rhs by conjugate gradients preconditioned by S_BB's diagonal, every column
        at once; (X, iterations)."""
        rtol = SOLVE_RTOL if rtol is None else rtol
        x = np.zeros_like(rhs) if x0 is None else x0.copy()
        r = rhs - self.s_bb(x) if x0 is not None else rhs.copy()
        target = rtol * np.linalg.norm(rhs, axis=0)
        z = r / self.diag[:, None]
        p = z.copy()
        rz = np.einsum("ij,ij->j", r, z)
        it = 0
        while it < MAX_ITERATIONS and (np.linalg.norm(r, axis=0) > target).any():
            q = self.s_bb(p)
            pq = np.einsum("ij,ij->j", p, q)
            alpha = np.divide(rz, pq, out=np.zeros_like(rz), where=pq > 0)
            x += alpha * p
            r -= alpha * q
            z = r / self.diag[:, None]
            rz_new = np.einsum("ij,ij->j", r, z)
            beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
            p = z + beta * p
            rz = rz_new
            it += 1
        return x, it


def fit_two_way(groups: GroupMoments, enc: Encoding, tol: float) -> TwoWayFit:
    """The least-squares model and its certified bound (module docstring)."""
    tw = TwoWay(groups, enc)
    d = tw.d
    rhs_B, rhs_x = tw.rhs()
    K, iterations = tw.pcg(rhs_B)
    Kx, Ky = K[:, :d], K[:, d]
    sigma, R, rho_sigma, rho_R = tw.k_residual(Kx)
    sigma = (sigma + sigma.T) / 2
    eps_K = tw.inverse_bound(np.abs(R) + rho_R)          # |K − K̂| entry by entry
    K_abs = np.abs(Kx) + eps_K
    # Σ − Σ̂ = −Kᵀ R exactly (module docstring), plus Σ̂'s rounding.
    err_sigma = float(np.linalg.norm(K_abs.T @ (np.abs(R) + rho_R))) + float(np.linalg.norm(rho_sigma))
    if d:
        lam_sigma = float(np.linalg.eigvalsh(sigma)[0]) - err_sigma - 8 * (d + 1) * EPS * float(np.linalg.norm(sigma))
        theta = np.linalg.solve(sigma, rhs_x[:, d] - rhs_B[:, :d].T @ Ky)
    else:
        lam_sigma, theta = np.inf, np.zeros(0)
    # The solution is refined in double-double: its float64 rounding then adds to the
    # bound itself, not through S⁻¹ and the residual it leaves.
    theta = (theta, np.zeros(d))
    beta = (Ky - Kx @ theta[0], np.zeros(len(Ky)))
    refinements, best, prev = 0, None, np.inf
    while True:
        r_x, r_B, rho_x, rho_B = (v[:, 0] for v in tw.residual([d], (theta[0][:, None], theta[1][:, None]),
                                                                (beta[0][:, None], beta[1][:, None])))
        # The float64 solve is never certified to tol: correct it once before judging.
        if refinements or not MAX_REFINEMENTS:
            a_B = np.abs(r_B) + rho_B
            q = tw.inverse_bound(a_B[:, None])[:, 0]             # ≥ |S_BB⁻¹ r_B|
            if not d:
                d_theta = np.zeros(0)
            elif lam_sigma > 0:
                d_theta = np.full(d, float(np.linalg.norm(np.abs(r_x) + rho_x + K_abs.T @ a_B)) / lam_sigma)
            else:
                d_theta = np.full(d, np.inf)
            d_beta = q + K_abs @ d_theta
            # The float64 model is the pairs' high parts: off by their low parts.
            coef, bound, sse, errors = _judge(tw, theta[0], beta[0], d_theta + np.abs(theta[1]),
                                              d_beta + np.abs(beta[1]))
            if best is None or bound < best[1]:
                best = (coef, bound, sse, errors)
            if bound <= tol or refinements >= MAX_REFINEMENTS or bound >= prev / 2:
                break
            prev = bound
        # A correction: the same elimination for the right-hand side r.
        c0, it = tw.pcg(r_B[:, None], rtol=1e-10)
        iterations += it
        dt = np.linalg.solve(sigma, r_x - rhs_B[:, :d].T @ c0[:, 0]) if d else np.zeros(0)
        theta = dd_add(*theta, dt, np.zeros(d))
        beta = dd_add(*beta, c0[:, 0] - Kx @ dt, np.zeros(len(c0)))
        refinements += 1
    coef, bound, sse, errors = best
    return TwoWayFit(coef, bound, errors, iterations, refinements, sse, sigma, len(tw.level_n) + tw.E)


def _judge(tw: TwoWay, theta, beta, d_theta, d_beta):
    """(the model, its relative bound, Σ w·e², its absolute bounds) at (θ, β) with |δθ| ≤ d_theta and
    |δβ| ≤ d_beta entry by entry (module docstring)."""
    Ld = np.longdouble
    enc, d = tw.enc, tw.d
    b_full = np.zeros(len(enc.levels[tw.o]))
    b_full[tw.nonref] = beta
    db_full = np.zeros(len(b_full))
    db_full[tw.nonref] = d_beta
    lev = tw.level_n
    # α_ℓ = ȳ_ℓ − x̄_ℓ·θ − B̄_ℓ·β in long double, from the level means as summed;
    # B̄_ℓ·β = Σ_{g∈ℓ} w_g β_b(g) / Σw_ℓ.
    nL, levL = tw.nL, tw.level_nL
    bbar = tw.A.sums((nL * b_full[tw.B.index].astype(Ld))[:, None])[:, 0] / levL
    mean = tw.level_meanL
    alpha = (mean[:, d] - mean[:, :d] @ theta.astype(Ld) - bbar).astype(np.float64)
    terms = (np.abs(mean[:, d]) + np.abs(mean[:, :d]) @ np.abs(theta).astype(Ld)
             + tw.A.sums((nL * np.abs(b_full[tw.B.index]))[:, None])[:, 0] / levL).astype(np.float64)
    # Forming α (a level's groups, d + 2 terms; the level means double-doubles rounded to
    # long double), the float64 α.
    rounding = (tw.A.count + d + 8) * U_LONG * terms * (1 + 1e-6) + U * np.abs(alpha)
    err_alpha = (np.abs(tw.level_meanL[:, :d].astype(np.float64)) @ d_theta
                 + tw.A.sums((tw.n * db_full[tw.B.index])[:, None])[:, 0] / lev * (1 + 1e-9) + rounding)
    ref_a = enc.reference[tw.a]
    b = float(alpha[ref_a])
    a_coef = alpha - alpha[ref_a]
    err_a = err_alpha + err_alpha[ref_a] + 2 * EPS * (np.abs(alpha) + abs(b))
    levels = [None, None]
    levels[tw.a], levels[tw.o] = a_coef, b_full
    coef = Coefficients(theta.copy(), b, levels)
    # Relative errors against ZERO_FLOOR of the largest standardized coefficient.
    n = tw.rows
    Xn = tw.n[:, None] * tw.Z[:, :d]
    sd_x = np.sqrt(np.maximum(np.diag(tw.W)[:d] + np.einsum("ij,ij->j", Xn, tw.Z[:, :d]), 0) / n)
    p_a, p_b = lev / n, enc.mass[tw.o] / n
    sd_a, sd_b = np.sqrt(np.maximum(p_a * (1 - p_a), 1e-300)), np.sqrt(np.maximum(p_b * (1 - p_b), 1e-300))
    s = max(float(np.max(np.abs(theta) * sd_x, initial=0.0)), float(np.max(np.abs(b_full) * sd_b)),
            float(np.max(np.abs(a_coef) * sd_a)))
    floor = max(ZERO_FLOOR * s, 1e-300)
    worst = [err_alpha[ref_a] / max(abs(b) - err_alpha[ref_a], floor)]
    if d:
        worst.append(float(np.max(d_theta / np.maximum(np.abs(theta) - d_theta, floor / np.maximum(sd_x, 1e-300)))))
    nr = tw.nonref
    worst.append(float(np.max(d_beta / np.maximum(np.abs(b_full[nr]) - d_beta, floor / sd_b[nr]))))
    others = np.delete(np.arange(len(a_coef)), ref_a)
    if len(others):
        e = err_a[others]
        worst.append(float(np.max(e / np.maximum(np.abs(a_coef[others]) - e, floor / sd_a[others]))))
    bound = max(worst)
    if not np.isfinite(bound) or bound < 0:
        bound = np.inf
    # Σ w·e²: within the groups, then between them.
    v = np.append(-theta, 1.0)
    e = tw.Z[:, d] - tw.Z[:, :d] @ theta - b_full[tw.B.index]
    e = tw._center(e[:, None])[:, 0]
    sse = float(v @ tw.W @ v) + float(tw.n @ (e * e))
    err_levels = [None, None]
    err_levels[tw.a], err_levels[tw.o] = err_a, db_full
    err_a[ref_a] = 0.0
    return coef, float(bound), sse, Coefficients(d_theta, float(err_alpha[ref_a]), err_levels)


def _dd_bincount(index, hi, lo, L: int):
    """Σ of a double-double per level, as a double-double (``exact_bincount`` of each part)."""
    h1, l1 = exact_bincount(index, hi, L)
    h2, l2 = exact_bincount(index, lo, L)
    return dd_add(h1, l1, h2, l2)


def _dd_level_sums(levels: _Levels, hi, lo):
    """Σ over each level's groups of a double-double (G × m): (hi, lo, a bound on what
    that is off by: each part's ``exact_bincount`` within count²·u²·σ, σ ≤ 4·Σ|part|,
    and the addition of the two)."""
    L = len(levels.count)
    out_h, out_l = np.zeros((L, hi.shape[1])), np.zeros((L, hi.shape[1]))
    err = np.zeros((L, hi.shape[1]))
    c2 = (levels.count.astype(np.float64) + 1) ** 2 * U * U
    for j in range(hi.shape[1]):
        h, lo_ = _dd_bincount(levels.index, hi[:, j], lo[:, j], L)
        out_h[:, j], out_l[:, j] = h, lo_
        err[:, j] = c2 * 4 * (np.abs(hi[:, j]).sum() + np.abs(lo[:, j]).sum()) + DD_OP * np.abs(h)
    return out_h, out_l, err * (1 + 1e-6)
