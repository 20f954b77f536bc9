"""Writing rows, inside worker tasks: predictions, one output file per input file."""

from __future__ import annotations

import posixpath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .read import as_float64


def predict_file(src_path, dst_path, protocol, storage_options, out_protocol, features, keys, m, b, loss,
                 threshold=None):
    """Read one file row group by row group, write ``keys`` + ``prediction`` =
    ``loss.predict(X·m + b)`` (the inverse link), + ``label`` = prediction ≥ ``threshold``
    where one is given. Returns the rows written.

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
                    pred = loss.predict(X @ m + b)
                    cols["prediction"] = pa.array(pred)
                    if threshold is not None:
                        cols["label"] = pa.array((pred >= threshold).astype(np.int8))
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
