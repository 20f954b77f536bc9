"""Losses as link ∘ family: each fused kernel equals the chain-rule composition it
replaces, gradients and curvatures equal finite differences, links invert, and a loss
is found, configured and given an estimator from its own module alone."""

import types
from dataclasses import dataclass

import numpy as np
import pytest

from gd_dask.kernels import losses
from gd_dask.kernels.losses import Family
from gd_dask.kernels.losses.links import IDENTITY, LOG, LOGIT


@dataclass(frozen=True)
class Poisson(Family, register=False):
    """A family written only in the mean, as a new one would be: everything else composed."""

    name = "poisson-test"
    link = LOG

    def variance(self, mu):
        return mu

    def unit_deviance(self, y, mu):
        return 2.0 * (np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / mu), 0.0) - (y - mu))


def _rows(loss, n=500, seed=0):
    rng = np.random.default_rng(seed)
    eta = rng.normal(scale=2.0, size=n)
    if loss.name == "logistic":
        y = (rng.random(n) < 0.4).astype(float)
    elif loss.name in ("poisson-test", "poisson"):
        y = rng.poisson(np.exp(eta)).astype(float)
    elif loss.name == "gamma":
        y = rng.gamma(2.0, np.exp(eta) / 2.0)
    elif loss.name == "tweedie":
        y = rng.poisson(np.exp(eta) / 2) * rng.gamma(2.0, 1.0, size=n)
    else:
        y = eta + rng.normal(scale=3.0, size=n)
    return eta, y, rng.uniform(0.5, 2.0, size=n)


def _objective(loss, eta, y, w):
    """Σ w·ℓ: the reported sum over the penalty scale."""
    return loss.terms(eta.copy(), y, w)[1] / loss.penalty_scale


LOSS_CASES = [cls.of(types.SimpleNamespace(huber_delta=1.35, tweedie_power=1.4)) for cls in losses.LOSSES.values()] + [Poisson()]


@pytest.mark.parametrize("loss", [c for c in LOSS_CASES if isinstance(c, Family) and type(c).terms is not Family.terms],
                         ids=lambda c: c.name)
@pytest.mark.parametrize("weighted", [False, True])
def test_a_fused_kernel_equals_the_composition_of_its_family_and_link(loss, weighted):
    eta, y, w = _rows(loss)
    w = w if weighted else None
    psi, total = loss.terms(eta.copy(), y, w)
    psi_c, total_c = Family.terms(loss, eta.copy(), y, w)
    np.testing.assert_allclose(psi, psi_c, rtol=1e-12, atol=1e-15)
    assert total == pytest.approx(total_c, rel=1e-12)
    np.testing.assert_allclose(loss.fisher(eta), Family.fisher(loss, eta), rtol=1e-12, atol=1e-15)
    if loss.link is LOGIT:  # canonical: the observed curvature is Fisher's
        np.testing.assert_allclose(loss.second(eta, y), Family.second(loss, eta, y), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss", LOSS_CASES, ids=lambda c: c.name)
def test_psi_and_the_curvature_are_the_derivatives_of_the_loss(loss):
    eta, y, w = _rows(loss, n=40)
    psi = np.array(loss.terms(eta.copy(), y, w)[0])
    h = 1e-6
    for i in range(0, 40, 7):
        up, down = eta.copy(), eta.copy()
        up[i] += h
        down[i] -= h
        fd = (_objective(loss, up, y, w) - _objective(loss, down, y, w)) / (2 * h)
        assert psi[i] == pytest.approx(fd, rel=1e-6, abs=1e-8)
        if isinstance(loss, Family):  # Huber has no ℓ'' at its kinks to check
            dpsi = (loss.terms(up.copy(), y, None)[0][i] - loss.terms(down.copy(), y, None)[0][i]) / (2 * h)
            assert loss.second(eta, y)[i] == pytest.approx(dpsi, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("link", [IDENTITY, LOGIT, LOG], ids=lambda k: k.name)
def test_a_link_inverts_and_its_derivative_is_the_finite_difference(link):
    eta = np.linspace(-4, 4, 17)
    np.testing.assert_allclose(link(link.inverse(eta)), eta, rtol=1e-12, atol=1e-12)
    h = 1e-6
    np.testing.assert_allclose(link.inverse_derivative(eta),
                               (link.inverse(eta + h) - link.inverse(eta - h)) / (2 * h), rtol=1e-7)


def test_the_registry_finds_every_module_default_first_and_the_config_takes_their_options():
    from gd_dask.config import ModelConfig

    assert list(losses.LOSSES)[0] == "squared" and set(losses.LOSSES) == {
        "squared", "huber", "logistic", "poisson", "gamma", "tweedie"}
    assert "poisson-test" not in losses.LOSSES  # register=False
    for cls in losses.LOSSES.values():
        assert set(cls.options) <= set(ModelConfig.model_fields)
    assert losses.of(ModelConfig(loss="huber", huber_delta=2.5)).delta == 2.5
    assert ModelConfig.model_fields["loss"].default == "squared"


def test_an_estimator_named_by_a_loss_is_linear_regression_fixed_to_it(client):
    from gd_dask import LinearRegression
    from gd_dask.interfaces import estimator

    named = types.new_class("HuberNamed", (losses.Huber,), {"register": False},
                            lambda ns: ns.update(estimator="HuberRegressor"))
    HuberRegressor = estimator._regressor(named)
    assert HuberRegressor.__name__ == "HuberRegressor"
    params = HuberRegressor().get_params()
    assert "loss" not in params and params["huber_delta"] == 1.35
    assert "huber_delta" not in estimator.LogisticRegression().get_params()
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 2))
    y = X @ [1.0, -2.0] + 0.5 + rng.standard_t(2, size=400)
    with client.as_current():
        a = HuberRegressor(huber_delta=1.0).fit(X, y)
        b = LinearRegression(loss="huber", huber_delta=1.0).fit(X, y)
    assert a.coef_.tolist() == b.coef_.tolist() and a.intercept_ == b.intercept_
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_error_metrics_are_of_the_mean_the_link_predicts_from_the_files_and_from_the_cache():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from gd_dask.kernels.metrics import block_errors, error_metrics

    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2))
    m, b = np.array([0.3, -0.2]), 0.5
    y = rng.poisson(np.exp(X @ m + b)).astype(float)
    got = error_metrics(block_errors(np.column_stack([X, y]), m, b, link=LOG))
    mu = np.exp(X @ m + b)
    assert got["mse"] == pytest.approx(mean_squared_error(y, mu), rel=1e-12)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, mu), rel=1e-12)
    assert got["r2"] == pytest.approx(r2_score(y, mu), rel=1e-12)
    from gd_dask.kernels.metrics import block_errors_std

    center, scale, y_center = X.mean(axis=0), X.std(axis=0), float(y.mean())  # the cache's standardized block
    zs = np.column_stack([(X - center) / scale, y - y_center])
    cached = error_metrics(block_errors_std(zs, m * scale, b + m @ center - y_center, y_center, link=LOG))
    for key in ("mse", "mae", "r2"):
        assert cached[key] == pytest.approx(got[key], rel=1e-12)

