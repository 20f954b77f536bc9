"""What a loss is to the rest of gd_dask, and the registry that finds each one by name.

A loss sees a row's linear predictor ``eta = xs·m + b`` and its target ``y``:

* ``terms(eta, y, w)`` gives the derivative ψ = ∂ℓ/∂eta of each row (times its weight)
  and the sum of the *reported* per-row loss (err² for squared loss, so the loss column
  reads as an MSE). The gradient kernels sum ψ·xs and ψ; the training objective is
  ``reported / penalty_scale`` plus the penalties.
* ``link``: what a prediction is, ``link.inverse(eta)`` (``links.py``).
* ``quadratic``: the objective is a quadratic in (m, b), so its moments are sufficient
  statistics (the ``gram`` strategy) and the coefficient bound of ``certify`` is exact.
* ``curvature``: sup ℓ''; the objective's Hessian is at most this times the Gram matrix
  of [xs, 1], which gives ``learning_rate: auto`` and the stable limit.
* ``center_target``: whether y may be shifted by its mean (which only improves rounding).
* ``check_target(y)``: the values a target column may not hold, for a one-line error.
* ``options``: the ``model`` config keys the loss takes (``huber_delta``), declared here
  and added to the config's ``model`` section from here.
* ``estimator``: the name of a scikit-learn style estimator fixed to this loss, made by
  ``interfaces.estimator`` (None: the loss is a parameter of ``LinearRegression``).

``Family`` is a loss of the GLM kind, written in the mean: a unit deviance, a variance
function and a link, composed by the chain rule (as glum keeps ``_distribution`` and
``_link`` apart). A family with a canonical link may override ``terms`` with a fused
kernel in eta (squared and logistic do: fewer passes over the slice, no log of a mean
near 0); tests check the fused kernel against the composition.

Adding a loss is one module in this package defining a subclass with a ``name``: it is
registered when defined and found by the package's ``__init__``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ...sizes import SLICE_ROWS
from .links import IDENTITY, LOG, Link

#: The metrics each task reports, the first being what refits compare by default.
TASK_METRICS = {"regression": ("rmse", "mse", "mae", "r2"),
                "classification": ("log_loss", "roc_auc", "accuracy", "brier", "precision", "recall")}
#: The mean deviance of each family that reports one (scikit-learn's names), with D².
DEVIANCE_METRICS = ("mean_poisson_deviance", "mean_gamma_deviance", "mean_tweedie_deviance", "d2")
#: Metrics where lower is better (refit's gate).
LOWER_IS_BETTER = frozenset({"rmse", "mse", "mae", "log_loss", "brier", *DEVIANCE_METRICS[:-1]})

#: name → loss class, filled as each loss module is imported (``Loss.__init_subclass__``).
LOSSES: dict[str, type[Loss]] = {}


@dataclass(frozen=True)
class Loss:
    name: ClassVar[str]
    link: ClassVar[Link] = IDENTITY
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
    #: ``model`` config keys this loss takes: {key: (type, pydantic Field)}, in the order
    #: of the dataclass's fields (``of`` passes them positionally).
    options: ClassVar[dict[str, tuple[Any, Any]]] = {}
    #: A scikit-learn style estimator fixed to this loss (``interfaces.estimator``).
    estimator: ClassVar[str | None] = None
    #: The registry lists the default loss first, then the others in the order defined.
    default: ClassVar[bool] = False
    #: The link is the family's canonical one: ℓ'' is Fisher's weight (no separate pass
    #: for the information matrix of the summary).
    canonical: ClassVar[bool] = False
    #: sup ℓ'' is finite (``curvature``): gradient descent has a stable rate. Families whose
    #: curvature grows without bound (the log link's e^eta) train by Newton steps only.
    bounded_curvature: ClassVar[bool] = True

    @classmethod
    def metrics(cls) -> tuple[str, ...]:
        """What evaluate reports for this loss, the first what refits compare by default:
        the task's metrics, after the family's own deviance and D² where it has one."""
        own = getattr(cls, "deviance_metric", None)
        return ((own, "d2") if own else ()) + TASK_METRICS[cls.task]

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if register and "name" in cls.__dict__:
            LOSSES[cls.name] = cls

    def terms(self, eta, y, w) -> tuple[np.ndarray, float]:
        """(w·ψ per row, Σ w·reported loss) for predictors ``eta`` and targets ``y``;
        ``w`` None: unweighted. May overwrite ``eta``; ψ may live in a per-thread buffer
        that the next call reuses (dask workers trim the heap on every free, so
        slice-sized temporaries would be faulted in anew for every slice)."""
        raise NotImplementedError

    def predict(self, eta):
        """What a prediction is: the link's inverse (identity for regression)."""
        return self.link.inverse(eta)

    def second(self, eta, y) -> np.ndarray:
        """ℓ'' per row, for the certificate of a non-quadratic loss (``certify.LocalBound``)."""
        raise NotImplementedError

    def newton_terms(self, eta, y, w) -> tuple:
        """(w·ψ, Σ w·reported loss less ``constant_terms``, ℓ'', ``magnitude``) per row:
        what a Newton pass needs (``kernels.newton.block_newton_std``), each transcendental
        evaluated once where a loss fuses them. May overwrite ``eta``."""
        h, mag = self.second(eta, y), self.magnitude(eta, y)
        psi, total = self.terms(eta, y, w)
        return psi, total, h, mag

    def magnitude(self, eta, y) -> np.ndarray:
        """The size of the terms ψ is computed from, per row (its rounding is a few units
        of this)."""
        raise NotImplementedError

    def constant_terms(self, y) -> np.ndarray | None:
        """The reported loss's terms of y alone, per row, which ``newton_terms`` leaves out
        (a pass needs them once: they do not move with the coefficients); None: none."""
        return None

    def check_target(self, y) -> np.ndarray | None:
        """The values of ``y`` this loss refuses (None: any finite value will do)."""
        return None

    @classmethod
    def of(cls, model_cfg) -> Loss:
        """This loss with its ``options`` read from a ``model`` config section."""
        return cls(*(getattr(model_cfg, key) for key in cls.options))


@dataclass(frozen=True)
class Family(Loss):
    """A loss of the GLM kind: the training objective is half the mean unit deviance
    d(y, mu) of mu = link.inverse(eta). By the chain rule

        ψ = ∂(d/2)/∂eta = (mu − y)·mu'(eta) / V(mu),

    and the expected curvature (Fisher's) is mu'(eta)² / V(mu), which is ℓ'' itself
    under the canonical link (mu' = V). The reported loss is d·penalty_scale/2."""

    def variance(self, mu) -> np.ndarray:
        """V(mu): the variance of y at mean mu, up to the dispersion."""
        raise NotImplementedError

    def unit_deviance(self, y, mu) -> np.ndarray:
        """d(y, mu) per row: twice the log-likelihood lost against a perfect fit."""
        raise NotImplementedError

    def terms(self, eta, y, w):
        mu = self.link.inverse(eta)
        psi = (mu - y) * self.link.inverse_derivative(eta) / self.variance(mu)
        reported = self.unit_deviance(y, mu) * (self.penalty_scale / 2.0)
        if w is None:
            return psi, float(reported.sum())
        return w * psi, float(w @ reported)

    def fisher(self, eta) -> np.ndarray:
        """mu'(eta)² / V(mu) per row: the weights of a Newton (IRLS) step."""
        d = self.link.inverse_derivative(eta)
        return d * d / self.variance(self.link.inverse(eta))

    def second(self, eta, y):
        return self.fisher(eta)


_local = threading.local()


def buffers(n: int, k: int) -> list[np.ndarray]:
    """``k`` per-thread reused vectors of length ``n`` (see ``Loss.terms``)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.shape[0] < k or buf.shape[1] < n:
        buf = _local.buf = np.empty((k, max(n, SLICE_ROWS)))
    return [buf[i, :n] for i in range(k)]


@dataclass(frozen=True)
class LogFamily(Family):
    """A family with the log link, for counts and amounts (Poisson, Gamma, Tweedie): mu =
    e^eta, always positive. Its curvature grows without bound (e^eta), so no learning rate
    is stable everywhere: it trains by Newton steps (``optimization.newton``), certified by
    self-concordance: each family here has |ℓ'''| ≤ ℓ'' in eta (``certify.LocalBound``).

    A subclass gives ``deviance_metric`` (scikit-learn's name), the fused ``terms``, ℓ''
    (``second``, the observed curvature Newton needs; ``fisher`` is the expected one the
    summary uses), ``magnitude`` (what ψ is the difference of: its rounding), and for D²
    the row term ``null_term`` whose sum with n and Σy gives the deviance of the constant
    prediction ȳ (``null_deviance``)."""

    link = LOG
    curvature: ClassVar[float] = math.inf
    bounded_curvature: ClassVar[bool] = False
    center_target: ClassVar[bool] = False
    self_concordant: ClassVar[bool] = True
    deviance_metric: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.metric = cls.deviance_metric  # final_loss: the family's mean deviance

    def null_term(self, y) -> np.ndarray:
        raise NotImplementedError

    def null_deviance(self, n: float, sum_y: float, sum_null: float) -> float:
        """Σ d(y, ȳ) from n = Σw, Σ w·y and Σ w·``null_term(y)``."""
        raise NotImplementedError

    def check_target(self, y):
        return y[~(y >= 0.0)]
