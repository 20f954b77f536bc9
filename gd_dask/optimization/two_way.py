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

The certificate (``two_way_bounds``). With δ = (δθ, δβ) the error and r = (r_x, r_B)
the exact residual (computed in double-double, what it is off by, ρ, bounded:
``residual``), block elimination gives

    δθ = Σ⁻¹ (r_x − Kᵀ r_B),   δβ = S_BB⁻¹ r_B − K δθ.

- S_BB⁻¹ v for v ≥ 0 is bounded entry by entry (``inverse_bound``). S_BB's off-diagonal
  entries are ≤ 0, so a P > 0 with S_BB P ≥ v > 0, checked with every sum's rounding
  bounded, proves S_BB a nonsingular M-matrix, whose inverse is ≥ 0 entrywise, and then
  S_BB⁻¹ v ≤ P. No eigenvalue bound is needed, and every level gets its own bound.
- Hence |δβ| ≤ S_BB⁻¹(|r_B| + ρ_B) + |K|·|δθ|; K's error is S_BB⁻¹ R, R its residual,
  bounded the same way.
- |δθ| ≤ |Σ⁻¹|·(|r_x| + ρ_x + |K|ᵀ(|r_B| + ρ_B)) entry by entry, from an inverse of Σ̂
  and its residual (``two_way_bounds.SchurInverse``): Σ differs from the Σ̂ computed
  with K̂ by S_xB (K − K̂) = Kᵀ R, so ``‖Σ − Σ̂‖ ≤ ‖|K|ᵀ|R|‖`` plus Σ̂'s rounding.

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

from ..kernels.compensated import DD_OP, dd_add, dd_bincount, dd_div
from ..kernels.groups import GroupMoments
from . import two_way_bounds as bounds
from .categorical import Coefficients, Encoding
from .certify import U

#: Conjugate-gradient iterations per solve, at most.
MAX_ITERATIONS = 20000
#: A solve stops when every column's residual is this small against its right-hand side.
SOLVE_RTOL = 1e-12
#: A step's solve (``solve_step``) stops when its residual is this small against its first.
STEP_RTOL = 1e-10
#: Columns of the groups' data formed (``TwoWay``) or multiplied by S_BB (``s_bb``) at a
#: time: G values each (``many_way``'s indicators made them dozens).
COLUMN_BLOCK = 8
#: Corrections from the double-double residual, at most.
MAX_REFINEMENTS = 6


class TwoWayFit(NamedTuple):
    """coef : the model;  bound : the largest relative error of any coefficient;  errors :
    each coefficient's bound on its absolute error (as ``Coefficients``);
    iterations : conjugate-gradient iterations in all;  refinements : corrections;
    sse : Σ w·(y − ŷ)² at the solution;  sigma : the numeric block's Schur complement
    S_xx − S_xB S_BB⁻¹ S_Bx (d × d), for the slopes' covariance;  params : the parameters
    besides the numeric slopes (every level of A, B's free levels);  x_levels : per numeric
    feature, its own least-squares fit on the two columns' levels (as ``Coefficients``'
    ``levels``: A's intercepts, B's coefficients), which HC1's middle takes off the rows;
    rejudge : the judgement of the same solution with the system's right-hand side off by
    up to (c_x, c_A, c_B) more, entry by entry (every level of each column): an IRLS
    step's gradient rounding and the Hessian's change (``jobs.categorical_irls``)"""

    coef: Coefficients
    bound: float
    errors: Coefficients
    iterations: int
    refinements: int
    sse: float
    sigma: np.ndarray
    params: int
    x_levels: list
    rejudge: object = None  # (c_x, c_A, c_B) -> (coef, bound, sse, errors): ``two_way_bounds.carried``


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

    def __init__(self, groups: GroupMoments, enc: Encoding, exact: bool = True):
        """``exact``: False forms the solver's float64 data alone (X̃, ỹ from the groups'
        float64 means), for a solve that is not to be certified (``fit_two_way``)."""
        a = enc.absorbed
        o = 1 - a
        self.enc, self.a, self.o = enc, a, o
        la = np.searchsorted(enc.levels[a], groups.keys[:, a])
        lb = np.searchsorted(enc.levels[o], groups.keys[:, o])
        LA, LB = len(enc.levels[a]), len(enc.levels[o])
        self.A, self.B = _Levels.of(la, LA), _Levels.of(lb, LB)
        k = groups.within.shape[0]
        self.d = k - 1
        self.W = groups.within
        self.ref = enc.reference[o]
        self.nonref = enc.non_reference(o)
        self.E = len(self.nonref)
        self.rows = groups.rows
        G = len(groups.n)
        if not exact:
            self.n, self.level_n = groups.n, np.bincount(la, groups.n, LA)
            self.level_mean, self.Z = np.empty((LA, k)), np.empty((G, k), order="F")
            for lo in range(0, k, COLUMN_BLOCK):
                J = slice(lo, min(lo + COLUMN_BLOCK, k))
                mean = groups.block(J)[2]  # float64 means: the solver's alone
                self.level_mean[:, J] = self.A.sums(groups.n[:, None] * mean) / self.level_n[:, None]
                self.Z[:, J] = mean - self.level_mean[la, J]
            self.diag = self._diagonal()
            return
        # The certificate's data in double-double, from the groups' exact sums: Σw per group
        # and per A-level, X̃ and ỹ (each group's means less its A-level's). The solver's in
        # float64; the A-levels' means in long double for α.
        self.n2 = (groups.n, groups.n_lo)
        self.level_n2 = dd_bincount(la, groups.n, groups.n_lo, LA)
        self.n, self.level_n = groups.n, self.level_n2[0] + self.level_n2[1]
        # What each entry of X̃, ỹ may be off by: a group's sum is exact but for m²·u²·σ
        # (``compensated.exact_bincount``: m its rows in one call, at most all of its rows
        # however they were batched: the categorical pass's 16 slices, an IRLS plan's
        # whole chunk; σ ≤ 4 × a call's Σ|w·z|, itself ≤ Σ_g (Σw·|mean| + √(Σw·m2)) by
        # Cauchy–Schwarz), merged in double-double; then the double-double division and
        # subtraction (a level mean's own error shifts its groups alike, which (I − P_A)
        # removes). (m had been capped at a slice's rows: short of a batch's.)
        # ``COLUMN_BLOCK`` columns at a time: G values each, a dozen arrays.
        # Column-major: the solver and its certificate read X̃ a column or a block of
        # columns at a time (a column of a row-major G × k array touches every row's cache line).
        Zh, Zl, self.Z_err = (np.empty((G, k), order="F") for _ in range(3))
        lmh, lml = np.empty((LA, k)), np.empty((LA, k))
        unit = groups.count * groups.count * U * U / groups.n
        for lo in range(0, k, COLUMN_BLOCK):
            J = slice(lo, min(lo + COLUMN_BLOCK, k))
            total, total_lo, g_mean, m2, exact = groups.block(J)
            # A mean that is its total's exact quotient (an indicator's 0 or 1) is its own
            # double-double: dd_div would return it as it is.
            mean = (g_mean.copy(), np.zeros_like(g_mean))
            if not exact.all():
                q = dd_div(total[:, ~exact], total_lo[:, ~exact], groups.n[:, None], groups.n_lo[:, None])
                mean[0][:, ~exact], mean[1][:, ~exact] = q
            level_total = [dd_bincount(la, total[:, j], total_lo[:, j], LA) for j in range(total.shape[1])]
            lh = np.column_stack([t[0] for t in level_total])
            ll = np.column_stack([t[1] for t in level_total])
            lmh[:, J], lml[:, J] = dd_div(lh, ll, self.level_n2[0][:, None], self.level_n2[1][:, None])
            Zh[:, J], Zl[:, J] = dd_add(mean[0], mean[1], -lmh[la, J], -lml[la, J])
            sigma = 4 * np.sum(groups.n[:, None] * np.abs(g_mean) + np.sqrt(np.maximum(groups.n[:, None] * m2, 0)),
                               axis=0)
            self.Z_err[:, J] = 4 * DD_OP * (np.abs(g_mean) + np.abs(Zh[:, J])) + unit[:, None] * sigma * (1 + 1e-6)
        self.Z2, self.Z = (Zh, Zl), Zh
        self.level_meanL = lmh.astype(np.longdouble) + lml.astype(np.longdouble)
        self.level_mean = self.level_meanL.astype(np.float64)
        self.diag = self._diagonal()

    def _diagonal(self):
        """S_BB's diagonal (the preconditioner): positive, every level linked to a
        reference (``categorical.unlinked``)."""
        return self.B.sums((self.n * (1.0 - self.n / self.level_n[self.A.index]))[:, None])[self.nonref, 0]

    # -- products with S_BB and its pieces in float64, for the solver

    def center(self, t):
        """(I − P_A) t: t less its Σw-weighted mean over each A-level's groups."""
        return t - (self.A.sums(self.n[:, None] * t) / self.level_n[:, None])[self.A.index]

    def gather(self, beta):
        """B β per group (0 at the reference level)."""
        full = np.zeros((len(self.enc.levels[self.o]), beta.shape[1]), dtype=beta.dtype)
        full[self.nonref] = beta
        return full[self.B.index]

    def s_bb(self, beta):
        """S_BB β = Bᵀ N (I − P_A) B β for a matrix of columns β (E × m): ``center(gather(β))``
        summed per level of B, with a column per row of an (m × G) array, where bincount
        reads contiguous weights (1.7 × faster on 1M groups than rows of G × m)."""
        m = beta.shape[1]
        out = np.empty((m, self.E))
        for lo in range(0, m, COLUMN_BLOCK):
            J = slice(lo, min(lo + COLUMN_BLOCK, m))
            full = np.zeros((J.stop - lo, len(self.enc.levels[self.o])))
            full[:, self.nonref] = beta[:, J].T
            t = np.take(full, self.B.index, axis=1)
            nt = t * self.n
            means = np.stack([np.bincount(self.A.index, weights=r, minlength=len(self.level_n)) for r in nt])
            t -= np.take(means / self.level_n, self.A.index, axis=1)
            t *= self.n
            sums = np.stack([np.bincount(self.B.index, weights=r, minlength=full.shape[1]) for r in t])
            out[J] = sums[:, self.nonref]
        return out.T

    def rhs(self):
        """[S_Bx, s_B] (E × (d + 1)) and [S_xx, s_x] (d × (d + 1)) in float64, for the solver."""
        Zc = self.center(self.Z)
        nZ = self.n[:, None] * Zc
        return self.B.sums(nZ)[self.nonref], self.W[:self.d] + self.Z[:, :self.d].T @ nZ

    def pcg(self, rhs, rtol: float | None = None):
        """S_BB X = rhs by conjugate gradients preconditioned by S_BB's diagonal, every column
        at once; (X, iterations)."""
        rtol = SOLVE_RTOL if rtol is None else rtol
        return conjugate_gradients(self.s_bb, lambda r: r / self.diag[:, None], np.zeros_like(rhs), rhs.copy(),
                                   rtol * np.linalg.norm(rhs, axis=0))


def conjugate_gradients(product, precondition, x, r, target):
    """Preconditioned conjugate gradients for every column of x (n × m) at once, from x
    with residual r = b − product(x), until each column's residual norm is at most its
    ``target`` (or no column can move: pᵀq ≤ 0 in all); (x, iterations)."""
    z = precondition(r)
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    it = 0
    while it < MAX_ITERATIONS and (np.linalg.norm(r, axis=0) > target).any():
        q = product(p)
        pq = np.einsum("ij,ij->j", p, q)
        if not (pq > 0).any():
            break
        alpha = np.divide(rz, pq, out=np.zeros_like(rz), where=pq > 0)
        x += alpha * p
        r -= alpha * q
        z = precondition(r)
        rz_new = np.einsum("ij,ij->j", r, z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta * p
        rz = rz_new
        it += 1
    return x, it


def fit_two_way(groups: GroupMoments, enc: Encoding, tol: float, certified: bool = True,
                identified=None) -> TwoWayFit:
    """The least-squares model and its certified bound (module docstring); ``certified``:
    False gives the float64 solve alone, its bound inf (an IRLS step far from the
    minimum, where only the direction matters); ``identified``: called with Σ before it
    is solved, to refuse a singular one by name (``many_way.check_identified``).
    ``groups``: a ``GroupMoments`` or ``many_way.LiftedGroups``."""
    if not certified:
        return _solved(groups, enc, identified)
    tw = TwoWay(groups, enc)
    d = tw.d
    rhs_B, rhs_x = tw.rhs()
    K, iterations = tw.pcg(rhs_B)
    Kx, Ky = K[:, :d], K[:, d]
    sigma, R, rho_sigma, rho_R = bounds.k_residual(tw, Kx)
    sigma = (sigma + sigma.T) / 2
    if identified is not None:
        identified(sigma)
    eps_K = bounds.inverse_bound(tw, np.abs(R) + rho_R)          # |K − K̂| entry by entry
    K_abs = np.abs(Kx) + eps_K
    # Σ − Σ̂ = −Kᵀ R exactly (module docstring), plus Σ̂'s rounding.
    err_sigma = float(np.linalg.norm(K_abs.T @ (np.abs(R) + rho_R))) + float(np.linalg.norm(rho_sigma))
    schur = bounds.SchurInverse(sigma, err_sigma)
    theta = np.linalg.solve(sigma, rhs_x[:, d] - rhs_B[:, :d].T @ Ky) if d else np.zeros(0)
    # The solution is refined in double-double: its float64 rounding then adds to the
    # bound itself, not through S⁻¹ and the residual it leaves.
    theta = (theta, np.zeros(d))
    beta = (Ky - Kx @ theta[0], np.zeros(len(Ky)))
    refinements, best, prev = 0, None, np.inf
    while True:
        r_x, r_B, rho_x, rho_B = (v[:, 0] for v in bounds.residual(
            tw, [d], (theta[0][:, None], theta[1][:, None]), (beta[0][:, None], beta[1][:, None])))
        # The float64 solve is never certified to tol: correct it once before judging.
        if refinements or not MAX_REFINEMENTS:
            a_x, a_B = np.abs(r_x) + rho_x, np.abs(r_B) + rho_B
            judged = _judged(tw, theta, beta, a_x, a_B, K_abs, schur)
            if best is None or judged[1] < best[1]:
                best, at = judged, (theta, beta, a_x, a_B)
            if judged[1] <= tol or refinements >= MAX_REFINEMENTS or judged[1] >= prev / 2:
                break
            prev = judged[1]
        # A correction: the same elimination for the right-hand side r.
        c0, it = tw.pcg(r_B[:, None], rtol=1e-10)
        iterations += it
        dt = np.linalg.solve(sigma, r_x - rhs_B[:, :d].T @ c0[:, 0]) if d else np.zeros(0)
        theta = dd_add(*theta, dt, np.zeros(d))
        beta = dd_add(*beta, c0[:, 0] - Kx @ dt, np.zeros(len(c0)))
        refinements += 1
    coef, bound, sse, errors = best

    def rejudge(c_x, c_A, c_B):
        theta, beta, a_x, a_B = at
        e_x, e_B, e_alpha = bounds.carried(tw, c_x, c_A, c_B)
        return _judged(tw, theta, beta, a_x + e_x, a_B + e_B, K_abs, schur, e_alpha)

    return TwoWayFit(coef, bound, errors, iterations, refinements, sse, sigma, len(tw.level_n) + tw.E,
                     _x_levels(tw, Kx), rejudge)


def _solved(groups: GroupMoments, enc: Encoding, identified=None) -> TwoWayFit:
    """``fit_two_way`` in float64, not certified: K by conjugate gradients, θ from the
    Schur complement Σ, β = K_y − K_x·θ, A's levels from their means."""
    tw = TwoWay(groups, enc, exact=False)
    d = tw.d
    rhs_B, rhs_x = tw.rhs()
    K, iterations = tw.pcg(rhs_B, rtol=1e-10)
    Kx, Ky = K[:, :d], K[:, d]
    e = tw.center(tw.Z[:, :d] - tw.gather(Kx))
    sigma = tw.W[:d, :d] + tw.Z[:, :d].T @ (tw.n[:, None] * e)
    sigma = (sigma + sigma.T) / 2
    if identified is not None:
        identified(sigma)
    theta = np.linalg.solve(sigma, rhs_x[:, d] - rhs_B[:, :d].T @ Ky) if d else np.zeros(0)
    coef = _float64_model(tw, theta, Ky - Kx @ theta)
    return TwoWayFit(coef, np.inf, None, iterations, 0, np.nan, sigma, len(tw.level_n) + tw.E, [])


def _float64_model(tw: TwoWay, theta, beta) -> Coefficients:
    """The model from an uncertified (θ, β): A's levels from their means,
    ``α_ℓ = ȳ_ℓ − x̄_ℓ·θ − B̄_ℓ·β``, the intercept A's reference's."""
    d = tw.d
    b_full = np.zeros(len(tw.enc.levels[tw.o]))
    b_full[tw.nonref] = beta
    bbar = tw.A.sums((tw.n * b_full[tw.B.index])[:, None])[:, 0] / tw.level_n
    alpha = tw.level_mean[:, d] - tw.level_mean[:, :d] @ theta - bbar
    ref_a = tw.enc.reference[tw.a]
    levels = [None, None]
    levels[tw.a], levels[tw.o] = alpha - alpha[ref_a], b_full
    return Coefficients(theta, float(alpha[ref_a]), levels)


def solve_step(groups: GroupMoments, enc: Encoding, start: Coefficients | None = None) -> TwoWayFit:
    """``fit_two_way(..., certified=False)``'s model by one system instead of d + 1: an IRLS
    step far from the minimum, where only its direction matters and no Σ is kept.
    Conjugate gradients on the whole normal equations in (θ, β),

        [S_xx  S_xB] [θ]   [s_x]
        [S_Bx  S_BB] [β] = [s_B],

    preconditioned by S_xx⁻¹ (d × d, dense) and S_BB's diagonal, from ``start`` (the
    current model: the step's end point is near it once steps are small). A product
    with the system is one gather, one sum per level of A and of B, and two products with
    X̃ (G × d), where K's d + 1 right-hand sides took d + 1 of each per iteration: on
    57 columns (``many_way``) the step took some 20 × less."""
    tw = TwoWay(groups, enc, exact=False)
    d = tw.d
    X = tw.Z[:, :d]
    rhs_B, rhs_x = tw.rhs()
    s_xx = (rhs_x[:, :d] + rhs_x[:, :d].T) / 2
    b = np.concatenate((rhs_x[:, d], rhs_B[:, d]))
    chol = np.linalg.cholesky(s_xx) if d else np.zeros((0, 0))
    W = tw.W[:d, :d]

    def product(v):
        u, p = v[:d, 0], v[d:]
        nt = tw.n[:, None] * tw.center((X @ u)[:, None] + tw.gather(p))
        return np.concatenate(((W @ u)[:, None] + X.T @ nt, tw.B.sums(nt)[tw.nonref]))

    def precondition(r):
        u = np.linalg.solve(chol.T, np.linalg.solve(chol, r[:d])) if d else r[:0]
        return np.concatenate((u, r[d:] / tw.diag[:, None]))

    x = np.zeros((len(b), 1))
    if start is not None:
        x[:d, 0] = np.asarray(start.m, dtype=np.float64)
        x[d:, 0] = np.asarray(start.levels[tw.o], dtype=np.float64)[tw.nonref]
    r = b[:, None] - product(x)
    # The step x − start to STEP_RTOL of its own size, however near start it ends (a
    # residual relative to ‖b‖ alone left the last steps at float64's κ·u and cost a
    # second certified solve), and no further than float64's reach.
    target = max(STEP_RTOL * float(np.linalg.norm(r)), U * float(np.linalg.norm(b)))
    x, it = conjugate_gradients(product, precondition, x, r, np.array([target]))
    x = x[:, 0]
    return TwoWayFit(_float64_model(tw, x[:d], x[d:]), np.inf, None, it, 0, np.nan, None, len(tw.level_n) + tw.E, [])


def _x_levels(tw: TwoWay, Kx) -> list:
    """Each numeric feature's least-squares fit on the levels: β^x = K's column on B's
    levels, and α^x_ℓ = x̄_ℓ − B̄_ℓ·β^x on A's (float64: for standard errors)."""
    out = []
    for j in range(tw.d):
        b_full = np.zeros(len(tw.enc.levels[tw.o]))
        b_full[tw.nonref] = Kx[:, j]
        bbar = tw.A.sums((tw.n * b_full[tw.B.index])[:, None])[:, 0] / tw.level_n
        levels = [None, None]
        levels[tw.a], levels[tw.o] = tw.level_meanL[:, j].astype(np.float64) - bbar, b_full
        out.append(levels)
    return out


def _judged(tw: TwoWay, theta, beta, a_x, a_B, K_abs, schur: bounds.SchurInverse, e_alpha=None):
    """(the model, its bound, Σ w·e², its absolute bounds) at the double-double (θ, β)
    whose residual is at most a_x, a_B in absolute value: |δβ| ≤ S_BB⁻¹a_B + |K|·|δθ|,
    |δθ| ≤ |Σ⁻¹|(a_x + |K|ᵀa_B) entry by entry (module docstring,
    ``two_way_bounds.SchurInverse``); the float64 model is the pairs' high parts, off by
    their low parts. ``e_alpha``: what A's levels are off by besides
    (``two_way_bounds.carried``)."""
    q = bounds.inverse_bound(tw, a_B[:, None])[:, 0]
    d_theta = schur.bound(a_x + K_abs.T @ a_B)
    d_beta = q + K_abs @ d_theta
    return bounds.judge(tw, theta[0], beta[0], d_theta + np.abs(theta[1]), d_beta + np.abs(beta[1]), e_alpha)
