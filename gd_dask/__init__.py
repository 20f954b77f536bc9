"""gd_dask: linear regression by gradient descent on Dask, from partitioned Parquet data."""

from .version import __version__  # noqa: F401


def load_model(path, storage_options=None):
    """Load a model.json (path or URL); the result has ``predict(X)`` (``gd_dask.artifacts.model.Model``)."""
    from .artifacts.model import load_model as _load

    return _load(path, storage_options)


def train(config, overrides=None, scheduler=None):
    """Run the YAML job ``config`` (a path, a mapping or a RunConfig) as ``gd-dask train``
    does; returns the model (``gd_dask.interfaces.api.train``)."""
    from .interfaces.api import train as _train

    return _train(config, overrides, scheduler)


def __getattr__(name):
    if name.endswith(("Regression", "Regressor")):  # scikit-learn style, one per loss that names one
        from .interfaces import estimator

        if name in estimator.ESTIMATORS:
            return estimator.ESTIMATORS[name]
    raise AttributeError(f"module 'gd_dask' has no attribute {name!r}")
