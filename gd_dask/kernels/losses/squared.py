"""Least squares: the Normal family with the identity link."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Family


@dataclass(frozen=True)
class Squared(Family):
    """ℓ = ½(eta − y)²: ψ = err, reported err² (so the loss column is the MSE). The unit
    deviance is err² and V = 1: ``terms`` is the composition, fused into one subtraction."""

    name: ClassVar[str] = "squared"
    default: ClassVar[bool] = True
    quadratic: ClassVar[bool] = True
    canonical: ClassVar[bool] = True
    summary: ClassVar[str] = "least squares"

    def variance(self, mu):
        return np.ones_like(mu)

    def unit_deviance(self, y, mu):
        err = mu - y
        return err * err

    def terms(self, eta, y, w):
        err = np.subtract(eta, y, out=eta)
        if w is None:
            return err, float(err @ err)
        we = w * err
        return we, float(we @ err)

    def second(self, eta, y):
        return np.ones_like(eta)

    def null_term(self, y):
        """The intercept-only model's deviance Σ w·(y − ȳ)² is Σ w·y² − (Σ w·y)²/Σ w."""
        return y * y

    def null_deviance(self, n, sum_y, sum_null):
        return sum_null - sum_y * sum_y / n

    def magnitude(self, eta, y):
        """ψ = eta − y: the sizes of both (a Newton pass with levels and l2:
        ``jobs.categorical_newton``)."""
        return np.abs(eta) + np.abs(y)
