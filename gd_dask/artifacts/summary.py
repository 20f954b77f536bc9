"""Classical inference for least squares from the moments alone: no pass over the rows.

For a model y = X·m + b fitted by (weighted) least squares, everything statsmodels' OLS
and WLS tables print follows from n, the means and the co-moments of [X, y]: with the
residual sum of squares ``SSR`` at the fitted coefficients, σ² = SSR / (nobs − k) and
Cov(θ) = σ²·(X̃ᵀWX̃)⁻¹ over X̃ = [X, 1]. Centering keeps it accurate: the slopes'
covariance is σ²·Cxx⁻¹ with Cxx the centered co-moments, solved on the correlation scale;
the intercept's follows as σ²·(1/Σw + x̄ᵀCxx⁻¹x̄), its covariance with the slopes as
−Cov(m)·x̄.

Definitions follow statsmodels (OLS, WLS): ``nobs`` counts rows (not Σw); without an
intercept R² is uncentered; the log-likelihood of WLS adds ½·Σ log w. HC1 replaces σ²·A⁻¹
by nobs/(nobs − k)·A⁻¹·(Σ w²r²·x̃x̃ᵀ)·A⁻¹ (its middle needs one pass over the rows).

Inference holds only for an exact least-squares fit: with l1 or l2 penalties, Huber
loss, or minibatch steps the summary says why not instead of printing numbers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..optimization.certify import sums_accuracy
from ..kernels.distributions import f_upper, t_quantile, t_two_sided, t_two_sided_many
from ..kernels.moments import gram_sums

#: Two-sided level of the confidence intervals.
CONFIDENCE = 0.95


class RowSums(NamedTuple):
    """What the moments lack: rows and Σ log w (weighted data only)."""

    rows: int
    log_w: float


def not_available(cfg) -> str | None:
    """Why classical inference does not hold for this run, or None where it does."""
    m, o = cfg.model, cfg.optimizer
    if m.loss != "squared":
        return f"model.loss {m.loss}: these standard errors are for least squares"
    if m.l1 or m.l2:
        return "penalized fit (l1/l2): the coefficients are biased and the classical covariance does not apply"
    if o.method != "batch":
        return "minibatch steps: the coefficients are not an exact least-squares solution"
    return None


#: The moments' SSR is used where its relative error is at most this; else the caller
#: measures SSR from the residuals (``needs_residual_pass``). The summary promises 9
#: significant digits of every statistic (NIST's certified residual SD, R² and F are
#: checked to 9); SSR to 1e-10 keeps one digit for what is computed from it. (It was
#: 1e-11, which took a second pass over 20M rows for any fit with R² above 0.93.)
SSR_ACCURACY = 1e-10


def moments_ssr(mom, m, b) -> float:
    """SSR at (m, b) from the centered moments, in extended precision (gradient.Gram)."""
    d = mom.mean.shape[0] - 1
    return float(gram_sums(mom, np.asarray(m, dtype=np.float64), b, np.zeros(d), np.ones(d)).loss)


def needs_residual_pass(mom, ssr: float) -> bool:
    """Whether SSR from float64 moments may be off by more than ``SSR_ACCURACY``: it is a
    difference of terms as large as Σ(y − ȳ)², so a near-exact fit (R² → 1) cancels the
    moments' digits (NIST Pontius: R² = 1 − 1e-7)."""
    return sums_accuracy(mom.n) * float(mom.comoment[-1, -1]) > SSR_ACCURACY * ssr


def summarize(mom, m, b, fit_intercept: bool, rows: RowSums | None = None, weighted: bool = False,
              condition_number: float | None = None, meat: np.ndarray | None = None,
              ssr: float | None = None) -> dict:
    """The summary of the least-squares fit (m, b) (original units) of data with moments
    ``mom`` (of [X, y], n = Σw when ``weighted``).

    rows : rows and Σ log w for weighted data (nobs is then the row count); None: nobs = n
    meat : Σ w²·r²·x̃x̃ᵀ over the rows (x̃ = [x, 1]), for HC1 standard errors
    ssr : Σ w·r² measured from the residuals; None: from the moments
    """
    m = np.asarray(m, dtype=np.float64)
    d = m.shape[0]
    k = d + int(fit_intercept)
    sw = float(mom.n)
    nobs = rows.rows if rows is not None else sw
    df_resid = nobs - k
    mean_x, mean_y = mom.mean[:-1], float(mom.mean[-1])
    cxx, cyy = mom.comoment[:-1, :-1], float(mom.comoment[-1, -1])

    ssr = moments_ssr(mom, m, b) if ssr is None else float(ssr)
    sst = cyy if fit_intercept else cyy + sw * mean_y * mean_y
    sigma2 = ssr / df_resid if df_resid > 0 else math.nan

    inv = _inverse_design(cxx, mean_x, sw, fit_intercept)  # (X̃ᵀWX̃)⁻¹
    if meat is not None:
        order = list(range(d)) + ([d] if fit_intercept else [])
        meat = np.asarray(meat, dtype=np.float64)[np.ix_(order, order)]
        cov = inv @ meat @ inv * (nobs / df_resid)
        cov_type = "HC1"
    else:
        cov = sigma2 * inv
        cov_type = "nonrobust"
    coef = np.append(m, b) if fit_intercept else m
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef / se
    p = [t_two_sided(df_resid, float(v)) for v in t]
    q = t_quantile(df_resid, 0.5 + CONFIDENCE / 2)

    r2 = 1.0 - ssr / sst if sst > 0 else math.nan
    k_const = int(fit_intercept)
    df_model = k - k_const
    adj = 1.0 - (nobs - k_const) / df_resid * (1.0 - r2) if df_resid > 0 else math.nan
    if df_model > 0 and df_resid > 0 and ssr > 0:  # F needs residual degrees of freedom
        f = ((sst - ssr) / df_model) / (ssr / df_resid)
        f_p = f_upper(df_model, df_resid, f)
    else:
        f = f_p = math.nan
    llf = -nobs / 2 * (math.log(2 * math.pi) + math.log(ssr / nobs) + 1) if ssr > 0 else math.inf
    if weighted and rows is not None:
        llf += 0.5 * rows.log_w
    names = [f"m[{j}]" for j in range(d)] + (["b"] if fit_intercept else [])
    return {
        "method": "WLS" if weighted else "OLS", "cov_type": cov_type, "nobs": nobs,
        "df_model": df_model, "df_resid": df_resid,
        "coefficients": [
            {"name": names[i], "coef": float(coef[i]), "std_err": float(se[i]), "t": _num(t[i]),
             "p_value": _num(p[i]), "ci_low": float(coef[i] - q * se[i]), "ci_high": float(coef[i] + q * se[i])}
            for i in range(k)],
        "residual_std_err": math.sqrt(sigma2) if sigma2 == sigma2 else None,
        "ssr": ssr, "r2": _num(r2), "r2_adj": _num(adj), "f": _num(f), "f_p_value": _num(f_p),
        "log_likelihood": _num(llf), "aic": _num(-2 * llf + 2 * k), "bic": _num(-2 * llf + k * math.log(nobs)),
        "condition_number": condition_number, "confidence": CONFIDENCE,
    }


def _inverse_design(cxx, mean_x, sw: float, fit_intercept: bool) -> np.ndarray:
    """(X̃ᵀWX̃)⁻¹, slopes first then the intercept, from centered co-moments: the slopes'
    block is Cxx⁻¹ (solved on the correlation scale), the rest by the block inverse."""
    d = cxx.shape[0]
    if not fit_intercept:
        gram = cxx + sw * np.outer(mean_x, mean_x)
        s = np.sqrt(np.diag(gram))
        return np.linalg.inv(gram / np.outer(s, s)) / np.outer(s, s)
    s = np.sqrt(np.diag(cxx))
    cinv = np.linalg.inv(cxx / np.outer(s, s)) / np.outer(s, s)
    out = np.empty((d + 1, d + 1))
    out[:d, :d] = cinv
    cx = cinv @ mean_x
    out[:d, d] = out[d, :d] = -cx
    out[d, d] = 1.0 / sw + float(mean_x @ cx)
    return out


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def table(doc: dict, features: list[str], target: str) -> str:
    """A readable summary table, in the manner of statsmodels'."""
    s = doc
    if s.get("named"):  # rows that name themselves (categorical levels: ``summarize_levels``)
        names = ["(intercept)" if c["name"] == "b" else c["name"] for c in s["coefficients"]]
    else:
        names = list(features) + (["(intercept)"] if len(s["coefficients"]) > len(features) else [])
    lines = [f"{s['method']} regression of {target}: {s['nobs']:g} observations, {s['df_resid']:g} residual df, "
             f"covariance {s['cov_type']}", ""]
    stat = s.get("statistic", "t")
    lines.append(f"{'':>16} {'coef':>14} {'std err':>12} {stat:>9} {f'P>|{stat}|':>9} {'[0.025':>14} {'0.975]':>14}")
    for name, c in zip(names, s["coefficients"]):
        t = "nan" if c["t"] is None else f"{c['t']:.3f}"
        p = "nan" if c["p_value"] is None else f"{c['p_value']:.3g}"
        lines.append(f"{name[:16]:>16} {c['coef']:>14.6g} {c['std_err']:>12.4g} {t:>9} {p:>9} "
                     f"{c['ci_low']:>14.6g} {c['ci_high']:>14.6g}")
    if s.get("absorbed"):
        lines.append(f"{'':>16} levels of {', '.join(s['absorbed'])} absorbed: their coefficients are the model's, "
                     "without standard errors")
    lines.append("")

    def fmt(x):
        return "nan" if x is None else f"{x:.6g}"

    if "deviance" in s:  # a family's (``glm_summary``)
        lines.append(f"deviance: {fmt(s['deviance'])}   Pearson χ²: {fmt(s['pearson_chi2'])}   scale: "
                     f"{fmt(s['scale'])}   log-likelihood: {fmt(s['log_likelihood'])}   AIC: {fmt(s['aic'])}")
        return "\n".join(lines)
    lines.append(f"R²: {fmt(s['r2'])}   adjusted R²: {fmt(s['r2_adj'])}   F: {fmt(s['f'])} "
                 f"(p {fmt(s['f_p_value'])})   residual std err: {fmt(s['residual_std_err'])}")
    lines.append(f"log-likelihood: {fmt(s['log_likelihood'])}   AIC: {fmt(s['aic'])}   BIC: {fmt(s['bic'])}   "
                 f"condition number (standardized design): {fmt(s['condition_number'])}")
    return "\n".join(lines)


def _level_rows(names, coef, var, df_resid: float, q: float) -> list:
    """The summary's rows for many coefficients at once (p-values by ``t_two_sided_many``)."""
    se = np.sqrt(np.maximum(np.asarray(var, dtype=np.float64), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, coef / se, math.nan)
    p = t_two_sided_many(df_resid, t)
    return [{"name": name, "coef": float(c), "std_err": float(s), "t": _num(float(tv)), "p_value": _num(float(pv)),
             "ci_low": float(c - q * s), "ci_high": float(c + q * s)}
            for name, c, s, tv, pv in zip(names, coef, se, t, p)]


def summarize_levels(red, enc, coef, theta, numeric: list[str], level_names: list[list], sst: float,
                     weights: RowSums | None = None, meat=None) -> dict:
    """The summary of a least-squares fit with categorical features (``optimization.
    categorical``), as statsmodels prints ``y ~ x + C(col)``: a row per numeric feature,
    per non-reference level of each categorical column (``col[level]``) and the intercept.

    With S the reduced co-moment, σ² = SSR/(n − p) and w̄_ℓ an absorbed level's means of
    the reduced columns: Var(θ) = σ²·S⁻¹; a level intercept a_ℓ = ȳ_ℓ − w̄_ℓ·θ has
    Var = σ²·(1/n_ℓ + w̄_ℓᵀS⁻¹w̄_ℓ) (ȳ_ℓ is uncorrelated with θ, which depends on the rows'
    deviations from their level's means only), and the absorbed column's coefficient
    a_ℓ − a_ref has σ²·(1/n_ℓ + 1/n_ref + (w̄_ℓ − w̄_ref)ᵀS⁻¹(w̄_ℓ − w̄_ref)).

    With sample weights (``weights``: the row count and Σ log w) n is Σw throughout, as in
    statsmodels' WLS: nobs is the row count, and the log-likelihood gains ½·Σ log w.

    ``meat`` (``kernels.level_meat.LevelMeat``): HC1 standard errors instead, White's
    sandwich times n/(n − p) as statsmodels' ``cov_type="HC1"``: with G = S⁻¹,
    Cov(θ) = G·Ω·G, Cov(θ, u_ℓ) = G·r_ℓ/n_ℓ, Var(u_ℓ) = q_ℓ/n_ℓ² and the u's of two
    levels uncorrelated, so a_ℓ = u_ℓ − w̄_ℓ·δθ and a_ℓ − a_ref follow in closed form."""
    S = red.mom.comoment
    nobs = float(weights.rows if weights is not None else red.mom.n)
    theta = np.asarray(theta, dtype=np.float64)
    k = len(theta)
    L = len(red.level_n)
    p = k + L
    df_resid = nobs - p
    v = np.append(theta, -1.0)
    ssr = max(float(v @ S @ v), 0.0)
    sigma2 = ssr / df_resid if df_resid > 0 else math.nan
    if k:
        s = np.sqrt(np.diag(S)[:-1])
        inv = np.linalg.inv(S[:-1, :-1] / np.outer(s, s)) / np.outer(s, s)
    else:
        inv = np.zeros((0, 0))
    wbar = red.level_mean[:, :-1]
    a = enc.absorbed
    ref = enc.reference[a]
    q = t_quantile(df_resid, 0.5 + CONFIDENCE / 2)

    others = np.delete(np.arange(L), ref)
    if meat is None:
        var_theta = sigma2 * np.diag(inv)
        dw = wbar[others] - wbar[ref]  # the absorbed levels, all at once
        var_levels = sigma2 * (1 / red.level_n[others] + 1 / red.level_n[ref] + np.einsum("ij,jk,ik->i", dw, inv, dw))
        var_b = sigma2 * (1 / red.level_n[ref] + wbar[ref] @ inv @ wbar[ref])
    else:
        var_theta, var_levels, var_b = _hc1_levels(meat, inv, wbar, red.level_n, ref, others, nobs / df_resid)
    names = list(numeric)
    coefs, variances = [theta[:len(numeric)]], [var_theta[:len(numeric)]]
    pos = len(numeric)
    for c, idx in red.indicator:
        names += [f"{enc.columns[c]}[{level_names[c][j]}]" for j in idx]
        coefs.append(theta[pos:pos + len(idx)])
        variances.append(var_theta[pos:pos + len(idx)])
        pos += len(idx)
    names += [f"{enc.columns[a]}[{level_names[a][j]}]" for j in others]
    coefs.append(coef.levels[a][others])
    variances.append(var_levels)
    names.append("b")
    coefs.append([coef.b])
    variances.append([var_b])
    rows = _level_rows(names, np.concatenate(coefs), np.concatenate(variances), df_resid, q)
    return _fit_statistics(rows, nobs, p, ssr, sst, weights, "nonrobust" if meat is None else "HC1")


def summarize_two_way(theta, sigma_inv, numeric: list[str], absorbed: list[str], nobs: float, p: int, ssr: float,
                      sst: float, weights: RowSums | None = None, meat=None) -> dict:
    """The summary of a least-squares fit with two categorical columns of many levels
    (``optimization.two_way``), as reghdfe and pyfixest report one: a row per numeric
    feature, the levels absorbed. With Σ the numeric block's Schur complement (the
    features' co-moment within both columns' levels), Var(θ) = σ²·Σ⁻¹, σ² = SSR/(n − p),
    p counting every level's parameter; the levels' own rows would need the diagonal of
    the inverse over all of them. ``weights``: as ``summarize_levels``. ``meat``: HC1
    instead, Σ⁻¹·Ω·Σ⁻¹·n/(n − p) with Ω = Σ (w·e)²·x̃x̃ᵀ over the rows, x̃ each feature
    less its own fit on the levels (``runtime.level_chunks.chunk_two_way_meat``)."""
    df_resid = nobs - p
    sigma2 = ssr / df_resid if df_resid > 0 else math.nan
    q = t_quantile(df_resid, 0.5 + CONFIDENCE / 2)
    if meat is None:
        var = sigma2 * np.diag(sigma_inv)
    else:
        var = np.diag(sigma_inv @ meat @ sigma_inv) * (nobs / df_resid if df_resid > 0 else math.nan)
    rows = _level_rows(list(numeric), np.asarray(theta, dtype=np.float64), var, df_resid, q)
    cov_type = "nonrobust" if meat is None else "HC1"
    return dict(_fit_statistics(rows, nobs, p, ssr, sst, weights, cov_type), absorbed=list(absorbed))


def _fit_statistics(rows, nobs: float, p: int, ssr: float, sst: float, weights: RowSums | None,
                    cov_type: str) -> dict:
    """A least-squares summary's document around its coefficient rows: R², F, the
    log-likelihood and its criteria, as statsmodels' OLS (WLS with ``weights``) gives them."""
    df_resid = nobs - p
    sigma2 = ssr / df_resid if df_resid > 0 else math.nan
    r2 = 1.0 - ssr / sst if sst > 0 else math.nan
    df_model = p - 1
    adj = 1.0 - (nobs - 1) / df_resid * (1.0 - r2) if df_resid > 0 else math.nan
    if df_model > 0 and df_resid > 0 and ssr > 0:
        f = ((sst - ssr) / df_model) / (ssr / df_resid)
        f_p = f_upper(df_model, df_resid, f)
    else:
        f = f_p = math.nan
    llf = -nobs / 2 * (math.log(2 * math.pi) + math.log(ssr / nobs) + 1) if ssr > 0 else math.inf
    if weights is not None:
        llf += 0.5 * weights.log_w
    return {
        "method": "OLS" if weights is None else "WLS", "cov_type": cov_type,
        "nobs": nobs, "df_model": df_model, "df_resid": df_resid,
        "coefficients": rows, "residual_std_err": math.sqrt(sigma2) if sigma2 == sigma2 else None,
        "ssr": ssr, "r2": _num(r2), "r2_adj": _num(adj), "f": _num(f), "f_p_value": _num(f_p),
        "log_likelihood": _num(llf), "aic": _num(-2 * llf + 2 * p), "bic": _num(-2 * llf + p * math.log(nobs)),
        "condition_number": None, "confidence": CONFIDENCE, "named": True,
    }


def _hc1_levels(meat, inv, wbar, level_n, ref: int, others, correction: float) -> tuple:
    """HC1 variances with categorical features (``summarize_levels``): of the reduced
    coefficients θ, of the absorbed column's a_ℓ − a_ref (``others``), of the intercept
    a_ref."""
    cov = correction * (inv @ meat.omega @ inv)                  # Cov(θ)
    cross = correction * (meat.r @ inv) / level_n[:, None]       # row ℓ: Cov(θ, u_ℓ)
    var_u = correction * meat.q / level_n ** 2
    cw = wbar @ cov                                              # row ℓ: Cov(θ)·w̄_ℓ
    var_a = var_u - 2 * np.einsum("ij,ij->i", wbar, cross) + np.einsum("ij,ij->i", cw, wbar)
    # Cov(a_ℓ, a_ref) = −w̄_ℓ·Cov(θ, u_ref) − w̄_ref·Cov(θ, u_ℓ) + w̄_ℓᵀ·Cov(θ)·w̄_ref
    cov_ref = -wbar[others] @ cross[ref] - cross[others] @ wbar[ref] + cw[others] @ wbar[ref]
    return np.diag(cov), var_a[others] + var_a[ref] - 2 * cov_ref, float(var_a[ref])
