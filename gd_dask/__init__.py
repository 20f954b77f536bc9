"""gd_dask: linear regression by gradient descent on Dask, from partitioned Parquet data."""

__version__ = "0.1.0"


def load_model(path):
    """Load a model.json; the result has ``predict(X)`` (see ``gd_dask.model.Model``)."""
    from .model import load_model as _load

    return _load(path)
