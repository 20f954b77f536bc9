"""Tweedie regression, 1 < power < 2: amounts with exact zeros (compound Poisson–Gamma),
with the log link."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field, Strict

from .base import LogFamily


@dataclass(frozen=True)
class Tweedie(LogFamily):
    """V(mu) = mu^p. With a = e^((1−p)·eta) and c = e^((2−p)·eta) = mu^(2−p), half the
    deviance is ℓ = c/(2−p) − y·a/(1−p) (+ a term of y alone), ψ = c − y·a (= mu^(1−p)·(mu − y)),
    ℓ'' = (2−p)·c + (p−1)·y·a and |ℓ'''| = |(2−p)²·c − (p−1)²·y·a| ≤ ℓ''; Fisher's weight is c."""

    name: ClassVar[str] = "tweedie"
    deviance_metric: ClassVar[str] = "mean_tweedie_deviance"
    label: ClassVar[str] = "mean Tweedie deviance"
    summary: ClassVar[str] = "amounts with zeros (y ≥ 0), power model.tweedie_power, log link"
    target_rule: ClassVar[str | None] = "≥ 0"
    estimator: ClassVar[str | None] = "TweedieRegressor"
    options: ClassVar[dict] = {"tweedie_power": (Annotated[float, Strict(), Field(gt=1, lt=2)], Field(
        default=1.5, description="Tweedie's power p (variance mu^p), 1 < p < 2."))}
    power: float = 1.5

    def variance(self, mu):
        return mu ** self.power

    def unit_deviance(self, y, mu):
        p = self.power
        return 2.0 * (np.maximum(y, 0.0) ** (2 - p) / ((1 - p) * (2 - p)) - y * mu ** (1 - p) / (1 - p)
                      + mu ** (2 - p) / (2 - p))

    def _parts(self, eta):
        p = self.power
        with np.errstate(over="ignore"):
            return np.exp((1 - p) * eta), np.exp((2 - p) * eta)

    def terms(self, eta, y, w):
        p = self.power
        a, c = self._parts(eta)
        ya = y * a
        psi = c - ya
        dev = 2.0 * (y ** (2 - p) / ((1 - p) * (2 - p)) - ya / (1 - p) + c / (2 - p))
        if w is None:
            return psi, float(dev.sum())
        return w * psi, float(w @ dev)

    def newton_terms(self, eta, y, w):
        p = self.power
        a, c = self._parts(eta)
        ya = y * a
        psi = c - ya
        dev = 2.0 * (c / (2 - p) - ya / (1 - p))
        h = (2 - p) * c + (p - 1) * ya
        mag = c + np.abs(ya)
        if w is None:
            return psi, float(dev.sum()), h, mag
        return w * psi, float(w @ dev), h, mag

    def constant_terms(self, y):
        p = self.power
        return 2.0 * y ** (2 - p) / ((1 - p) * (2 - p))

    def second(self, eta, y):
        p = self.power
        a, c = self._parts(eta)
        return (2 - p) * c + (p - 1) * y * a

    def fisher(self, eta):
        return self._parts(eta)[1]

    def magnitude(self, eta, y):
        a, c = self._parts(eta)
        return c + np.abs(y) * a

    def null_term(self, y):
        return y ** (2 - self.power)

    def null_deviance(self, n, sum_y, sum_null):
        p, ybar = self.power, sum_y / n
        return 2.0 * (sum_null / ((1 - p) * (2 - p)) - sum_y * ybar ** (1 - p) / (1 - p)
                      + n * ybar ** (2 - p) / (2 - p))
