"""Gamma regression: positive amounts, with the log link."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import LogFamily


@dataclass(frozen=True)
class Gamma(LogFamily):
    """ℓ = eta + y·e^−eta (+ a term of y alone): half the Gamma deviance
    d = 2(log(mu/y) + y/mu − 1). ψ = 1 − y/mu, ℓ'' = −ℓ''' = y/mu; Fisher's weight is 1."""

    name: ClassVar[str] = "gamma"
    deviance_metric: ClassVar[str] = "mean_gamma_deviance"
    label: ClassVar[str] = "mean Gamma deviance"
    summary: ClassVar[str] = "positive amounts (y > 0), log link; predictions are means"
    target_rule: ClassVar[str | None] = "> 0"
    estimator: ClassVar[str | None] = "GammaRegressor"
    power: ClassVar[float] = 2.0  # the variance mu^power

    def variance(self, mu):
        return mu * mu

    def unit_deviance(self, y, mu):
        return 2.0 * (np.log(mu / y) + y / mu - 1.0)

    def _ratio(self, eta, y):
        with np.errstate(over="ignore"):
            return y * np.exp(-eta)  # y/mu

    def terms(self, eta, y, w):
        r = self._ratio(eta, y)
        psi = 1.0 - r
        dev = 2.0 * (eta - np.log(y) + r - 1.0)
        if w is None:
            return psi, float(dev.sum())
        return w * psi, float(w @ dev)

    def newton_terms(self, eta, y, w):
        r = self._ratio(eta, y)
        psi = 1.0 - r
        dev = 2.0 * (eta + r)
        mag = 1.0 + r
        if w is None:
            return psi, float(dev.sum()), r, mag
        return w * psi, float(w @ dev), r, mag

    def constant_terms(self, y):
        return -2.0 * (np.log(y) + 1.0)

    def second(self, eta, y):
        return self._ratio(eta, y)

    def fisher(self, eta):
        return np.ones_like(eta)

    def magnitude(self, eta, y):
        return 1.0 + self._ratio(eta, y)

    def null_term(self, y):
        return np.log(y)

    def null_deviance(self, n, sum_y, sum_null):
        return 2.0 * (n * float(np.log(sum_y / n)) - sum_null)

    def check_target(self, y):
        return y[~(y > 0.0)]
