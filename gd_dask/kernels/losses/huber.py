"""Huber's loss: squared near the fit, linear beyond a threshold; robust to outliers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field, Strict

from .base import Loss


@dataclass(frozen=True)
class Huber(Loss):
    """ρ(r) = r²/2 for |r| ≤ delta, delta·(|r| − delta/2) beyond; ψ = ρ′ = clip(r);
    reported 2ρ, which reads like an MSE. ρ″ ≤ 1: the squared loss's rates stay stable."""

    name: ClassVar[str] = "huber"
    summary: ClassVar[str] = "robust to outliers (threshold model.huber_delta)"
    label: ClassVar[str] = "mean of 2·Huber loss"
    options: ClassVar[dict] = {"huber_delta": (Annotated[float, Strict(), Field(gt=0)], Field(
        default=1.35, description="Huber threshold, in units of the target."))}
    delta: float = 1.35

    def terms(self, eta, y, w):
        err = eta - y
        delta = self.delta
        psi = np.clip(err, -delta, delta)
        a = np.abs(err)
        two_rho = np.where(a <= delta, err * err, delta * (2.0 * a - delta))
        if w is None:
            return psi, float(two_rho.sum())
        return w * psi, float(w @ two_rho)
