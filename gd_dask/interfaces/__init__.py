"""Interfaces: the ``gd-dask`` command, the Python API and the scikit-learn estimators."""
