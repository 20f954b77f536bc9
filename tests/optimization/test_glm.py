"""Poisson, Gamma and Tweedie regression (log link) by Newton passes, against independent
references: statsmodels' GLM, scikit-learn's deviances and D², Newton's method in long
double (the certified bound never understates the error), finite differences of the
Newton pass's gradient; one pass per step; the same bits on 1 and 3 workers."""

import numpy as np
import pytest

from conftest import make_config, run_cli, write_parquet
from gd_dask.jobs.training import fit
from gd_dask.kernels import newton as kn
from gd_dask.kernels.losses import Gamma, Logistic, Poisson, Tweedie

TRUE_M = np.array([0.3, -0.2, 0.5])
TRUE_B = -0.4


def _problem(family: str, seed=1, n=6000, offset=0.0, scale=(1.0, 2.0, 0.5)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * scale + offset
    mu = np.exp((X - offset) / scale @ TRUE_M + TRUE_B)
    if family == "poisson":
        y = rng.poisson(mu).astype(float)
    elif family == "gamma":
        y = rng.gamma(2.0, mu / 2.0)
    else:  # tweedie: compound Poisson–Gamma, exact zeros
        y = np.array([rng.gamma(2.0, 0.5, k).sum() for k in rng.poisson(mu)])
    return X, y


def _statsmodels(X, y, family: str, power=1.5):
    import statsmodels.api as sm

    log = sm.families.links.Log()
    fam = {"poisson": sm.families.Poisson(), "gamma": sm.families.Gamma(log),
           "tweedie": sm.families.Tweedie(var_power=power, link=log)}[family]
    res = sm.GLM(y, sm.add_constant(X), family=fam).fit(tol=1e-15, maxiter=200)
    return res.params[1:], res.params[0]


def _newton(X, y, loss):
    """The minimizer by Newton's method on standardized features, in long double."""
    mu, sd = X.mean(axis=0), X.std(axis=0)
    Z = np.column_stack([(X - mu) / sd, np.ones(len(y))]).astype(np.longdouble)
    theta, yl = np.zeros(Z.shape[1], dtype=np.longdouble), y.astype(np.longdouble)
    theta[-1] = np.log(yl.mean())
    for _ in range(40):
        eta = Z @ theta
        psi, h = _derivatives(loss, eta, yl)
        step = np.linalg.solve(((Z * h[:, None]).T @ Z).astype(float), (Z.T @ psi).astype(float))
        theta -= step.astype(np.longdouble)
    m = theta[:-1] / sd
    return m, theta[-1] - mu @ m


def _derivatives(loss, eta, y):
    """ψ and ℓ'' in long double, written out independently of the kernels."""
    if isinstance(loss, Poisson):
        return np.exp(eta) - y, np.exp(eta)
    if isinstance(loss, Gamma):
        r = y * np.exp(-eta)
        return 1 - r, r
    p = loss.power
    a, c = np.exp((1 - p) * eta), np.exp((2 - p) * eta)
    return c - y * a, (2 - p) * c + (p - 1) * y * a


FAMILIES = {"poisson": Poisson(), "gamma": Gamma(), "tweedie": Tweedie(1.5)}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("offset", [0.0, 1e3], ids=["centered", "offset-1e3"])
def test_coefficients_match_statsmodels_and_the_bound_holds(client, tmp_path, family, offset):
    X, y = _problem(family, offset=offset)
    cfg = make_config(write_parquet(tmp_path / "d", X, y), tmp_path, model={"loss": family})
    res = fit(cfg, client)
    assert res.strategy == "newton" and res.converged and res.convergence["criterion"] == "local_curvature"
    assert res.epochs_run <= 8
    m_ref, b_ref = _statsmodels(X, y, family)
    np.testing.assert_allclose(res.m, m_ref, rtol=1e-8)
    assert res.b == pytest.approx(b_ref, rel=1e-8)
    m_x, b_x = _newton(X, y, FAMILIES[family])
    err = max(np.abs(res.m / m_x - 1).max(), abs(res.b / b_x - 1))
    assert err <= res.convergence["bound"] <= cfg.optimizer.tol
    # Each pass a Newton step: the gradient's norm near the square of the one before.
    grads = [h["grad_norm"] for h in res.history]
    assert grads[-1] < grads[-2] ** 1.5 and grads[-2] < grads[-3] ** 1.5, grads


@pytest.mark.parametrize("family", list(FAMILIES))
def test_deviance_and_d2_are_scikit_learns(client, tmp_path, family):
    from sklearn.metrics import d2_tweedie_score, mean_tweedie_deviance

    X, y = _problem(family, seed=2, n=3000)
    res = fit(make_config(write_parquet(tmp_path / "d", X, y), tmp_path, model={"loss": family}), client)
    power = {"poisson": 1, "gamma": 2, "tweedie": 1.5}[family]
    pred = np.exp(X @ res.m + res.b)
    name = FAMILIES[family].deviance_metric
    assert res.final_loss == res.metrics[name]
    assert res.metrics[name] == pytest.approx(mean_tweedie_deviance(y, pred, power=power), rel=1e-10)
    assert res.metrics["d2"] == pytest.approx(d2_tweedie_score(y, pred, power=power), rel=1e-9)
    assert res.metrics["rmse"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)), rel=1e-10)


@pytest.mark.parametrize("loss", [Poisson(), Gamma(), Tweedie(1.3), Logistic()], ids=lambda x: x.name)
@pytest.mark.parametrize("weighted", [False, True])
def test_the_newton_pass_is_the_derivative_of_the_loss(loss, weighted):
    """Gradient: central differences of the loss; Hessian: of the gradient; the rounding
    scale dominates |ψ|·|x̃|; R² the largest ‖[xs, 1]‖² of the rows that count."""
    rng = np.random.default_rng(8)
    n = 3 * 8192 + 17
    X = rng.normal(size=(n, 2))
    eta = X @ [0.4, -0.3] + 0.2
    y = (rng.random(n) < 0.4).astype(float) if isinstance(loss, Logistic) else \
        rng.gamma(2.0, np.exp(eta) / 2.0) * (rng.random(n) < (0.7 if isinstance(loss, Tweedie) else 1.1))
    w = rng.random(n) * (rng.random(n) > 0.1)
    Z = np.asfortranarray(np.column_stack([X, y] + ([w] if weighted else [])))
    theta = np.array([0.3, -0.1, 0.15])

    def sums(t, final=False):
        return kn.block_newton_std(Z, t[:2], t[2], loss, weighted, final=final)

    s = sums(theta)
    f = sums(theta, final=True)  # the same sums, and the final ones besides
    lean = kn.block_newton_std(Z, theta[:2], theta[2], loss, weighted, data_terms=False)
    assert lean.radius2 == 0.0 and np.isnan(lean.constant)
    assert lean.loss + s.constant == pytest.approx(s.loss, rel=1e-12)
    assert f.grad.tolist() == s.grad.tolist() and f.hess.tolist() == s.hess.tolist() and f.loss == s.loss
    assert s.final is None and f.final is not None
    h = 1e-6
    fd = [(sums(theta + e).loss - sums(theta - e).loss) / (2 * h) / loss.penalty_scale for e in np.eye(3) * h]
    np.testing.assert_allclose(np.append(s.grad, s.err), fd, rtol=1e-6)
    fd_h = np.column_stack([(np.append(sums(theta + e).grad, sums(theta + e).err)
                             - np.append(sums(theta - e).grad, sums(theta - e).err)) / (2 * h) for e in np.eye(3) * h])
    np.testing.assert_allclose(s.hess, fd_h, rtol=1e-6, atol=1e-8 * n)
    x1 = np.column_stack([X, np.ones(n)])
    psi = np.append(s.grad, s.err)
    assert np.all(s.scale >= np.abs(psi)) and np.all(s.scale >= 0)
    rows = x1 if not weighted else x1[w > 0]
    assert s.radius2 == pytest.approx((rows ** 2).sum(axis=1).max(), rel=1e-14)
    assert s.n == pytest.approx(w.sum() if weighted else n)
    # The loss's fused Newton terms are its terms, curvature and magnitudes.
    e = Z[:, :2] @ theta[:2] + theta[2]
    psi, total, h2, mag = loss.newton_terms(e.copy(), y, w if weighted else None)
    c = loss.constant_terms(y)
    total += 0.0 if c is None else float(c.sum() if not weighted else w @ c)
    psi0, total0 = loss.terms(e.copy(), y, w if weighted else None)
    np.testing.assert_allclose(psi, psi0, rtol=1e-13, atol=1e-15)
    assert total == pytest.approx(total0, rel=1e-13)
    np.testing.assert_allclose(h2, loss.second(e, y), rtol=1e-12)
    np.testing.assert_allclose(mag, loss.magnitude(e, y), rtol=1e-13)


def test_same_bits_on_one_and_three_workers(tmp_path):
    from distributed import Client, LocalCluster

    X, y = _problem("poisson", seed=3, n=40_000)
    cfg = make_config(write_parquet(tmp_path / "d", X, y, n_files=5, row_group_rows=3000), tmp_path,
                      model={"loss": "poisson"}, optimizer={"cache": "none"})
    out = []
    for workers in (1, 3):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
                Client(c) as cl:
            res = fit(cfg, cl)
        out.append((res.m.tolist(), res.b, res.epochs_run))
    assert out[0] == out[1]


def test_a_worker_killed_between_newton_passes_changes_nothing(tmp_path):
    """Gamma with Newton passes on a `dask scheduler` with two `dask worker`s, one SIGKILLed
    once the first pass is logged: the model's bits equal an undisturbed run's."""
    import json

    from dask_processes import models_with_and_without_a_kill

    X, y = _problem("gamma", seed=5, n=300_000)
    data = write_parquet(tmp_path / "d", X, y, n_files=6, row_group_rows=10_000)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "gamma", "data": data, "model": {"loss": "gamma"},
                               "optimizer": {"cache": "none"}}))
    want, got = models_with_and_without_a_kill(cfg, tmp_path, 1, "--no-plot")
    assert got["strategy"] == "newton" and got["converged"]
    assert (got["m"], got["b"], got["epochs_run"]) == (want["m"], want["b"], want["epochs_run"])


def test_the_cli_refuses_what_newton_cannot_do_and_a_negative_count(tmp_path):
    X, y = _problem("poisson", seed=4, n=500)
    data = write_parquet(tmp_path / "d", X, y)
    for extra in (["--set", "optimizer.strategy=stream"], ["--set", "optimizer.learning_rate=0.1"],
                  ["--set", "model.l1=0.1"]):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"name: t\ndata: {{path: {data['path']}, features: [x0, x1, x2], target: y}}\n"
                       f"model: {{loss: poisson}}\noutput: {{dir: {tmp_path / 'o'}}}\n")
        r = run_cli("train", str(cfg), *extra)
        assert r.returncode == 2 and "poisson" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    bad = y.copy()
    bad[7] = -1.0
    data = write_parquet(tmp_path / "neg", X, bad)
    cfg = tmp_path / "n.yaml"
    cfg.write_text(f"name: t\ndata: {{path: {data['path']}, features: [x0, x1, x2], target: y}}\n"
                   f"model: {{loss: poisson}}\noutput: {{dir: {tmp_path / 'o2'}}}\n")
    r = run_cli("train", str(cfg))
    assert r.returncode == 1 and "-1" in r.stderr and "≥ 0" in r.stderr, r.stderr
    assert not (tmp_path / "o2" / "model.json").exists()


def _exposure_problem(seed=5, n=20_000):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    expo = rng.uniform(0.1, 5.0, n)
    off = rng.normal(scale=0.5, size=n)
    return X, expo, off, rng


@pytest.mark.parametrize("family,kind", [("poisson", "exposure"), ("gamma", "offset"), ("logistic", "offset")])
def test_offsets_and_exposures_match_statsmodels_through_train_evaluate_and_predict(tmp_path, family, kind):
    import json

    import pandas as pd
    import statsmodels.api as sm

    from gd_dask import load_model

    X, expo, off, rng = _exposure_problem()
    shift = np.log(expo) if kind == "exposure" else off
    eta = X @ TRUE_M + TRUE_B + shift
    y = {"poisson": lambda: rng.poisson(np.exp(eta)).astype(float),
         "gamma": lambda: rng.gamma(2.0, np.exp(eta) / 2.0),
         "logistic": lambda: (rng.random(len(eta)) < 1 / (1 + np.exp(-eta))).astype(float)}[family]()
    column = expo if kind == "exposure" else off
    data = write_parquet(tmp_path / "d", np.column_stack([X, column]), y, names=["x0", "x1", "x2", "o"])
    data["features"], data[kind] = ["x0", "x1", "x2"], "o"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "t", "data": data, "model": {"loss": family},
                               "output": {"dir": str(tmp_path / "out")}}))
    r = run_cli("train", str(cfg))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "out" / "model.json").read_text())
    fam = {"poisson": sm.families.Poisson(), "gamma": sm.families.Gamma(sm.families.links.Log()),
           "logistic": sm.families.Binomial()}[family]
    ref = sm.GLM(y, sm.add_constant(X), family=fam, **{kind: column}).fit(tol=1e-15, maxiter=200)
    assert doc["converged"] and doc["features"] == ["x0", "x1", "x2"]
    np.testing.assert_allclose(np.append(doc["b"], doc["m"]), ref.params, rtol=1e-8)
    expected = ref.predict(sm.add_constant(X), **{kind: column})
    r = run_cli("predict", str(tmp_path / "out" / "model.json"), data["path"], str(tmp_path / "pred"))
    assert r.returncode == 0, r.stderr
    pred = pd.read_parquet(tmp_path / "pred").prediction.to_numpy()
    np.testing.assert_allclose(pred, expected, rtol=1e-7)
    model = load_model(tmp_path / "out" / "model.json")
    frame = pd.DataFrame({"x0": X[:, 0], "x1": X[:, 1], "x2": X[:, 2], "o": column})
    np.testing.assert_allclose(model.predict(frame), expected, rtol=1e-7)
    with pytest.raises(Exception, match="'o'"):
        model.predict(X)  # the offset's column is needed
    r = run_cli("evaluate", str(tmp_path / "out" / "model.json"), data["path"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == len(y)


def test_an_exposure_that_is_not_positive_is_named_and_nothing_is_written(tmp_path):
    X, expo, _, rng = _exposure_problem(n=2000)
    expo[11] = 0.0
    y = rng.poisson(np.exp(X @ TRUE_M)).astype(float)
    data = write_parquet(tmp_path / "d", np.column_stack([X, expo]), y, names=["x0", "x1", "x2", "t"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: t\ndata: {{path: {data['path']}, features: [x0, x1, x2], target: y, exposure: t}}\n"
                   f"model: {{loss: poisson}}\noutput: {{dir: {tmp_path / 'o'}}}\n")
    r = run_cli("train", str(cfg))
    assert r.returncode == 1 and "exposure column 't'" in r.stderr and "not positive" in r.stderr, r.stderr
    assert not (tmp_path / "o" / "model.json").exists()
    cfg.write_text(f"name: t\ndata: {{path: {data['path']}, features: [x0, x1, x2], target: y, exposure: t}}\n"
                   f"output: {{dir: {tmp_path / 'o'}}}\n")
    r = run_cli("train", str(cfg))  # squared loss trains by its moments: no place for an offset
    assert r.returncode == 2 and "data.exposure" in r.stderr, r.stderr


@pytest.mark.parametrize("family", ["poisson", "gamma", "tweedie", "logistic"])
def test_the_summary_is_statsmodels_glm(client, tmp_path, family):
    """SE, z, p and CI from Fisher's information; the scale by Pearson's χ² (Gamma, Tweedie);
    deviance, Pearson χ², log-likelihood and AIC where statsmodels has them."""
    import statsmodels.api as sm

    from gd_dask.artifacts.summary import table

    if family == "logistic":
        rng = np.random.default_rng(6)
        X = rng.normal(size=(5000, 3)) * (1.0, 2.0, 0.5) + 3.0
        y = (rng.random(5000) < 1 / (1 + np.exp(-((X - 3.0) @ TRUE_M + TRUE_B)))).astype(float)
        fam = sm.families.Binomial()
    else:
        X, y = _problem(family, seed=6, n=5000, offset=3.0)
        log = sm.families.links.Log()
        fam = {"poisson": sm.families.Poisson(), "gamma": sm.families.Gamma(log),
               "tweedie": sm.families.Tweedie(var_power=1.5, link=log)}[family]
    res = fit(make_config(write_parquet(tmp_path / "d", X, y), tmp_path, model={"loss": family}), client)
    ref = sm.GLM(y, sm.add_constant(X), family=fam).fit(tol=1e-15, maxiter=200)
    s = res.summary
    assert s["available"] and s["statistic"] == "z"
    rows = s["coefficients"][-1:] + s["coefficients"][:-1]  # statsmodels puts the constant first
    np.testing.assert_allclose([r["std_err"] for r in rows], ref.bse, rtol=1e-7)
    np.testing.assert_allclose([r["t"] for r in rows], ref.tvalues, rtol=1e-7)
    # p from z: its relative error is |z|·δz, so a tiny p (|z| ≫ 1) is compared by its log.
    p = np.array([r["p_value"] for r in rows])
    small = ref.pvalues < 1e-12
    np.testing.assert_allclose(p[~small], ref.pvalues[~small], rtol=1e-6)
    np.testing.assert_allclose(np.log(p[small]), np.log(ref.pvalues[small]), rtol=1e-6)
    np.testing.assert_allclose([[r["ci_low"], r["ci_high"]] for r in rows], ref.conf_int(), rtol=1e-7)
    assert s["scale"] == pytest.approx(ref.scale, rel=1e-9)
    assert s["deviance"] == pytest.approx(ref.deviance, rel=1e-9)
    assert s["pearson_chi2"] == pytest.approx(ref.pearson_chi2, rel=1e-9)
    if family != "tweedie":
        assert s["log_likelihood"] == pytest.approx(ref.llf, rel=1e-9)
        assert s["aic"] == pytest.approx(ref.aic, rel=1e-9)
    text = table(s, ["x0", "x1", "x2"], "y")
    assert "P>|z|" in text and "deviance" in text
    # Not at the maximum of the likelihood: no statistics, and why.
    res = fit(make_config(write_parquet(tmp_path / "d2", X, y), tmp_path, model={"loss": family},
                          optimizer={"epochs": 1}), client)
    assert not res.summary["available"] and "not converged" in res.summary["reason"]


def test_nightly_refits_of_a_poisson_model_with_exposure_follow_the_drift(client, tmp_path):
    """Refit trains the family by Newton passes warm-started from the current model, the
    gate compares the mean Poisson deviance on the held-out night, and a night of shuffled
    labels is quarantined."""
    from datetime import date, timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq

    from gd_dask.artifacts.registry import Registry
    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit

    start = date(2026, 11, 1)

    def add_day(day, shuffled=False):
        rng = np.random.default_rng(day)
        folder = tmp_path / "data" / f"date={(start + timedelta(days=day)).isoformat()}"
        folder.mkdir(parents=True)
        X, expo = rng.normal(size=(3000, 2)), rng.uniform(0.5, 2.0, 3000)
        y = rng.poisson(expo * np.exp((0.3 + 0.05 * day) * X[:, 0] - 0.2 * X[:, 1] - 0.3)).astype(float)
        if shuffled:
            y = rng.permutation(y)
        pq.write_table(pa.table({"x1": X[:, 0], "x2": X[:, 1], "e": expo, "y": y}), folder / "p.parquet")

    cfg = validate_config({"name": "counts", "model": {"loss": "poisson"},
                           "data": {"path": str(tmp_path / "data"), "features": ["x1", "x2"], "target": "y",
                                    "exposure": "e", "window_days": 3},
                           "registry": {"dir": str(tmp_path / "models")}})
    assert cfg.registry.promote.metric == "mean_poisson_deviance"
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(2):
        add_day(day)
    slopes = []
    for day in range(2, 6):
        add_day(day)
        outcome = refit(cfg, client, start + timedelta(days=day))
        assert outcome.promoted, outcome.message
        current = reg.current_model()
        assert current["converged"] and current["strategy"] == "newton"
        slopes.append(current["m"][0])
        if day > 2:
            assert "mean_poisson_deviance" in outcome.message
        if day > 2:  # each night's own Poisson fit: its D² is recorded for the nights to come
            assert 0.05 < outcome.verdict["night_fit"]["d2"] < 1, outcome.verdict["night_fit"]
    assert slopes == sorted(slopes)  # the slope of x1 grows every night: the refits follow it
    # A night whose labels no longer follow its features is quarantined: its own Poisson fit
    # explains no deviance against the D² the recent nights' own fits recorded.
    add_day(6, shuffled=True)
    outcome = refit(cfg, client, start + timedelta(days=6))
    assert outcome.status == "quarantined", outcome.message
    d2 = [c for c in outcome.verdict["checks"] if c["check"] == "d2_drop"]
    assert d2 and d2[0]["value"] < 0.02 and "D²" in outcome.message, outcome.verdict["checks"]


def test_a_run_resumed_from_a_checkpoint_ends_at_the_same_bits(monkeypatch):
    """The checkpoint a Newton pass leaves (the next point to evaluate) resumes to the
    very coefficients, bound and pass count of an uninterrupted run."""
    from gd_dask.optimization import descent
    from gd_dask.optimization.certify import LocalBound
    from gd_dask.optimization.descent import Checkpoints, Rules, state_from_dict, state_to_dict
    from gd_dask.optimization.newton import Newton

    monkeypatch.setattr(descent, "CHECKPOINT_MIN_SECONDS", 0.0)
    X, y = _problem("poisson", seed=9, n=20_000)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    Z = np.asfortranarray(np.column_stack([(X - mu) / sd, y]))
    loss = Poisson()

    def oracle(m, b, final, data_terms):
        parts = [kn.block_newton_std(Z[lo:lo + 8192], m, b, loss, False, None, final, data_terms)
                 for lo in range(0, len(y), 8192)]
        total = parts[0]
        for p in parts[1:]:
            total = kn.add_newton(total, p)
        return total

    def run(state, passes, saved=None):
        loop = Newton(oracle, LocalBound(None, mu, sd, True, len(y)), Rules(fit_intercept=True))
        ck = Checkpoints(lambda st: saved.append(state_to_dict(st)), 1) if saved is not None else None
        return loop.run(state, passes=passes, tol=1e-9, checkpoints=ck)

    start = np.append(np.zeros(3), np.log(y.mean()))
    whole = run(Newton(oracle, None, None).start(start), 50)
    saved: list = []
    run(Newton(oracle, None, None).start(start), 3, saved)
    resumed = run(state_from_dict(saved[-1]), 50)
    assert whole.converged and resumed.converged
    assert resumed.params.tolist() == whole.params.tolist() and resumed.bound == whole.bound
    assert resumed.epoch == whole.epoch
