"""The statistical summary (``inference``) against statsmodels' OLS, WLS and HC1 (NIST's
certified standard deviations: tests/optimization/test_nist.py)."""

import json
import math

import numpy as np
import pytest

from conftest import make_config, run_cli, write_parquet
from gd_dask.jobs.training import fit

sm = pytest.importorskip("statsmodels.api")


def _data(seed=0, n=400, offset=(3.0, -1.0, 50.0)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 2.0, 0.3] + offset
    noise = rng.normal(size=n) * (1 + 0.5 * np.abs(X[:, 0] - offset[0]))  # heteroskedastic, for HC1
    y = X @ [1.5, -0.7, 2.0] + 3.0 + noise
    return X, y


def _check(s, res, X_sm, rtol=1e-8):
    coefs = s["coefficients"]
    order = list(range(1, X_sm.shape[1])) + [0] if s["df_model"] < X_sm.shape[1] else list(range(X_sm.shape[1]))
    for c, j in zip(coefs, order):
        assert c["coef"] == pytest.approx(res.params[j], rel=1e-9)
        assert c["std_err"] == pytest.approx(res.bse[j], rel=rtol)
        assert c["t"] == pytest.approx(res.tvalues[j], rel=rtol)
        assert c["p_value"] == pytest.approx(res.pvalues[j], rel=1e-6, abs=1e-300)
        lo, hi = res.conf_int()[j]
        assert c["ci_low"] == pytest.approx(lo, rel=rtol) and c["ci_high"] == pytest.approx(hi, rel=rtol)
    assert s["nobs"] == res.nobs and s["df_resid"] == res.df_resid and s["df_model"] == res.df_model
    for ours, theirs in (("r2", "rsquared"), ("r2_adj", "rsquared_adj"), ("f", "fvalue"),
                         ("log_likelihood", "llf"), ("aic", "aic"), ("bic", "bic"), ("ssr", "ssr")):
        assert s[ours] == pytest.approx(getattr(res, theirs), rel=rtol), ours
    assert s["f_p_value"] == pytest.approx(res.f_pvalue, rel=1e-6, abs=1e-300)
    assert s["residual_std_err"] == pytest.approx(math.sqrt(res.scale), rel=rtol)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ols_summary_matches_statsmodels(client, tmp_path, fit_intercept):
    X, y = _data()
    cfg = make_config(write_parquet(tmp_path / "d", X, y), tmp_path, model={"fit_intercept": fit_intercept})
    res = fit(cfg, client)
    assert res.converged and res.summary["available"] and res.summary["method"] == "OLS"
    X_sm = sm.add_constant(X) if fit_intercept else X
    _check(res.summary, sm.OLS(y, X_sm).fit(), X_sm)


def test_wls_summary_matches_statsmodels(client, tmp_path):
    X, y = _data(seed=1)
    w = np.random.default_rng(1).uniform(0.2, 3.0, len(y))
    data = write_parquet(tmp_path / "d", np.column_stack([X, w]), y, names=["x0", "x1", "x2", "w"])
    data["features"], data["weight"] = ["x0", "x1", "x2"], "w"
    res = fit(make_config(data, tmp_path), client)
    assert res.summary["method"] == "WLS"
    X_sm = sm.add_constant(X)
    _check(res.summary, sm.WLS(y, X_sm, weights=w).fit(), X_sm)


@pytest.mark.parametrize("weighted", [False, True])
def test_hc1_matches_statsmodels(client, tmp_path, weighted):
    X, y = _data(seed=2)
    w = np.random.default_rng(2).uniform(0.2, 3.0, len(y)) if weighted else np.ones(len(y))
    data = write_parquet(tmp_path / "d", np.column_stack([X, w]), y, names=["x0", "x1", "x2", "w"])
    data["features"] = ["x0", "x1", "x2"]
    if weighted:
        data["weight"] = "w"
    res = fit(make_config(data, tmp_path, summary={"cov_type": "HC1"}), client)
    X_sm = sm.add_constant(X)
    theirs = sm.WLS(y, X_sm, weights=w).fit(cov_type="HC1")
    assert res.summary["cov_type"] == "HC1"
    for c, j in zip(res.summary["coefficients"], [1, 2, 3, 0]):
        assert c["std_err"] == pytest.approx(theirs.bse[j], rel=1e-8)


@pytest.mark.parametrize("settings,words", [
    ({"model": {"l2": 0.1}}, "penalized"), ({"model": {"loss": "huber"}}, "least squares"),
    ({"optimizer": {"method": "minibatch", "batch_size": 50, "epochs": 3}}, "minibatch"),
    ({"optimizer": {"epochs": 1}}, "not converged")])
def test_where_inference_does_not_hold_the_summary_says_why(client, tmp_path, settings, words):
    X, y = _data(seed=3, n=200)
    res = fit(make_config(write_parquet(tmp_path / "d", X, y), tmp_path, **settings), client)
    assert res.summary["available"] is False and words in res.summary["reason"]


def test_cli_summary_prints_a_table_and_json(tmp_path):
    X, y = _data(seed=4, n=300)
    data = write_parquet(tmp_path / "d", X, y)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "s", "data": data, "output": {"dir": str(tmp_path / "out")}}))
    assert run_cli("train", cfg, "--no-plot").returncode == 0
    r = run_cli("summary", tmp_path / "out" / "model.json")
    assert r.returncode == 0, r.stderr
    assert "std err" in r.stdout and "(intercept)" in r.stdout and "AIC" in r.stdout
    r = run_cli("summary", tmp_path / "out" / "model.json", "--json")
    assert json.loads(r.stdout)["available"] is True


def test_no_residual_degrees_of_freedom_gives_no_f_instead_of_an_error():
    """Two rows, one feature and an intercept: an exact line through both, df_resid 0.
    The summary reports what is defined and leaves F, σ² and the t tests empty, as
    statsmodels does (it gives nan); found by the fuzz test as a ZeroDivisionError when
    rounding left SSR a hair above 0."""
    from gd_dask.kernels.moments import Moments
    from gd_dask.artifacts.summary import summarize

    mom = Moments(2, np.array([-0.0031873, 0.3726614]),
                  np.array([[0.03323947, 0.06903825], [0.06903825, 0.14339219]]))
    s = summarize(mom, np.array([2.07699637]), 0.3792814381379137, True, ssr=3.1e-33)
    assert s["df_resid"] == 0 and s["f"] is None and s["residual_std_err"] is None


def test_ssr_from_the_moments_keeps_its_promise_where_no_residual_pass_is_taken(client, tmp_path):
    """R² ≈ 0.999 over 200,000 rows with offsets: the moments' error bound on SSR is
    under SSR_ACCURACY, so no pass over the residuals is taken, and the summary's SSR,
    R², F and residual SD still agree with the exact ones (residuals in extended
    precision, at the same coefficients) to the 9 digits the summary promises."""
    from gd_dask.artifacts import summary as inference
    from gd_dask.optimization.certify import sums_accuracy
    from gd_dask.kernels.moments import block_moments

    rng = np.random.default_rng(7)
    n = 200_000
    X = rng.normal(size=(n, 3)) * [1.0, 2.0, 0.3] + [300.0, -50.0, 1000.0]
    y = X @ [1.5, -0.7, 2.0] + 3.0 + 0.08 * rng.normal(size=n)
    res = fit(make_config(write_parquet(tmp_path / "d", X, y, n_files=4), tmp_path), client)
    s = res.summary
    m, b = np.asarray(res.m, dtype=np.longdouble), np.longdouble(res.b)
    r = y.astype(np.longdouble) - X.astype(np.longdouble) @ m - b
    exact = float(np.sum(r * r))
    sst = float(np.sum((y.astype(np.longdouble) - np.mean(y.astype(np.longdouble))) ** 2))
    # The regime this test is about: the moments' error bound on SSR lies between the old
    # threshold (1e-11, which took a residual pass here) and SSR_ACCURACY.
    mom = block_moments(np.column_stack([X, y]))
    bound = sums_accuracy(mom.n) * float(mom.comoment[-1, -1]) / exact
    assert 1e-11 < bound <= inference.SSR_ACCURACY
    assert not inference.needs_residual_pass(mom, exact)
    assert s["ssr"] == pytest.approx(exact, rel=1e-10)
    assert s["r2"] == pytest.approx(1 - exact / sst, rel=1e-9)
    assert s["residual_std_err"] == pytest.approx(math.sqrt(exact / (n - 4)), rel=1e-9)
    assert s["f"] == pytest.approx((sst - exact) / 3 / (exact / (n - 4)), rel=1e-9)
