"""gd_dask: linear regression by gradient descent on Dask, from partitioned Parquet data."""

__version__ = "0.1.0"
