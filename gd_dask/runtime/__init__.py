"""Runtime: the executor (the only code that builds dask graphs), the cluster (embedded,
by address, threads) and what workers set up."""
