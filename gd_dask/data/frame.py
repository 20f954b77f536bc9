"""A dask DataFrame as a source: its partitions are the chunks, read by the workers that
hold or compute them. For the scikit-learn estimators (``gd_dask.estimator``): the rows
never come to the client and nothing is written to disk.

``FrameSource`` offers what the executor and ``prepare`` use of a ``ParquetSource``:
columns, chunks with a spec that reads them, a fingerprint; there are no files, so no
validation split, no per-file statistics and no refinement from files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class FrameSpec:
    """How a worker turns one partition (a pandas DataFrame) into a float64 block:
    the ``columns`` in order (features, target, then weight), NaN/inf rows dropped with
    ``missing: drop``."""

    columns: tuple[str, ...]
    missing: str = "error"

    def block(self, part) -> np.ndarray:
        out = np.empty((len(part), len(self.columns)), dtype=np.float64, order="F")
        for j, c in enumerate(self.columns):
            out[:, j] = part[c].to_numpy(dtype=np.float64, na_value=np.nan)
        if self.missing == "drop":
            good = np.isfinite(out).all(axis=1)
            if not good.all():
                return np.asfortranarray(out[good])
        return out

    def slices(self, part, rows: int, shifted: bool = False):
        """``gradient.block_slices`` (or ``block_slices_shifted``) of the partition's
        block: the same bits as the cached path."""
        from .. import gradient as g

        block = self.block(part)
        return g.block_slices_shifted(block, rows) if shifted else g.block_slices(block, rows)


@dataclass
class FrameSource:
    frame: object  # dask DataFrame with the spec's columns
    columns: list[str]
    weight: str | None = None
    missing: str = "error"
    chunks: list = field(default_factory=list)

    def __post_init__(self):
        self.chunks = list(self.frame.to_delayed())

    @property
    def spec(self) -> FrameSpec:
        return FrameSpec(tuple(self.columns), self.missing)

    @property
    def weighted(self) -> bool:
        return self.weight is not None

    files: tuple = ()
    row_filters: tuple = ()
    rows_known = False
    n_rows = 0  # unknown without a pass (only logged)
    nbytes = None  # unknown: cache: auto does not cache

    def layout(self, chunk_bytes: int) -> None:
        """Partitions are the chunks as they are."""

    def split(self, seed: int, fraction: float):
        raise ConfigError("optimizer.validation_fraction: early stopping needs Parquet files (rows are held out "
                          "by file and row index); split the data yourself or pass files")

    def fingerprint(self) -> dict:
        from dask.base import tokenize

        return {"dask_dataframe": tokenize(self.frame), "partitions": len(self.chunks)}
