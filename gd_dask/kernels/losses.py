"""Per-row losses: everything the rest of gd_dask needs to know about one, in one place.

A loss sees the linear predictor ``eta = xs·m + b`` of a row and its target ``y``:

* ``terms(eta, y, w)`` gives the derivative ψ = ∂ℓ/∂eta of each row (times its weight)
  and the sum of the *reported* per-row loss (err² for squared loss, so the loss column
  reads as an MSE). The gradient kernels (``gradient``) sum ψ·xs and ψ; the training
  objective is ``reported / penalty_scale`` plus the penalties.
* ``quadratic``: the objective is a quadratic in (m, b), so its moments are sufficient
  statistics (the ``gram`` strategy) and the coefficient bound of ``certify`` is exact.
* ``curvature``: sup ℓ''; the objective's Hessian is at most this times the Gram matrix
  of [xs, 1], which gives ``learning_rate: auto`` and the stable limit.
* ``center_target``: whether y may be shifted by its mean (which only improves rounding).
* ``predict(eta)``: the inverse link, what ``predict`` writes.
* ``check_target(y)``: the values a target column may not hold, for a one-line error.

Adding a loss is a class here and an entry in ``LOSSES``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..sizes import SLICE_ROWS


@dataclass(frozen=True)
class Loss:
    name: ClassVar[str]
    quadratic: ClassVar[bool] = False
    curvature: ClassVar[float] = 1.0
    center_target: ClassVar[bool] = True
    #: The reported loss over the objective's data term (2 for ½·MSE, whose report is the MSE).
    penalty_scale: ClassVar[float] = 2.0
    #: The metric that model.json's ``final_loss`` reports.
    metric: ClassVar[str] = "mse"
    #: ``regression`` or ``classification`` (what evaluate and predict report).
    task: ClassVar[str] = "regression"
    #: What the loss column of history.csv and loss.png holds.
    label: ClassVar[str] = "mean squared error"
    #: One line for the config schema.
    summary: ClassVar[str] = ""
    #: The values a target may hold, in words (None: any finite value); ``check_target``.
    target_rule: ClassVar[str | None] = None
    #: |ℓ'''| ≤ ℓ'': the curvature changes slowly (Bach 2010), so one pass measuring it
    #: at θ certifies the coefficients' error (``certify.LocalBound``).
    self_concordant: ClassVar[bool] = False

    def terms(self, eta, y, w) -> tuple[np.ndarray, float]:
        """(w·ψ per row, Σ w·reported loss) for predictors ``eta`` and targets ``y``;
        ``w`` None: unweighted. May overwrite ``eta``; ψ may live in a per-thread buffer
        that the next call reuses (dask workers trim the heap on every free, so
        slice-sized temporaries would be faulted in anew for every slice)."""
        raise NotImplementedError

    def predict(self, eta):
        """The inverse link: what a prediction is (identity for regression)."""
        return eta

    def second(self, eta, y) -> np.ndarray:
        """ℓ'' per row, for the certificate of a non-quadratic loss (``certify.LocalBound``)."""
        raise NotImplementedError

    def check_target(self, y) -> np.ndarray | None:
        """The values of ``y`` this loss refuses (None: any finite value will do)."""
        return None

    @classmethod
    def of(cls, model_cfg) -> Loss:
        return cls()


@dataclass(frozen=True)
class Squared(Loss):
    """ℓ = ½(eta − y)²: ψ = err, reported err² (so the loss column is the MSE)."""

    name: ClassVar[str] = "squared"
    quadratic: ClassVar[bool] = True
    summary: ClassVar[str] = "least squares"

    def terms(self, eta, y, w):
        err = np.subtract(eta, y, out=eta)
        if w is None:
            return err, float(err @ err)
        we = w * err
        return we, float(we @ err)


@dataclass(frozen=True)
class Huber(Loss):
    """ρ(r) = r²/2 for |r| ≤ delta, delta·(|r| − delta/2) beyond; ψ = ρ′ = clip(r);
    reported 2ρ, which reads like an MSE. ρ″ ≤ 1: the squared loss's rates stay stable."""

    name: ClassVar[str] = "huber"
    summary: ClassVar[str] = "robust to outliers (threshold model.huber_delta)"
    label: ClassVar[str] = "mean of 2·Huber loss"
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

    @classmethod
    def of(cls, model_cfg) -> Huber:
        return cls(model_cfg.huber_delta)


_local = threading.local()


def _buffers(n: int, k: int) -> list[np.ndarray]:
    """``k`` per-thread reused vectors of length ``n`` (see ``Loss.terms``)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.shape[0] < k or buf.shape[1] < n:
        buf = _local.buf = np.empty((k, max(n, SLICE_ROWS)))
    return [buf[i, :n] for i in range(k)]


def _sigmoid_parts(eta):
    """(e, p) with e = exp(−|eta|) and p = 1/(1 + exp(−eta)), without overflow."""
    e = np.exp(-np.abs(eta))
    r = 1.0 / (1.0 + e)
    return e, np.where(eta >= 0, r, e * r)


@dataclass(frozen=True)
class Logistic(Loss):
    """ℓ = log(1 + e^eta) − y·eta for a 0/1 target: the log-loss of p = σ(eta).
    ψ = p − y, ℓ'' = p(1 − p) ≤ ¼ and |ℓ'''| = ℓ''·|1 − 2p| ≤ ℓ''. Reported as is (the
    mean log-loss); predictions are the probabilities p."""

    name: ClassVar[str] = "logistic"
    curvature: ClassVar[float] = 0.25
    center_target: ClassVar[bool] = False
    penalty_scale: ClassVar[float] = 1.0
    metric: ClassVar[str] = "log_loss"
    task: ClassVar[str] = "classification"
    summary: ClassVar[str] = "log-loss of a 0/1 target; predictions are probabilities"
    label: ClassVar[str] = "mean log-loss"
    target_rule: ClassVar[str | None] = "0 or 1"
    self_concordant: ClassVar[bool] = True

    def terms(self, eta, y, w):
        e, r, psi = _buffers(eta.shape[0], 3)
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

    def predict(self, eta):
        return _sigmoid_parts(eta)[1]

    def second(self, eta, y):
        p = self.predict(eta)
        return p * (1.0 - p)

    def check_target(self, y):
        return y[(y != 0.0) & (y != 1.0)]


#: The metrics each task reports, the first being what refits compare by default.
TASK_METRICS = {"regression": ("rmse", "mse", "mae", "r2"),
                "classification": ("log_loss", "roc_auc", "accuracy", "brier", "precision", "recall")}
#: Metrics where lower is better (refit's gate).
LOWER_IS_BETTER = frozenset({"rmse", "mse", "mae", "log_loss", "brier"})

LOSSES: dict[str, type[Loss]] = {cls.name: cls for cls in (Squared, Huber, Logistic)}
SQUARED = Squared()


def describe() -> str:
    """The losses for the config schema, one clause each."""
    return "; ".join(f"{name}: {cls.summary}" + ("" if cls.quadratic else " (strategy stream)")
                     for name, cls in LOSSES.items()) + "."


def of(model_cfg) -> Loss:
    """The loss a ``model`` config section asks for."""
    return LOSSES[model_cfg.loss].of(model_cfg)
