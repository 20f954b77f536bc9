"""Parquet → float64 chunks, with chunk sizes from the Parquet footers (no extra pass).

``listing``: the files of a folder, a glob or a table's snapshot. ``footers``: what their
footers say, read no more than planning needs. ``source``: on the client, the files
become a ``ParquetSource`` with its chunk layout. ``read``: in worker tasks, chunks become
float64 blocks or slices. ``table``: Delta and Iceberg logs.
"""

from . import latency  # noqa: F401 - registers latency:// with fsspec
from .listing import PARQUET_SUFFIXES, hive_keys, list_files
from .read import as_float64, count_nonfinite, holdout_rows, read_block, read_slices
from .source import CHUNK_BYTES, Chunk, Holdout, Pack, ParquetSource, ReadSpec, open_source

__all__ = ["CHUNK_BYTES", "PARQUET_SUFFIXES", "Chunk", "Holdout", "Pack", "ParquetSource", "ReadSpec", "as_float64",
           "count_nonfinite", "hive_keys", "holdout_rows", "list_files", "open_source", "read_block", "read_slices"]
