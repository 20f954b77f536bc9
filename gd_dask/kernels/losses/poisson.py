"""Poisson regression: counts, with the log link (the family's canonical one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import LogFamily


def xlogy(y, z):
    """y·log(z), 0 where y = 0 (the convention of a count's deviance)."""
    out = np.zeros(np.shape(y))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log(z, out=out, where=np.asarray(y) > 0)
    out *= y
    return out


@dataclass(frozen=True)
class Poisson(LogFamily):
    """ℓ = e^eta − y·eta (+ a term of y alone): half the Poisson deviance
    d = 2(y·log(y/mu) − y + mu). ψ = mu − y, ℓ'' = ℓ''' = mu."""

    name: ClassVar[str] = "poisson"
    canonical: ClassVar[bool] = True
    deviance_metric: ClassVar[str] = "mean_poisson_deviance"
    label: ClassVar[str] = "mean Poisson deviance"
    summary: ClassVar[str] = "counts (y ≥ 0), log link; predictions are means"
    target_rule: ClassVar[str | None] = "≥ 0"
    estimator: ClassVar[str | None] = "PoissonRegressor"
    power: ClassVar[float] = 1.0  # the variance mu^power

    def variance(self, mu):
        return mu

    def unit_deviance(self, y, mu):
        return 2.0 * (xlogy(y, y / mu) - y + mu)

    def terms(self, eta, y, w):
        with np.errstate(over="ignore"):
            mu = np.exp(eta)
        psi = mu - y
        dev = 2.0 * (xlogy(y, y) - y * eta - y + mu)
        if w is None:
            return psi, float(dev.sum())
        return w * psi, float(w @ dev)

    def newton_terms(self, eta, y, w):
        with np.errstate(over="ignore"):
            mu = np.exp(eta)
        psi = mu - y
        dev = 2.0 * (mu - y * eta)
        mag = mu + np.abs(y)
        if w is None:
            return psi, float(dev.sum()), mu, mag
        return w * psi, float(w @ dev), mu, mag

    def constant_terms(self, y):
        return 2.0 * (xlogy(y, y) - y)

    def second(self, eta, y):
        with np.errstate(over="ignore"):
            return np.exp(eta)

    def fisher(self, eta):
        return self.second(eta, None)

    def magnitude(self, eta, y):
        with np.errstate(over="ignore"):
            return np.exp(eta) + np.abs(y)

    def null_term(self, y):
        return xlogy(y, y)

    def null_deviance(self, n, sum_y, sum_null):
        if sum_y <= 0:
            return 0.0
        return 2.0 * (sum_null - sum_y * float(np.log(sum_y / n)))
