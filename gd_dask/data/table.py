"""Lakehouse tables: the live files of a Delta Lake table, as its log says.

A folder holding ``_delta_log/`` is a Delta table (``data.format: auto`` recognizes it):
its Parquet files include those that an overwrite, a delete or a compaction removed,
which stay on disk until a vacuum. Reading the folder as plain Parquet would read them
all — silently wrong. Here the table's log (through the ``deltalake`` package, delta-rs)
names the live files of one snapshot, pinned when the run starts: the version asked for
(``data.version``, or the one current at ``data.as_of_time``), else the newest. The
listing then holds exactly those files, with the sizes and modification times of the
log, and everything downstream (footers, chunks, partitions from ``date=…/`` paths, the
refit's window and statistics cache) reads them as it reads any folder.

A table that needs a reader feature this does not apply (deletion vectors, column
mapping, …) is refused in one line naming the feature: it is never read wrong.
Apache Iceberg tables are recognized and refused (not read yet).
"""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone
from urllib.parse import unquote

from ..errors import ConfigError, DataError, first_line

#: Delta reader features that do not change which rows a data file holds or how its
#: columns are named; any other is refused by name.
SAFE_READER_FEATURES = frozenset({"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck", "checkpointProtection"})


def table_format(fs, root: str, asked: str) -> str:
    """``parquet``, ``delta`` or ``iceberg`` for the folder ``root``: what ``data.format``
    says, or (``auto``) what the folder holds."""
    if asked != "auto":
        if asked == "delta" and not fs.exists(f"{root}/_delta_log"):
            raise ConfigError(f"data.format delta: '{root}' has no _delta_log/ folder: not a Delta table")
        return asked
    if fs.isdir(root) and fs.exists(f"{root}/_delta_log"):
        return "delta"
    if root.endswith(".metadata.json") or (fs.isdir(root) and fs.exists(f"{root}/metadata")
                                           and any(str(p).endswith(".metadata.json")
                                                   for p in fs.ls(f"{root}/metadata", detail=False))):
        return "iceberg"
    return "parquet"


def delta_snapshot(path: str, root: str, protocol: str, storage_options: dict, version=None, as_of_time=None):
    """The live files of the Delta table at ``path``: ``([(full path, path below the
    table)], {full path: info}, {"format": "delta", "version": N})``."""
    try:
        from deltalake import DeltaTable
    except ImportError:
        raise ConfigError(f"data.path '{path}' is a Delta table: install the deltalake package to read it "
                          "(pip install 'gd_dask[delta]')") from None
    uri = path if "://" in path else root
    try:
        dt = DeltaTable(uri, version=version, storage_options=_delta_options(storage_options) or None)
        if as_of_time is not None:
            dt.load_as_version(_timestamp(as_of_time))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - delta-rs raises its own types (version not found, bad log)
        what = f"version {version}" if version is not None else f"as of {as_of_time}" if as_of_time else "its log"
        raise DataError(f"data.path '{path}': cannot read the Delta table's {what} ({first_line(e, with_type=False)})") from None
    _check_features(path, dt.protocol())
    import pyarrow as pa

    adds = pa.table(dt.get_add_actions(flatten=True))
    found, infos = [], {}
    for rel, size, mtime in zip(adds.column("path").to_pylist(), adds.column("size_bytes").to_pylist(),
                                adds.column("modification_time").to_pylist()):
        rel = unquote(rel)
        if "://" in rel or rel.startswith("/"):  # an absolute path (shallow clones): not below the table
            raise DataError(f"data.path '{path}': the Delta table names a file outside it ({rel}); "
                            "only files below the table are read")
        full = posixpath.join(root, rel)
        found.append((full, rel))
        infos[full] = {"name": full, "size": size, "type": "file", "mtime": mtime / 1000.0}
    found.sort()
    return found, infos, {"format": "delta", "version": dt.version()}


def _check_features(path: str, proto) -> None:
    features = set(getattr(proto, "reader_features", None) or [])
    unsupported = sorted(features - SAFE_READER_FEATURES)
    if unsupported:
        raise ConfigError(f"data.path '{path}': the Delta table needs reader feature(s) {', '.join(unsupported)}, "
                          "which gd_dask does not apply; it is refused rather than read wrong")
    if proto.min_reader_version == 2:  # column mapping, before table features
        raise ConfigError(f"data.path '{path}': the Delta table needs reader feature columnMapping "
                          "(min_reader_version 2), which gd_dask does not apply; it is refused rather than read wrong")
    if proto.min_reader_version > 3:
        raise ConfigError(f"data.path '{path}': the Delta table needs reader version {proto.min_reader_version}; "
                          "gd_dask reads up to 3")


def _timestamp(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"data.as_of_time {text!r}: expected an ISO timestamp, e.g. 2026-11-05T00:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _delta_options(storage_options: dict) -> dict:
    """fsspec's s3 options as delta-rs's (object_store's) keys."""
    o = dict(storage_options or {})
    out = {}
    if "key" in o:
        out["AWS_ACCESS_KEY_ID"] = o["key"]
    if "secret" in o:
        out["AWS_SECRET_ACCESS_KEY"] = o["secret"]
    if "endpoint_url" in o:
        out["AWS_ENDPOINT_URL"] = o["endpoint_url"]
        if str(o["endpoint_url"]).startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
    out.setdefault("AWS_REGION", o.get("region_name", "us-east-1"))
    out["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
    return {k: str(v) for k, v in out.items()} if o else {}

