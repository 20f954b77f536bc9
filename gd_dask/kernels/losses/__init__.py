"""Per-row losses, each in its own module, composed from a link (``links.py``) and, for
the GLM kind, a family (``base.Family``). ``base.py`` says what a loss is.

Every module here is imported once, which registers its loss by name: adding a loss is
adding its module (and its tests and README lines), nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import DEVIANCE_METRICS, LOSSES, LOWER_IS_BETTER, TASK_METRICS, Family, Loss  # noqa: F401
from .links import IDENTITY, LOG, LOGIT, Link  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "links"):
        importlib.import_module(f"{__name__}.{_module.name}")
# The default first (the config's default and the schema's text), then by name.
for _name in sorted(LOSSES, key=lambda n: (not LOSSES[n].default, n)):
    LOSSES[_name] = LOSSES.pop(_name)

from .base import LogFamily  # noqa: E402,F401
from .gamma import Gamma  # noqa: E402,F401
from .huber import Huber  # noqa: E402,F401
from .logistic import Logistic  # noqa: E402,F401
from .poisson import Poisson  # noqa: E402,F401
from .squared import Squared  # noqa: E402,F401
from .tweedie import Tweedie  # noqa: E402,F401

SQUARED = Squared()


def describe() -> str:
    """The losses for the config schema, one clause each."""
    return "; ".join(f"{name}: {cls.summary}" + ("" if cls.quadratic else
                                                 " (strategy stream)" if cls.bounded_curvature else
                                                 " (strategy newton)")
                     for name, cls in LOSSES.items()) + "."


def options() -> dict:
    """Every loss's ``model`` config keys: {key: (type, pydantic Field)}."""
    return {key: spec for cls in LOSSES.values() for key, spec in cls.options.items()}


def of(model_cfg) -> Loss:
    """The loss a ``model`` config section asks for."""
    return LOSSES[model_cfg.loss].of(model_cfg)
