"""The version of gd_dask (one place: the package, pyproject and workers' checks read it)."""

__version__ = "0.1.0"
