"""A dask DataFrame as a source: its partitions are the chunks, read by the workers that
hold or compute them. For the scikit-learn estimators (``gd_dask.interfaces.estimator``): the rows
never come to the client and nothing is written to disk.

``FrameSource`` offers what the executor and ``prepare`` use of a ``ParquetSource``:
columns, chunks with a spec that reads them, a fingerprint; there are no files, so no
validation split, no per-file statistics and no refinement from files.

``parquet_data`` finds the frames that need none of this: columns of one
``dd.read_parquet``, which are trained on from their files as the CLI would.
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
    categorical: tuple[str, ...] = ()  # read as level keys (``read.level_keys``)
    weight: str | None = None  # the sample weights' column: a negative weight is refused

    def block(self, part, names: dict | None = None) -> np.ndarray:
        out = np.empty((len(part), len(self.columns)), dtype=np.float64, order="F")
        for j, c in enumerate(self.columns):
            if c in self.categorical:
                import pyarrow as pa

                from .read import level_keys

                out[:, j] = level_keys(pa.array(part[c].astype(object), from_pandas=True, type=pa.string()), names)
            else:
                out[:, j] = part[c].to_numpy(dtype=np.float64, na_value=np.nan)
        if self.weight is not None:
            from .read import check_weights

            check_weights(out[:, self.columns.index(self.weight)], self.weight, "a dask DataFrame partition")
        if self.missing == "drop":
            good = np.isfinite(out).all(axis=1)
            if not good.all():
                return np.asfortranarray(out[good])
        return out

    def slices(self, part, rows: int, shifted: bool = False, names: dict | None = None):
        """``gradient.block_slices`` (or ``block_slices_shifted``) of the partition's
        block: the same bits as the cached path (``names``: the text of level keys)."""
        from ..kernels.blocks import block_slices, block_slices_shifted

        block = self.block(part, names)
        return block_slices_shifted(block, rows) if shifted else block_slices(block, rows)


@dataclass
class FrameSource:
    frame: object  # dask DataFrame with the spec's columns
    columns: list[str]
    weight: str | None = None
    missing: str = "error"
    chunks: list = field(default_factory=list)
    categorical: list = field(default_factory=list)  # columns of text levels (``FrameSpec``)
    offset: str | None = None  # the estimators take no offset column (``ParquetSource.offset``)

    def __post_init__(self):
        self.chunks = list(self.frame.to_delayed())

    @property
    def spec(self) -> FrameSpec:
        return FrameSpec(tuple(self.columns), self.missing, tuple(self.categorical), self.weight)

    @property
    def weighted(self) -> bool:
        return self.weight is not None

    files: tuple = ()
    row_filters: tuple = ()
    rows_known = False
    n_rows = 0  # unknown without a pass (only logged)
    nbytes = None  # unknown: cache: auto does not cache

    def layout(self, chunk_bytes: int, stream_above: int | None = None) -> None:
        """Partitions are the chunks as they are."""

    def split(self, seed: int, fraction: float):
        raise ConfigError("optimizer.validation_fraction: early stopping needs Parquet files (rows are held out "
                          "by file and row index); split the data yourself or pass files")

    def fingerprint(self) -> dict:
        from dask.base import tokenize

        return {"dask_dataframe": tokenize(self.frame), "partitions": len(self.chunks)}


#: ``dd.read_parquet`` arguments a Parquet data config can say the same with; any other
#: argument away from its default, and the frame is read as a frame.
_READ_DEFAULTS = {"index": None, "categories": None, "_partitions": None, "kwargs": {"dtype_backend": None}}


def _read_parquet_of(obj):
    """(the ``dd.read_parquet`` expression, its columns) where ``obj`` is nothing but
    columns of one, else None."""
    try:
        from dask.dataframe.dask_expr._expr import Projection
        from dask.dataframe.dask_expr.io.parquet import ReadParquet
    except ImportError:  # another dask layout: read it as a frame
        return None
    expr = obj.expr.simplify()
    if isinstance(expr, Projection) and isinstance(expr.operand("columns"), str):
        expr = expr.operand("frame")
    if not isinstance(expr, ReadParquet) or not isinstance(expr.operand("path"), str):
        return None
    if any(expr.operand(k) != v for k, v in _READ_DEFAULTS.items()):
        return None
    return expr, list(expr.operand("columns"))


def parquet_data(X, y, w) -> dict | None:
    """The ``data`` section that reads what ``X``, ``y`` and ``w`` hold where they are all
    columns of one ``dd.read_parquet``: the estimators (``gd_dask.interfaces.estimator``) then
    train as ``gd-dask train`` does on those files (same reads, same bits) instead of through dask's own reader."""
    import dask.dataframe as dd

    if not (isinstance(X, dd.DataFrame) and isinstance(y, dd.Series)) or (w is not None and not isinstance(w, dd.Series)):
        return None
    reads = [_read_parquet_of(o) for o in (X, y) + (() if w is None else (w,))]
    if any(r is None for r in reads):
        return None
    same = ("path", "filters", "storage_options", "filesystem", "ignore_metadata_file")
    first = reads[0][0]
    if any(r[0].operand(k) != first.operand(k) for r in reads[1:] for k in same):
        return None
    features, targets = reads[0][1], reads[1][1]
    weights = reads[2][1] if w is not None else []
    if len(targets) != 1 or (w is not None and len(weights) != 1) or not all(
            isinstance(c, str) for c in features + targets + weights):
        return None
    target = targets[0]
    data = {"path": first.operand("path"), "features": features, "target": target,
            "filters": [list(f) for f in first.operand("filters") or []],
            "storage_options": dict(first.operand("storage_options") or {})}
    if w is not None:
        data["weight"] = weights[0]
    return data
