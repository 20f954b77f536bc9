"""gd_dask: linear regression by gradient descent on Dask, from partitioned Parquet data."""

__version__ = "0.1.0"


def load_model(path, storage_options=None):
    """Load a model.json (path or URL); the result has ``predict(X)`` (``gd_dask.model.Model``)."""
    from .model import load_model as _load

    return _load(path, storage_options)
