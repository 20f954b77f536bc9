"""Using a trained model on data: distributed evaluation and prediction."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import gradient as g
from .cluster import compute
from .config import DataConfig
from .data import as_float64, open_source
from .errors import ConfigError, DataError
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


def _move_tree(fs, src: str, dst: str) -> None:
    """Move a folder: one rename on a local disk; object by object on an object store
    (which has no folders to rename)."""
    if fs.protocol in ("file", "local") or "file" in (fs.protocol if isinstance(fs.protocol, tuple) else ()):
        os.rename(src, dst)
        return
    for path in fs.find(src):
        fs.mv(path, f"{dst}/{path[len(src):].lstrip('/')}")
    with contextlib.suppress(Exception):
        fs.rm(src, recursive=True)
    fs.invalidate_cache()


def check_output(source, out_fs, out_root: str, overwrite: bool, out_dir: str) -> None:
    """Refuse, before anything is written, an output that would replace or sit inside
    the input (the next training run would read predictions as data), and a non-empty
    output folder unless ``overwrite``."""
    def norm(p: str) -> str:
        p = p.rstrip("/")
        return os.path.realpath(p) if source.protocol in ("file", "local") else p

    out, root = norm(out_root), norm(source.root)
    inputs = [norm(f["full_path"]) for f in source.files]
    if out == root or out.startswith(root + "/") or any(i == out or i.startswith(out + "/") for i in inputs):
        raise ConfigError(f"OUT_DIR '{out_dir}' is or holds the input data '{source.root}': predictions would "
                          "replace or mix with the data; choose a folder outside it")
    if out_fs.exists(out_root) and not out_fs.isdir(out_root):
        raise ConfigError(f"OUT_DIR '{out_dir}' is a file, not a folder")
    if out_fs.exists(out_root) and out_fs.ls(out_root) and not overwrite:
        raise ConfigError(f"OUT_DIR '{out_dir}' is not empty: older predictions would mix with new ones; "
                          "choose an empty folder or pass --overwrite to replace it whole")


def predict(model: Model, path: str, out_dir: str, client, keys=(), storage_options: dict | None = None,
            overwrite: bool = False) -> dict:
    """Score every file under ``path`` into ``out_dir``, keeping the relative layout
    (hive partitions included); one worker task per file, row group by row group.

    The files are written into a hidden staging folder next to ``out_dir``, which then
    takes its place whole (replacing the old one with ``overwrite``): a failed run
    leaves ``out_dir`` as it was, a finished one leaves only this model's predictions.
    """
    import dask

    source = open_source(data_for(model, path, storage_options), extra_columns=list(keys), with_target=False)
    out_fs, out_root = fsspec.core.url_to_fs(out_dir, **source.storage_options)
    out_root = out_root.rstrip("/")
    check_output(source, out_fs, out_root, overwrite, out_dir)
    out_protocol = out_fs.protocol if isinstance(out_fs.protocol, str) else out_fs.protocol[0]
    parent, name = posixpath.split(out_root)
    tag = uuid.uuid4().hex[:8]
    staging, old = f"{parent}/.{name}.staging-{tag}", f"{parent}/.{name}.old-{tag}"
    tasks = []
    for f in source.files:
        tasks.append(dask.delayed(_predict_file)(
            f["full_path"], f"{staging}/{f['rel']}", source.protocol, source.storage_options, out_protocol,
            model.features, list(keys), model.m, model.b))
    try:
        # Compute: each task writes its own file; only row counts come back.
        rows = compute(client, tasks, what="predict")
        out_fs.invalidate_cache()  # the workers wrote: listings cached here are stale
        if out_fs.exists(out_root):
            _move_tree(out_fs, out_root, old)
        _move_tree(out_fs, staging, out_root)
    except BaseException:
        out_fs.invalidate_cache()
        with contextlib.suppress(Exception):
            out_fs.rm(staging, recursive=True)
        if out_fs.exists(old) and not out_fs.exists(out_root):
            _move_tree(out_fs, old, out_root)  # put the earlier predictions back
        raise
    with contextlib.suppress(Exception):
        out_fs.rm(old, recursive=True)
    return {"files": len(rows), "rows": int(sum(rows)), "out_dir": out_dir}
