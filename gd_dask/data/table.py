"""Lakehouse tables: the live files of a Delta Lake or Iceberg table, as its log says.

A folder holding ``_delta_log/`` is a Delta table (``data.format: auto`` recognizes it):
its Parquet files include those that an overwrite, a delete or a compaction removed,
which stay on disk until a vacuum. Reading the folder as plain Parquet would read them
all — silently wrong. Here the table's log (through the ``deltalake`` package, delta-rs)
names the live files of one snapshot, pinned when the run starts: the version asked for
(``data.version``, or the one current at ``data.as_of_time``), else the newest. The
listing then holds exactly those files, with the sizes and modification times of the
log, their row counts and partition values, and everything downstream (footers,
chunks, the refit's window and statistics cache) reads them as it reads any folder.

Deletion vectors (Delta) and position deletes (Iceberg) are applied by row position as
the files are read. A table that needs a reader feature this does not apply (column
mapping, equality deletes, …) is refused in one line naming the feature: it is never
read wrong.

Apache Iceberg tables are read through ``pyiceberg`` the same way: the manifests of one
snapshot name the live files, their rows, partition values and delete files.
"""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone
from urllib.parse import unquote

from ..errors import ConfigError, DataError, first_line

#: Delta reader features that do not change which rows a data file holds or how its
#: columns are named; any other is refused by name. (Variant and timestamp columns may
#: exist beside the features; a feature column of such a type is refused by its type.)
SAFE_READER_FEATURES = frozenset({"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck", "checkpointProtection",
                                  "variantType", "variantType-preview"})
#: Reader features applied here: deletion vectors drop their rows by position in the reader.
APPLIED_READER_FEATURES = frozenset({"deletionVectors"})


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
    # latency:// (measuring planning as an object store would cost it) wraps a local
    # folder: delta-rs reads that folder's log itself, the data files go through the wrapper.
    uri = path if "://" in path and protocol != "latency" else root
    try:
        dt = DeltaTable(uri, version=version, storage_options=_delta_options(storage_options) or None)
        if as_of_time is not None:
            dt.load_as_version(_timestamp(as_of_time))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - delta-rs raises its own types (version not found, bad log)
        what = f"version {version}" if version is not None else f"as of {as_of_time}" if as_of_time else "log"
        raise DataError(f"data.path '{path}': cannot read the Delta table's {what} "
                        f"({first_line(e, with_type=False)})") from None
    _check_features(path, dt.protocol())
    import pyarrow as pa

    adds = pa.table(dt.get_add_actions(flatten=True))
    found, infos = [], {}
    names = adds.column_names
    rows = adds.column("num_records").to_pylist() if "num_records" in names else [None] * adds.num_rows
    parts = {c[len("partition."):]: adds.column(c).to_pylist() for c in names if c.startswith("partition.")}
    for i, (rel, size, mtime) in enumerate(zip(adds.column("path").to_pylist(), adds.column("size_bytes").to_pylist(),
                                               adds.column("modification_time").to_pylist())):
        rel = unquote(rel)
        if "://" in rel or rel.startswith("/"):  # an absolute path (shallow clones): not below the table
            raise DataError(f"data.path '{path}': the Delta table names a file outside it ({rel}); "
                            "only files below the table are read")
        full = posixpath.join(root, rel)
        found.append((full, rel))
        infos[full] = {"name": full, "size": size, "type": "file", "mtime": mtime / 1000.0, "rows": rows[i],
                       "partition": {k: _text(v[i]) for k, v in parts.items() if v[i] is not None}}
    if "deletionVectors" in set(getattr(dt.protocol(), "reader_features", None) or []):
        for full, positions in _delta_deletes(path, dt, root).items():
            if full not in infos:
                raise DataError(f"data.path '{path}': a deletion vector names {full}, which the log does not add")
            infos[full]["deleted"] = positions
    found.sort()
    return found, infos, {"format": "delta", "version": dt.version()}


def _delta_deletes(path: str, dt, root: str) -> dict:
    """{full path: sorted int64 positions} of the rows the table's deletion vectors
    remove, as delta-rs decodes them (a selection vector per file: False is deleted; rows
    past its end are kept)."""
    import numpy as np
    import pyarrow as pa

    try:
        dvs = pa.table(dt.deletion_vectors())
    except Exception as e:  # noqa: BLE001 - delta-rs raises its own types
        raise DataError(f"data.path '{path}': cannot read the Delta table's deletion vectors "
                        f"({first_line(e, with_type=False)})") from None
    base = dt.table_uri.rstrip("/")
    out = {}
    for uri, keep in zip(dvs.column("filepath").to_pylist(), dvs.column("selection_vector").to_pylist()):
        rel = unquote(uri[len(base):].lstrip("/")) if uri.startswith(base) else unquote(uri)
        out[posixpath.join(root, rel)] = np.flatnonzero(~np.asarray(keep, dtype=bool)).astype(np.int64)
    return out


def _text(value) -> str:
    """A partition value as the text a ``key=value`` folder would hold."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _check_features(path: str, proto) -> None:
    features = set(getattr(proto, "reader_features", None) or [])
    unsupported = sorted(features - SAFE_READER_FEATURES - APPLIED_READER_FEATURES)
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



# --------------------------------------------------------------------------- Iceberg


def iceberg_snapshot(path: str, storage_options: dict, version=None, as_of_time=None, catalog=None):
    """The live files of an Apache Iceberg table, through ``pyiceberg``: from its metadata
    file (``path`` names it, or the table folder whose ``metadata/`` holds it) or from a
    catalog (``catalog``: {"name", "table", "properties"}). One snapshot, pinned here:
    ``version`` (a snapshot id), the one current at ``as_of_time``, else the current one.

    Returns ``(table location, [(full URI, path below the table)], {full URI: info},
    {"format": "iceberg", "version": snapshot id}, {columns renamed in its history})``;
    an info holds the file's size, rows (from the manifest), partition values and the
    positions its delete files remove (``deleted``)."""
    tbl = _iceberg_table(path, storage_options, catalog)
    shown = path if not catalog else f"catalog {catalog.get('name', 'default')}: {catalog['table']}"
    snap = _iceberg_pick(tbl, shown, version, as_of_time)
    if snap is None:  # a table created, nothing appended: no rows
        return tbl.metadata.location.rstrip("/"), [], {}, {"format": "iceberg", "version": None}, set()
    try:
        tasks = list(tbl.scan(snapshot_id=snap.snapshot_id).plan_files())
    except Exception as e:  # noqa: BLE001 - manifests unreadable, a store's errors
        raise DataError(f"data.path '{shown}': cannot plan the Iceberg table's snapshot {snap.snapshot_id} "
                        f"({first_line(e, with_type=False)})") from None
    location = tbl.metadata.location.rstrip("/")
    deletes = _iceberg_deletes(shown, tbl, tasks)
    spec = tbl.metadata.specs().get
    found, infos = [], {}
    for task in tasks:
        f = task.file
        uri = f.file_path
        if str(f.file_format).upper().rsplit(".", 1)[-1] != "PARQUET":
            raise ConfigError(f"data.path '{shown}': {uri} is a {f.file_format} data file; gd_dask reads Parquet")
        rel = uri[len(location):].lstrip("/") if uri.startswith(location) else posixpath.basename(uri)
        found.append((uri, rel))
        infos[uri] = {"name": uri, "size": f.file_size_in_bytes, "type": "file", "rows": f.record_count,
                      "partition": _iceberg_partition(spec(f.spec_id), tbl.schema(), f.partition),
                      "deleted": deletes.get(uri)}
    found.sort()
    return location, found, infos, {"format": "iceberg", "version": snap.snapshot_id}, _renamed_columns(tbl.metadata)


def _iceberg_table(path: str, storage_options: dict, catalog):
    try:
        from pyiceberg.catalog import load_catalog
        from pyiceberg.table import StaticTable
    except ImportError:
        raise ConfigError(f"data.path '{path}' is an Apache Iceberg table: install the pyiceberg package to read "
                          "it (pip install 'gd_dask[iceberg]')") from None
    props = _iceberg_options(storage_options)
    what = f"catalog {catalog.get('name', 'default')}'s table {catalog['table']}" if catalog else f"'{path}'"
    try:
        if catalog:
            cat = load_catalog(catalog.get("name", "default"), **{**props, **catalog.get("properties", {})})
            return cat.load_table(catalog["table"])
        meta = _metadata_file(path, storage_options)
        what = f"'{path}' (metadata file {meta})"
        return StaticTable.from_metadata(meta, properties=props)
    except (ConfigError, DataError):
        raise
    except Exception as e:  # noqa: BLE001 - pyiceberg and the stores raise their own types
        raise DataError(f"data: cannot load the Iceberg table {what} ({first_line(e, with_type=False)})") from None


def _metadata_file(path: str, storage_options: dict) -> str:
    """``path`` if it names a metadata file, else the newest in the folder's ``metadata/``
    (``version-hint.text`` where there is one, else the highest version number)."""
    if path.rstrip("/").endswith(".metadata.json"):
        return path
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    meta = f"{root.rstrip('/')}/metadata"
    base = path.rstrip("/") + "/metadata"
    hint = f"{meta}/version-hint.text"
    if fs.exists(hint):
        v = fs.cat_file(hint).decode().strip()
        for name in (f"v{v}.metadata.json", f"{v}.metadata.json"):
            if fs.exists(f"{meta}/{name}"):
                return f"{base}/{name}"
    names = [posixpath.basename(p) for p in fs.ls(meta, detail=False) if str(p).endswith(".metadata.json")]
    if not names:
        raise DataError(f"data.path '{path}': no Iceberg metadata file in {base}/")
    return f"{base}/{max(names, key=_metadata_number)}"


def _metadata_number(name: str) -> tuple:
    """The version in ``00012-<uuid>.metadata.json`` or ``v12.metadata.json``."""
    head = name.split("-", 1)[0].split(".", 1)[0].lstrip("v")
    return (int(head), name) if head.isdigit() else (-1, name)


def _iceberg_pick(tbl, shown: str, version, as_of_time):
    if version is not None:
        snap = tbl.snapshot_by_id(int(version))
        if snap is None:
            known = ", ".join(str(s.snapshot_id) for s in tbl.snapshots()[-5:]) or "none"
            raise DataError(f"data.version {version}: no such snapshot in the Iceberg table '{shown}' "
                            f"(latest: {known})")
        return snap
    if as_of_time is not None:
        ms = int(_timestamp(as_of_time).timestamp() * 1000)
        snap = tbl.snapshot_as_of_timestamp(ms)
        if snap is None:
            raise DataError(f"data.as_of_time {as_of_time}: the Iceberg table '{shown}' has no snapshot that old")
        return snap
    return tbl.current_snapshot()


def _renamed_columns(metadata) -> set[str]:
    """Columns are read by name; Iceberg tracks them by id. The current names that meant
    another column in an earlier schema (a column renamed, or dropped and added again)
    would read the old column's values from older files: ``open_source`` refuses them."""
    ids: dict[str, set] = {}
    names: dict[int, set] = {}
    for schema in metadata.schemas:
        for f in schema.fields:
            ids.setdefault(f.name, set()).add(f.field_id)
            names.setdefault(f.field_id, set()).add(f.name)
    return {f.name for f in metadata.schema().fields if len(ids[f.name]) > 1 or len(names[f.field_id]) > 1}


def _iceberg_partition(spec, schema, record) -> dict:
    """{column: value as text} of a file's identity partitions (``date=…`` for the
    refit's window); other transforms (bucket, day of a timestamp) are not columns."""
    out = {}
    if spec is None or record is None:
        return out
    for i, field in enumerate(spec.fields):
        if str(field.transform) == "identity" and record[i] is not None:
            source = schema.find_field(field.source_id)
            out[source.name] = field.transform.to_human_string(source.field_type, record[i])
    return out


def _iceberg_deletes(shown: str, tbl, tasks) -> dict:
    """{data file URI: sorted int64 positions its delete files remove}. Position deletes
    and deletion vectors are applied; equality deletes are refused by name."""
    import numpy as np

    todo = {d.file_path: d for t in tasks for d in t.delete_files}
    if not todo:
        return {}
    from pyiceberg.manifest import DataFileContent

    for d in todo.values():
        if d.content == DataFileContent.EQUALITY_DELETES:
            raise ConfigError(f"data.path '{shown}': the Iceberg table has equality delete files ({d.file_path}), "
                              "which gd_dask does not apply; it is refused rather than read wrong")
    from pyiceberg.io.pyarrow import _read_deletes

    out: dict = {}
    for d in todo.values():
        try:
            for uri, positions in _read_deletes(tbl.io, d).items():
                out.setdefault(uri, []).append(np.asarray(positions.to_numpy(), dtype=np.int64))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"data.path '{shown}': cannot read the delete file {d.file_path} "
                            f"({first_line(e, with_type=False)})") from None
    return {uri: np.unique(np.concatenate(parts)) for uri, parts in out.items()}


def _iceberg_options(storage_options: dict) -> dict:
    """fsspec's s3 options as pyiceberg's FileIO properties."""
    o = dict(storage_options or {})
    names = {"key": "s3.access-key-id", "secret": "s3.secret-access-key", "endpoint_url": "s3.endpoint",
             "region_name": "s3.region"}
    return {names[k]: str(v) for k, v in o.items() if k in names}
