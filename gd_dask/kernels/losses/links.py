"""Links: the map between a row's linear predictor ``eta = x·m + b`` and its mean ``mu``.

``inverse(eta)`` is the mean a model predicts, ``inverse_derivative(eta)`` is dmu/deta (what
the chain rule takes from the link when a loss is written in the mean, ``base.Family``),
and ``__call__(mu)`` goes back. Each is overflow-safe where the link can overflow.
"""

from __future__ import annotations

import numpy as np


class Link:
    name: str = ""

    def __call__(self, mu):
        raise NotImplementedError

    def inverse(self, eta):
        raise NotImplementedError

    def inverse_derivative(self, eta):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Link):
    name = "identity"

    def __call__(self, mu):
        return mu

    def inverse(self, eta):
        return eta

    def inverse_derivative(self, eta):
        return np.ones_like(eta)


def sigmoid_parts(eta):
    """(e, p) with e = exp(−|eta|) and p = 1/(1 + exp(−eta)), without overflow."""
    e = np.exp(-np.abs(eta))
    r = 1.0 / (1.0 + e)
    return e, np.where(eta >= 0, r, e * r)


class Logit(Link):
    """mu = σ(eta), the canonical link of a 0/1 target."""

    name = "logit"

    def __call__(self, mu):
        return np.log(mu) - np.log1p(-mu)

    def inverse(self, eta):
        return sigmoid_parts(eta)[1]

    def inverse_derivative(self, eta):
        p = self.inverse(eta)
        return p * (1.0 - p)


class Log(Link):
    """mu = exp(eta): counts and amounts (Poisson's canonical link; Gamma's and Tweedie's usual one)."""

    name = "log"

    def __call__(self, mu):
        return np.log(mu)

    def inverse(self, eta):
        with np.errstate(over="ignore"):  # an overflowing mean is the caller's to name
            return np.exp(eta)

    def inverse_derivative(self, eta):
        return self.inverse(eta)


IDENTITY, LOGIT, LOG = Identity(), Logit(), Log()
