"""Kernels: pure NumPy on one block, no dask. Families (losses), moments and Gram sums,
gradients, compensated sums, distributions for inference, metrics."""
