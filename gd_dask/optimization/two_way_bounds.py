"""The certificate of the two-column solver (``optimization.two_way``): the residual of
the whole system in double-double with a bound on what it is off by, the entrywise bound
on S_BB⁻¹v through S_BB's M-matrix structure, K's residual, and the judgement of a
solution, coefficient by coefficient. Pure NumPy on the client; the arithmetic of each
bound is in the function that forms it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.compensated import DD_OP, dd_add, dd_bincount, dd_div, dd_mul
from .categorical import Coefficients
from .certify import EPS, EPS_LONG, U, ZERO_FLOOR, sums_accuracy

if TYPE_CHECKING:
    from .two_way import TwoWay

#: The unit roundoff of long double.
U_LONG = EPS_LONG / 2


def center_dd(tw: TwoWay, eh, el, err):
    """(I − P_A) e for e = eh + el (G × m) off by at most ``err``: (hi, lo, its bound)."""
    nh, nl = tw.n2[0][:, None], tw.n2[1][:, None]
    lh, ll = tw.level_n2[0][:, None], tw.level_n2[1][:, None]
    neh, nel = dd_mul(nh, nl, eh, el)
    n_abs = np.abs(nh) * np.abs(eh)
    sh, sl, s_err = dd_level_sums(tw.A, neh, nel)
    ch, cl = dd_div(sh, sl, lh, ll)
    c_err = ((s_err + tw.A.sums(nh * err + DD_OP * n_abs)) / lh + DD_OP * np.abs(ch)) * (1 + 1e-6)
    A = tw.A.index
    oh, ol = dd_add(eh, el, -ch[A], -cl[A])
    return oh, ol, err + c_err[A] + DD_OP * (np.abs(eh) + np.abs(ch[A]))

def _columns(tw: TwoWay, d: int):
    """(j, X̃_j's high and low parts as G × 1, its error bound) for the first d columns
    (``TwoWay`` holds them column-major: each is contiguous)."""
    Zh, Zl = tw.Z2
    for j in range(d):
        yield j, Zh[:, j:j + 1], Zl[:, j:j + 1], tw.Z_err[:, j]


def residual(tw: TwoWay, cols, theta, beta):
    """The residual of the normal equations at (θ, β) (double-double pairs, d × m and
    E × m) for the targets z = the columns ``cols`` of [X̃, ỹ]: ``r_x = W_xz − W_xx θ +
    X̃ᵀ N e`` and ``r_B = Bᵀ N e`` with ``e = (I − P_A)(z − X̃θ − Bβ)``, in double-double,
    rounded to float64; and bounds ρ_x, ρ_B on how far each is from the exact residual
    of the data as given, the rounding of X̃ and z (``Z_err``) included. For the target
    ỹ: the whole system's residual; for X̃ with θ = 0: r_x is Σ̂ and r_B is K's
    residual."""
    d = tw.d
    Zh, Zl = tw.Z2
    th, tl = theta
    eh, el = Zh[:, cols].copy(), Zl[:, cols].copy()
    mag = np.abs(eh)
    for j, zh, zl, _ in _columns(tw, d):
        ph, pl = dd_mul(zh, zl, th[[j]], tl[[j]])
        eh, el = dd_add(eh, el, -ph, -pl)
        mag = mag + np.abs(zh) * np.abs(th[[j]])
    bh, bl = tw.gather(beta[0]), tw.gather(beta[1])
    eh, el = dd_add(eh, el, -bh, -bl)
    mag = mag + np.abs(bh)
    err = (2 * d + 2) * DD_OP * mag * (1 + 1e-6)
    # The data's own error, centred as e is.
    data = tw.Z_err[:, cols] + tw.Z_err[:, :d] @ np.abs(th)
    data = data + tw.A.sums(tw.n[:, None] * data)[tw.A.index] / tw.level_n[tw.A.index, None]
    eh, el, err = center_dd(tw, eh, el, err + data)
    nh, nl = tw.n2[0][:, None], tw.n2[1][:, None]
    neh, nel = dd_mul(nh, nl, eh, el)
    ne_abs = np.abs(nh) * np.abs(eh)
    ne_err = (nh * err + DD_OP * ne_abs) * (1 + 1e-6)
    rbh, rbl, rb_err = dd_level_sums(tw.B, neh, nel)
    rho_B = rb_err + tw.B.sums(ne_err)
    # r_x: W's terms, then Σ_g X̃_g·(N e)_g summed pairwise.
    W = tw.W
    r_x = np.zeros((d, len(cols)))
    rho_x = np.zeros((d, len(cols)))
    one = np.zeros(len(tw.n), dtype=np.int64)
    chain = (len(tw.n) + 1.0) ** 2 * U * U * 4
    w_x = np.sqrt(np.maximum(np.diag(W)[:d], 0))
    w_z = np.sqrt(np.maximum(np.diag(W)[cols], 0))
    for j, zh, zl, z_err in _columns(tw, d):
        hi, lo = dd_mul(zh, zl, neh, nel)
        total = [dd_bincount(one, hi[:, c], lo[:, c], 1) for c in range(len(cols))]
        sh, sl = np.array([t[0][0] for t in total]), np.array([t[1][0] for t in total])
        for k in range(d):
            ph, pl = dd_mul(np.full_like(th[k], W[j, k]), np.zeros_like(th[k]), th[k], tl[k])
            sh, sl = dd_add(sh, sl, -ph, -pl)
        sh, sl = dd_add(sh, sl, W[j, cols], np.zeros(len(cols)))
        r_x[j] = sh + sl
        mag_x = np.abs(zh[:, 0]) @ ne_abs
        rho_x[j] = ((chain + 2 * DD_OP) * mag_x + np.abs(zh[:, 0]) @ ne_err + z_err @ ne_abs
                    + (d + 2) * DD_OP * (np.abs(W[j, :d]) @ np.abs(th) + np.abs(W[j, cols]))
                    # W's own accuracy, as moments' (|W_ij| ≤ √(W_ii·W_jj)).
                    + sums_accuracy(tw.rows) * w_x[j] * (w_z + w_x @ np.abs(th)))
    r_B = (rbh + rbl)[tw.nonref]
    rho_x = rho_x * (1 + 1e-6) + U * np.abs(r_x)
    rho_B = rho_B[tw.nonref] * (1 + 1e-6) + U * np.abs(r_B)
    return r_x, r_B, rho_x, rho_B

#: Columns ``k_residual`` and ``s_bb_lower`` form at a time (G values each, a dozen
#: arrays: memory with many columns, ``many_way``'s indicators).
K_BLOCK = 8


def inverse_bound(tw: TwoWay, v):
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
    p, _ = tw.pcg(v_up, rtol=1e-6)
    for precise in (False, True):
        for factor in (1.01, 1.1, 2.0):
            P = p * factor
            if (P > 0).all() and (s_bb_lower(tw, P, precise) >= v).all():
                out[:, live] = P
                return out
    out[:, live] = np.inf
    return out

def s_bb_lower(tw: TwoWay, P, precise: bool = False):
    """A lower bound, entry by entry, on the exact S_BB P: computed in float64, each
    sum's rounding counted by its length (``precise``: in double-double); ``K_BLOCK``
    columns of P at a time (each G values, a dozen arrays)."""
    m = P.shape[1]
    if m <= K_BLOCK:
        return _s_bb_lower(tw, P, precise)
    return np.column_stack([_s_bb_lower(tw, P[:, lo:lo + K_BLOCK], precise) for lo in range(0, m, K_BLOCK)])


def _s_bb_lower(tw: TwoWay, P, precise: bool):
    """``s_bb_lower`` of a few columns."""
    t = tw.gather(P)
    if precise:
        th, tl, err = center_dd(tw, t, np.zeros_like(t), np.zeros_like(t))
        nh, nl = tw.n2[0][:, None], tw.n2[1][:, None]
        neh, nel = dd_mul(nh, nl, th, tl)
        sh, sl, s_err = dd_level_sums(tw.B, neh, nel)
        bound = s_err + tw.B.sums(nh * err + DD_OP * np.abs(nh) * np.abs(th))
        return ((sh + sl) - bound * (1 + 1e-6) - U * np.abs(sh))[tw.nonref] - 1e-300
    n, lev, A = tw.n[:, None], tw.level_n[:, None], tw.A.index
    ta = np.abs(t)
    c = tw.A.sums(n * t) / lev
    # A level's sum, Σw's own rounding (n is Σw's high part), the division.
    c_err = ((tw.A.count + 4) * U)[:, None] * tw.A.sums(n * ta) / lev
    e = t - c[A]
    err = c_err[A] + U * (np.abs(e) + ta)
    out = tw.B.sums(n * e)
    bound = ((tw.B.count + 3) * U)[:, None] * tw.B.sums(n * (np.abs(e) + ta + np.abs(c[A]))) \
        + tw.B.sums(n * err)
    return (out - bound * (1 + 1e-6))[tw.nonref] - 1e-300

def k_residual(tw: TwoWay, K):
    """(Σ̂, R, ρ_Σ, ρ_R) for K ≈ S_BB⁻¹ S_Bx (E × d), in float64: R = S_Bx − S_BB K, the
    residual, and Σ̂ = S_xx − S_xB K, with bounds on what each is off by from the exact
    values for the data as given (``Z_err``, and X̃'s float64 rounding). K only enters
    the certificate through small terms (|K − K̂|·|δθ|, and λmin(Σ) to a few digits), so
    float64 suffices: each sum's rounding is counted by its length. ``K_BLOCK`` columns
    at a time, each pair of blocks for Σ̂ (|X̃| formed anew for each)."""
    d = tw.d
    X = tw.Z[:, :d]
    n = tw.n[:, None]
    lev = tw.level_n[:, None]
    A = tw.A.index
    w_x = np.sqrt(np.maximum(np.diag(tw.W)[:d], 0))
    sigma, rho_sigma = np.empty((d, d)), np.empty((d, d))
    R, rho_R = np.empty((tw.E, d)), np.empty((tw.E, d))
    blocks = [slice(lo, min(lo + K_BLOCK, d)) for lo in range(0, d, K_BLOCK)]

    for J in blocks:
        t = X[:, J] - tw.gather(K[:, J])
        err = U * np.abs(t)
        c = tw.A.sums(n * t) / lev
        c_err = (((tw.A.count + 2) * U)[:, None] * tw.A.sums(n * np.abs(t)) + tw.A.sums(n * err)) / lev \
            + U * np.abs(c)
        e = t - c[A]
        err = err + c_err[A] + U * np.abs(e)
        x_err_J = tw.Z_err[:, J] + U * np.abs(X[:, J])
        data = x_err_J + tw.A.sums(n * x_err_J)[A] / lev[A]
        ne = n * e
        ne_abs = n * np.abs(e)
        R[:, J] = tw.B.sums(ne)[tw.nonref]
        rho_R[:, J] = (((tw.B.count + 2) * U)[:, None] * tw.B.sums(ne_abs)
                       + tw.B.sums(n * (err + data)))[tw.nonref]
        # (G + 2)·u·|X̃|ᵀ|Ne| + |X̃|ᵀ(N·(err + data)) + x_errᵀ|Ne|, x_err = Z_err + u·|X̃|:
        # two products a pair of blocks, |X̃| formed once a block.
        spread = (len(tw.n) + 3) * U * ne_abs + n * (err + data)
        for I in blocks:
            sigma[I, J] = tw.W[I, J] + X[:, I].T @ ne
            rho_sigma[I, J] = (np.abs(X[:, I]).T @ spread + tw.Z_err[:, I].T @ ne_abs
                               + sums_accuracy(tw.rows) * np.outer(w_x[I], w_x[J]))
    return sigma, R, rho_sigma * (1 + 1e-6), rho_R * (1 + 1e-6)


class SchurInverse:
    """Bounds on |Σ⁻¹v| entry by entry for |v| ≤ a, Σ the exact Schur complement, from
    Σ̂ (computed with K̂) and ``err``, a bound on ‖Σ − Σ̂‖₂.

    With X ≈ Σ̂⁻¹ (float64), Σ⁻¹ = X + Σ⁻¹(I − ΣX), so |Σ⁻¹v| ≤ |X|·a + ‖I − ΣX‖₂·‖a‖₂ /
    λmin(Σ), where ‖I − ΣX‖₂ ≤ ‖fl(I − Σ̂X)‖_F + γ·‖|Σ̂|·|X|‖_F + err·‖X‖_F (γ the
    product's rounding) and λmin(Σ) ≥ λmin(Σ̂) − err less the eigensolver's rounding. The
    second term is some κ·u of the first: each coefficient of the dense block gets its own
    bound, where ‖a‖/λmin(Σ) gave every one the worst (the indicators of a smaller
    column's rare levels set λmin: ``many_way``). The smaller of the two is kept."""

    def __init__(self, sigma: np.ndarray, err: float):
        d = len(sigma)
        self.d = d
        if not d:
            self.lam, self.X_abs, self.tail = np.inf, np.zeros((0, 0)), 0.0
            return
        self.lam = float(np.linalg.eigvalsh(sigma)[0]) - err - 8 * (d + 1) * EPS * float(np.linalg.norm(sigma))
        if not self.lam > 0:  # nothing certified (``bound``)
            return
        X = np.linalg.inv(sigma)
        gamma = (d + 2) * U / (1 - (d + 2) * U)
        resid = (float(np.linalg.norm(np.eye(d) - sigma @ X)) + gamma * float(np.linalg.norm(np.abs(sigma) @ np.abs(X)))
                 + err * float(np.linalg.norm(X)))
        self.X_abs, self.tail = np.abs(X), resid / self.lam * (1 + 1e-6)

    def bound(self, a: np.ndarray) -> np.ndarray:
        """P ≥ |Σ⁻¹v| entry by entry for every |v| ≤ a (a ≥ 0, length d)."""
        if not self.d:
            return np.zeros(0)
        if not self.lam > 0:
            return np.full(self.d, np.inf)
        norm = float(np.linalg.norm(a))
        whole = norm / self.lam
        each = (self.X_abs @ a) * (1 + (self.d + 2) * EPS) + self.tail * norm
        return np.minimum(each, whole)


def judge(tw: TwoWay, theta, beta, d_theta, d_beta, e_alpha=None):
    """(the model, its relative bound, Σ w·e², its absolute bounds) at (θ, β) with |δθ| ≤ d_theta and
    |δβ| ≤ d_beta entry by entry (module docstring); ``e_alpha``: what A's levels are off by
    besides."""
    Ld = np.longdouble
    enc, d = tw.enc, tw.d
    b_full = np.zeros(len(enc.levels[tw.o]))
    b_full[tw.nonref] = beta
    db_full = np.zeros(len(b_full))
    db_full[tw.nonref] = d_beta
    lev = tw.level_n
    # α_ℓ = ȳ_ℓ − x̄_ℓ·θ − B̄_ℓ·β in long double, from the level means as summed;
    # B̄_ℓ·β = Σ_{g∈ℓ} w_g β_b(g) / Σw_ℓ.
    nL = tw.n2[0].astype(Ld) + tw.n2[1].astype(Ld)
    levL = tw.level_n2[0].astype(Ld) + tw.level_n2[1].astype(Ld)
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
    if e_alpha is not None:
        err_alpha = err_alpha + e_alpha
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
    p_a, p_b = lev / n, tw.B.sums(tw.n[:, None])[:, 0] / n  # shares of Σw (an IRLS step's: of Σh)
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
    e = tw.center(e[:, None])[:, 0]
    sse = float(v @ tw.W @ v) + float(tw.n @ (e * e))
    err_levels = [None, None]
    err_levels[tw.a], err_levels[tw.o] = err_a, db_full
    err_a[ref_a] = 0.0
    return coef, float(bound), sse, Coefficients(d_theta, float(err_alpha[ref_a]), err_levels)


def dd_level_sums(levels, hi, lo):
    """Σ over each level's groups of a double-double (G × m): (hi, lo, a bound on what
    that is off by: each part's ``exact_bincount`` within count²·u²·σ, σ ≤ 4·Σ|part|,
    and the addition of the two)."""
    L = len(levels.count)
    out_h, out_l = np.zeros((L, hi.shape[1])), np.zeros((L, hi.shape[1]))
    err = np.zeros((L, hi.shape[1]))
    c2 = (levels.count.astype(np.float64) + 1) ** 2 * U * U
    for j in range(hi.shape[1]):
        h, lo_ = dd_bincount(levels.index, hi[:, j], lo[:, j], L)
        out_h[:, j], out_l[:, j] = h, lo_
        err[:, j] = c2 * 4 * (np.abs(hi[:, j]).sum() + np.abs(lo[:, j]).sum()) + DD_OP * np.abs(h)
    return out_h, out_l, err * (1 + 1e-6)


def carried(tw: TwoWay, c_x, c_A, c_B):
    """The system's right-hand side off by up to c = (c_x, c_A, c_B) ≥ 0 more, entry by
    entry (the equations of the numeric slopes, of every level of A, of every level of B),
    as the reduced system sees it: A's equations are eliminated, α = D_A⁻¹(q_A − H_Ax·θ −
    H_AB·β) with D_A its levels' Σw, so the reduced right-hand sides take −H_xA·D_A⁻¹·q_A
    and −H_BA·D_A⁻¹·q_A, where |H_xA·D_A⁻¹·q_A| ≤ Σ_ℓ |x̄_ℓ|·c_A,ℓ and H_BA ≥ 0 (Σw per
    pair of levels); and α itself takes D_A⁻¹·c_A. (e_x, e_B over B's free levels, e_α)."""
    c_A = np.asarray(c_A, dtype=np.float64)
    share = c_A / tw.level_n                                     # D_A⁻¹·c_A
    xbar = np.abs(tw.level_meanL[:, :tw.d].astype(np.float64))
    e_x = (np.asarray(c_x, dtype=np.float64) + xbar.T @ c_A) * (1 + 1e-9)
    e_B = (np.asarray(c_B, dtype=np.float64)
           + tw.B.sums((tw.n * share[tw.A.index])[:, None])[:, 0]) * (1 + 1e-9)
    return e_x, e_B[tw.nonref], share * (1 + 1e-9)
