"""Parquet → float64 chunks, with chunk sizes from the Parquet footers (no extra pass).

``source``: on the client, files, partitions and footers become a ``ParquetSource`` with
its chunk layout. ``read``: in worker tasks, chunks become float64 blocks or slices.
"""

from . import latency  # noqa: F401 - registers latency:// with fsspec
from .read import as_float64, count_nonfinite, holdout_rows, read_block, read_slices
from .source import (CHUNK_BYTES, PARQUET_SUFFIXES, Chunk, Holdout, Pack, ParquetSource, ReadSpec, hive_keys,
                     list_files, open_source)

__all__ = ["CHUNK_BYTES", "PARQUET_SUFFIXES", "Chunk", "Holdout", "Pack", "ParquetSource", "ReadSpec", "as_float64",
           "count_nonfinite", "hive_keys", "holdout_rows", "list_files", "open_source", "read_block", "read_slices"]
