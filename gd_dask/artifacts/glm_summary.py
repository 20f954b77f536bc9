"""Inference for a family fitted by Newton passes (logistic, Poisson, Gamma, Tweedie), as
statsmodels' GLM prints it: from Fisher's information at the fitted coefficients, which the
last Newton pass there measured (``kernels.newton.FinalSums``).

Cov(θ) = φ·I⁻¹ with I = Σ w·mu'(eta)²/V(mu)·x̃x̃ᵀ (the expected information), φ = 1 for
the Bernoulli and Poisson families and Pearson's χ²/(nobs − k) for Gamma and Tweedie (as
statsmodels estimates the scale). I is summed over standardized features, where it is
well conditioned, and mapped to original units: m_j = θ_j/σ_j, b = θ_b − Σ_j (c_j/σ_j)·θ_j.
Tests are z (normal), as statsmodels' GLM by default. The log-likelihood (and AIC) follows
statsmodels' for Bernoulli, Poisson (Σ log y! from a tally of the targets' values) and
Gamma (unweighted, at the Pearson scale); Tweedie has none in closed form.
"""

from __future__ import annotations

import math

import numpy as np

from ..optimization.hessians import BlockHessian
from .summary import CONFIDENCE, _num

#: Families whose dispersion is 1 (not estimated).
FIXED_SCALE = ("logistic", "poisson")


def normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0)) if math.isfinite(z) else math.nan


def normal_quantile(q: float) -> float:
    """Φ⁻¹(q) by Newton's method on erfc (q in (0, 1))."""
    x = 0.0
    for _ in range(60):
        f = 0.5 * math.erfc(-x / math.sqrt(2.0)) - q
        x -= f / (math.exp(-x * x / 2) / math.sqrt(2 * math.pi))
        if abs(f) < 1e-17:
            break
    return x


def summarize_glm(s, loss, m, b, center, scale, fit_intercept: bool, weighted: bool) -> dict:
    """The summary of the family ``loss`` fitted at (m, b) (original units), from the final
    Newton pass ``s`` (``kernels.newton.NewtonSums``) at those coefficients over features
    standardized by ``center`` and ``scale``."""
    f = s.final
    m = np.asarray(m, dtype=np.float64)
    d = m.shape[0]
    k = d + int(fit_intercept)
    nobs = f.rows
    df_resid = nobs - k
    info = np.asarray(s.hess if f.info is None else f.info, dtype=np.float64)[:k, :k]
    fixed = loss.name in FIXED_SCALE
    phi = 1.0 if fixed else (f.pearson / df_resid if df_resid > 0 else math.nan)
    coef = np.append(m, b) if fit_intercept else m
    names = [f"m[{i}]" for i in range(d)] + (["b"] if fit_intercept else [])
    rows, cond = _rows(info, _to_original(center, scale, fit_intercept), coef, phi, names)
    llf = _loglik(s.loss, f, loss, phi, weighted)
    return {
        "method": f"GLM {loss.name} (log link)" if loss.name != "logistic" else "GLM binomial (logit link)",
        "cov_type": "nonrobust", "statistic": "z", "nobs": nobs, "df_model": k - int(fit_intercept),
        "df_resid": df_resid, "coefficients": rows, "scale": phi, "deviance": s.loss * 2 / loss.penalty_scale,
        "pearson_chi2": f.pearson, "log_likelihood": None if llf is None else _num(llf),
        "aic": _num(-2 * llf + 2 * k) if llf is not None else None,
        "residual_std_err": None, "ssr": None, "r2": None, "r2_adj": None, "f": None, "f_p_value": None,
        "bic": None, "condition_number": cond, "confidence": CONFIDENCE,
    }


def summarize_glm_levels(s, loss, coef, names, center, scale, info=None, nobs: float | None = None) -> dict:
    """The summary of a family fitted with categorical features: ``s`` the Newton pass at
    the fitted coefficients over [numeric (standardized by ``center``, ``scale``),
    non-reference levels, intercept], whose Hessian is Fisher's information for logistic
    and Poisson; ``info``: (Fisher's information, Pearson's χ²) from a pass of their own
    for Gamma and Tweedie, whose scale is Pearson's. ``coef`` and ``names`` in that order,
    original units. ``nobs``: the rows, where sample weights make ``s.n`` their sum (as
    statsmodels' ``var_weights``)."""
    k = len(coef)
    nobs = s.n if nobs is None else nobs
    center = np.append(center, np.zeros(k - 1 - len(center)))
    scale = np.append(scale, np.ones(k - 1 - len(scale)))
    fixed = loss.name in FIXED_SCALE
    hess, pearson = (s.hess, None) if fixed else info
    phi = 1.0 if fixed else (pearson / (nobs - k) if nobs > k else math.nan)
    if isinstance(hess, BlockHessian):  # a high-cardinality column: through its Schur complement
        rows, cond = _block_rows(hess, center, scale, coef, names, phi)
    else:
        rows, cond = _rows(np.asarray(hess, dtype=np.float64), _to_original(center, scale, True), coef, phi, names)
    llf = -s.loss if loss.name == "logistic" else None
    method = {"logistic": "GLM binomial (logit link)", "squared": "GLM gaussian (identity link)"}.get(
        loss.name, f"GLM {loss.name} (log link)")
    return {
        "method": method,
        "cov_type": "nonrobust", "statistic": "z", "nobs": nobs, "df_model": k - 1, "df_resid": nobs - k,
        "coefficients": rows, "scale": phi, "deviance": s.loss * 2 / loss.penalty_scale, "pearson_chi2": pearson,
        "log_likelihood": None if llf is None else _num(llf), "aic": None if llf is None else _num(-2 * llf + 2 * k),
        "residual_std_err": None, "ssr": None, "r2": None, "r2_adj": None, "f": None, "f_p_value": None,
        "bic": None, "condition_number": cond, "confidence": CONFIDENCE, "named": True,
    }


def summarize_two_way_glm(loss, m, sigma, numeric, absorbed, nobs: float, k: int, total: float,
                          pearson: float | None = None) -> dict:
    """The summary of a family fitted with two categorical columns of many levels
    (``jobs.categorical_irls``), as fixest's ``feglm`` reports one: a row per numeric
    feature, the levels absorbed. Their covariance is φ·Σ⁻¹, Σ the slopes' Schur
    complement of Fisher's information within both columns' levels (logistic and Poisson:
    the last IRLS step's weights, φ = 1; Gamma and Tweedie: a pass of Fisher's weights,
    φ = Pearson's χ²/(n − k), as statsmodels' GLM scales it). ``k``: every parameter, the
    levels' too; ``total``: Σ of the reported loss at the fit."""
    phi = 1.0 if pearson is None else (pearson / (nobs - k) if nobs > k else math.nan)
    sd = np.sqrt(np.maximum(np.diag(sigma), 1e-300))
    inv = np.linalg.inv(sigma / np.outer(sd, sd)) / np.outer(sd, sd) if len(sd) else np.zeros((0, 0))
    rows = _table(np.asarray(m, dtype=np.float64), np.sqrt(np.maximum(phi * np.diag(inv), 0.0)), list(numeric))
    llf = -total if loss.name == "logistic" else None
    method = "GLM binomial (logit link)" if loss.name == "logistic" else f"GLM {loss.name} (log link)"
    return {
        "method": method, "cov_type": "nonrobust", "statistic": "z", "nobs": nobs, "df_model": k - 1,
        "df_resid": nobs - k, "coefficients": rows, "scale": phi, "deviance": total * 2 / loss.penalty_scale,
        "pearson_chi2": pearson, "log_likelihood": None if llf is None else _num(llf),
        "aic": None if llf is None else _num(-2 * llf + 2 * k), "residual_std_err": None, "ssr": None, "r2": None,
        "r2_adj": None, "f": None, "f_p_value": None, "bic": None,
        "condition_number": float(np.sqrt(np.linalg.cond(sigma / np.outer(sd, sd)))) if len(sd) else None,
        "confidence": CONFIDENCE, "absorbed": list(absorbed),
    }


def _to_original(center, scale, fit_intercept: bool) -> np.ndarray:
    """A with original-units coefficients = A·θ: m_j = θ_j/σ_j, b = θ_b − Σ (c_j/σ_j)·θ_j."""
    d = len(scale)
    k = d + int(fit_intercept)
    A = np.zeros((k, k))
    A[np.arange(d), np.arange(d)] = 1.0 / np.asarray(scale)
    if fit_intercept:
        A[d, :d] = -np.asarray(center) / np.asarray(scale)
        A[d, d] = 1.0
    return A


def _rows(info, A, coef, phi: float, names) -> tuple[list, float]:
    """(a row per coefficient: SE, z, p, CI from Cov = φ·A·I⁻¹·Aᵀ; the condition number
    of the standardized information)."""
    sd = np.sqrt(np.diag(info))
    inv = np.linalg.inv(info / np.outer(sd, sd)) / np.outer(sd, sd)
    se = np.sqrt(np.maximum(np.diag(phi * A @ inv @ A.T), 0.0))
    return _table(coef, se, names), float(np.sqrt(np.linalg.cond(info / np.outer(sd, sd))))


def _block_rows(info: BlockHessian, center, scale, coef, names, phi: float = 1.0) -> tuple[list, float]:
    """``_rows`` for information with a diagonal block (``BlockHessian``): the
    diagonal of I⁻¹ and the intercept's uᵀI⁻¹u, no k × k matrix; no condition number
    (that of the standardized information would need its eigenvalues)."""
    d = len(scale)
    var = info.inverse_diagonal()
    var[:d] = var[:d] / np.asarray(scale) ** 2
    u = np.zeros(info.k)
    u[:d], u[d] = -np.asarray(center) / np.asarray(scale), 1.0
    var[d] = info.quad(u)
    return _table(coef, np.sqrt(np.maximum(phi * var, 0.0)), names), None


def _table(coef, se, names) -> list:
    q = normal_quantile(0.5 + CONFIDENCE / 2)
    rows = []
    for i, name in enumerate(names):
        z = coef[i] / se[i] if se[i] > 0 else math.nan
        rows.append({"name": name, "coef": float(coef[i]), "std_err": float(se[i]), "t": _num(z),
                     "p_value": _num(normal_two_sided(z)), "ci_low": float(coef[i] - q * se[i]),
                     "ci_high": float(coef[i] + q * se[i])})
    return rows


def _loglik(total: float, f, loss, phi: float, weighted: bool) -> float | None:
    """statsmodels' log-likelihood where it has a closed form here, else None (``total``:
    the pass's Σ of the reported loss)."""
    y_eta, mu, log_y, y_over_mu, log_fact = (float(v) for v in f.loglik)
    if loss.name == "logistic":
        return -total  # the Bernoulli log-likelihood is minus the log-loss
    if loss.name == "poisson":
        return y_eta - mu - log_fact if math.isfinite(log_fact) else None
    if loss.name == "gamma" and not weighted and math.isfinite(phi) and phi > 0:
        # Σ a·log(a·y/mu) − a·y/mu − lgamma(a) − log y at a = 1/φ; Σ log(y/mu) from the
        # deviance, Σ d/2 = Σ log(mu/y) + y/mu − 1.
        a = 1.0 / phi
        sum_log_y_mu = -total / 2 + y_over_mu - f.rows
        return f.rows * (a * math.log(a) - math.lgamma(a)) + a * sum_log_y_mu - a * y_over_mu - log_y
    return None
