"""Using a trained model on data: distributed evaluation and prediction."""

from __future__ import annotations

import logging
import posixpath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import gradient as g
from .config import DataConfig
from .data import as_float64, open_source
from .errors import DataError
from .executor import Executor
from .model import Model

log = logging.getLogger(__name__)


def data_for(model: Model, path: str, storage_options: dict | None = None) -> DataConfig:
    missing = (model.document.get("config") or {}).get("data", {}).get("missing", "error")
    return DataConfig(path=path, features=model.features, target=model.target, missing=missing,
                      storage_options=storage_options or {})


def evaluate(model: Model, path: str, client, storage_options: dict | None = None) -> dict:
    """n, mse, rmse, mae, r2 of ``model`` on the Parquet data at ``path``: one pass."""
    source = open_source(data_for(model, path, storage_options))
    ex = Executor(client, source, cache=False)
    sums = ex.error_sums(model.m, model.b)
    if not np.isfinite([sums.sq_err, sums.abs_err, sums.y_mean]).all():
        counts = np.asarray(ex.nonfinite_by_block()).sum(axis=0)
        j = int(np.flatnonzero(counts)[0]) if counts.any() else 0
        raise DataError(f"column '{source.columns[j]}' has {int(counts[j])} NaN/inf/null values in {path}")
    return g.metrics(sums)


def _predict_file(src_path, dst_path, protocol, storage_options, out_protocol, features, keys, m, b):
    """Read one file row group by row group, write keys + prediction (worker task).

    The output goes to a hidden temporary name first and is moved into place."""
    src_fs = fsspec.filesystem(protocol, **(storage_options or {}))
    fs = fsspec.filesystem(out_protocol, **(storage_options or {}))
    tmp = f"{posixpath.dirname(dst_path)}/.{posixpath.basename(dst_path)}.tmp"
    fs.makedirs(posixpath.dirname(dst_path), exist_ok=True)
    rows = 0
    with src_fs.open(src_path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        writer = None
        try:
            with fs.open(tmp, "wb") as out:
                for rg in range(pf.num_row_groups):
                    t = pf.read_row_group(rg, columns=list(dict.fromkeys([*keys, *features])))
                    X = np.column_stack([as_float64(t.column(f)) for f in features])
                    cols = {k: t.column(k) for k in keys}
                    cols["prediction"] = pa.array(X @ m + b)
                    batch = pa.table(cols)
                    if writer is None:
                        writer = pq.ParquetWriter(out, batch.schema)
                    writer.write_table(batch)
                    rows += batch.num_rows
                if writer is not None:
                    writer.close()
        except BaseException:
            fs.rm(tmp)
            raise
    fs.mv(tmp, dst_path)
    return rows


def predict(model: Model, path: str, out_dir: str, client, keys=(), storage_options: dict | None = None) -> dict:
    """Score every file under ``path`` into ``out_dir``, keeping the relative layout
    (hive partitions included); one worker task per file, row group by row group."""
    import dask

    source = open_source(data_for(model, path, storage_options), extra_columns=list(keys), with_target=False)
    out_fs, out_root = fsspec.core.url_to_fs(out_dir, **source.storage_options)
    out_protocol = out_fs.protocol if isinstance(out_fs.protocol, str) else out_fs.protocol[0]
    tasks = []
    for f in source.files:
        tasks.append(dask.delayed(_predict_file)(
            f["full_path"], f"{out_root.rstrip('/')}/{f['rel']}", source.protocol, source.storage_options, out_protocol,
            model.features, list(keys), model.m, model.b))
    # Compute: each task writes its own file; only row counts come back.
    rows = client.compute(tasks, sync=True)
    return {"files": len(rows), "rows": int(sum(rows)), "out_dir": out_dir}
