"""Logistic regression: the Bernoulli family with its canonical link, the logit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Family, buffers
from .links import LOGIT


@dataclass(frozen=True)
class Logistic(Family):
    """ℓ = log(1 + e^eta) − y·eta for a 0/1 target: the log-loss of p = σ(eta), half the
    Bernoulli deviance. ψ = p − y, ℓ'' = p(1 − p) ≤ ¼ and |ℓ'''| = ℓ''·|1 − 2p| ≤ ℓ''.
    Reported as is (the mean log-loss); predictions are the probabilities p. ``terms`` is
    the composition fused in eta: log1p(e^−|eta|) never takes the log of a p near 0 or 1."""

    name: ClassVar[str] = "logistic"
    link = LOGIT
    curvature: ClassVar[float] = 0.25
    center_target: ClassVar[bool] = False
    penalty_scale: ClassVar[float] = 1.0
    metric: ClassVar[str] = "log_loss"
    task: ClassVar[str] = "classification"
    summary: ClassVar[str] = "log-loss of a 0/1 target; predictions are probabilities"
    label: ClassVar[str] = "mean log-loss"
    target_rule: ClassVar[str | None] = "0 or 1"
    self_concordant: ClassVar[bool] = True
    canonical: ClassVar[bool] = True
    estimator: ClassVar[str | None] = "LogisticRegression"

    def variance(self, mu):
        return mu * (1.0 - mu)

    def unit_deviance(self, y, mu):
        return -2.0 * (y * np.log(mu) + (1.0 - y) * np.log1p(-mu))

    def terms(self, eta, y, w):
        e, r, psi = buffers(eta.shape[0], 3)
        np.abs(eta, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)  # e^−|eta|
        np.add(e, 1.0, out=r)
        np.reciprocal(r, out=r)  # σ(|eta|)
        np.multiply(e, r, out=psi)  # σ(−|eta|)
        np.copyto(psi, r, where=eta >= 0)  # p = σ(eta)
        np.subtract(psi, y, out=psi)
        # log(1 + e^eta) − y·eta = log1p(e^−|eta|) + (eta⁺ for y = 0, eta⁻ for y = 1)
        np.negative(eta, out=eta, where=y > 0.5)
        np.maximum(eta, 0.0, out=eta)
        ll = np.log1p(e, out=e)
        ll += eta
        if w is None:
            return psi, float(ll.sum())
        return w * psi, float(w @ ll)

    def newton_terms(self, eta, y, w):
        e = np.exp(-np.abs(eta))
        r = 1.0 / (1.0 + e)  # σ(|eta|)
        p = np.where(eta >= 0, r, e * r)
        h = e * r * r  # σ(eta)·σ(−eta), without 1 − p's cancellation
        psi = p - y
        ll = np.log1p(e)
        ll += np.maximum(eta * (1.0 - 2.0 * y), 0.0)  # eta⁺ for y = 0, eta⁻ for y = 1
        mag = p + np.abs(y)
        if w is None:
            return psi, float(ll.sum()), h, mag
        return w * psi, float(w @ ll), h, mag

    def second(self, eta, y):
        p = self.predict(eta)
        return p * (1.0 - p)

    def magnitude(self, eta, y):
        """ψ = p − y: the sizes of p and y."""
        return self.predict(eta) + np.abs(y)

    def check_target(self, y):
        return y[(y != 0.0) & (y != 1.0)]
