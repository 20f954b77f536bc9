"""Finding the files: a folder, a glob or one file listed once (names starting with ``_``
or ``.`` skipped, as Spark and pyarrow skip them), or a lakehouse table's snapshot from
its log (``table``); partition values from ``key=value/`` folders or the log; what
identifies each file's content (size and times, or an ETag) so a change mid-run is caught."""

from __future__ import annotations

import hashlib
import operator
import os
import posixpath
import stat
from typing import Any, NamedTuple

import fsspec
import numpy as np

from ..errors import ConfigError, DataError
from .read import (
    _first_line,
    is_local,
)
from .table import delta_snapshot, iceberg_snapshot, table_format

#: File names taken as Parquet when listing a directory or a glob.
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


_OPS = {
    "=": operator.eq, "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


def hive_keys(rel_path: str) -> dict[str, str]:
    keys = {}
    for seg in rel_path.split("/")[:-1]:
        k, sep, v = seg.partition("=")
        if sep:
            keys[k] = v
    return keys


def _coerce_pair(a: str, b: Any):
    """Compare a partition value (a string) with a filter value of any YAML type."""
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        try:
            return float(a), float(b)
        except ValueError:
            pass
    return a, str(b)


def keep_partition(keys: dict[str, str], filters) -> bool:
    for col, op, value in filters:
        if col not in keys:
            continue
        if op in ("in", "not in"):
            vals = value if isinstance(value, (list, tuple)) else [value]
            # Text values compare as text: a set lookup (a refit's 30 dates, 30,000 files).
            hit = keys[col] in {v for v in vals if isinstance(v, str)} or any(
                operator.eq(*_coerce_pair(keys[col], v)) for v in vals if not isinstance(v, str))
            if hit != (op == "in"):
                return False
        elif not _OPS[op](*_coerce_pair(keys[col], value)):
            return False
    return True


def list_files(path: str, storage_options: dict | None = None):
    """All Parquet files under a directory, matching a glob, or the file itself.

    Returns (fs, protocol, [(full_path, path_relative_to_root)], root). Files and folders
    whose names start with ``_`` or ``.`` are skipped, as Spark and pyarrow do.
    """
    return list_files_detailed(path, storage_options)[:4]


class Listing(tuple):
    """``(fs, protocol, [(full path, relative path)], root, {full path: info})``, and
    ``table``: {"format", "version"} where the files are a lakehouse table's snapshot;
    ``renamed``: columns whose name meant another column in the table's history."""

    table: dict | None = None
    renamed: frozenset = frozenset()

    def __new__(cls, items, table=None, renamed=()):
        out = super().__new__(cls, items)
        out.table, out.renamed = table, frozenset(renamed)
        return out

    def partition(self, full: str, rel: str) -> dict[str, str]:
        """A file's partition values: from the table's log, else its ``key=value/`` folders."""
        keys = self[4].get(full, {}).get("partition")
        return dict(keys) if keys is not None else hive_keys(rel)


def list_data(data_cfg, version=None) -> Listing:
    """``list_files_detailed`` as ``data_cfg`` (a ``DataConfig``) says; ``version``
    overrides ``data.version`` (a rerun pinned to its first snapshot)."""
    return list_files_detailed(data_cfg.path, data_cfg.storage_options, data_cfg.format,
                               data_cfg.version if version is None else version,
                               None if version is not None else data_cfg.as_of_time,
                               data_cfg.catalog.model_dump() if data_cfg.catalog else None)


class Asked(NamedTuple):
    """Which snapshot of a table a run asks for (``data.version``, ``data.as_of_time``;
    ``catalog``: an Iceberg catalog's table), and the options that reach it."""

    storage_options: dict
    version: int | None = None
    as_of_time: str | None = None
    catalog: dict | None = None


def list_files_detailed(path: str, storage_options: dict | None = None, fmt: str = "auto", version=None,
                        as_of_time=None, catalog: dict | None = None):
    """``list_files`` and {full_path: the listing's info (size, mtime or ETag)}: one
    listing, no request per file (a directory test and an info per file were two
    round trips each on an object store). A Delta or Iceberg table (``fmt``,
    ``data.format``; ``catalog``: an Iceberg catalog's table) is listed from its log:
    the live files of one snapshot (``data.table``)."""
    asked = Asked(dict(storage_options or {}), version, as_of_time, catalog)
    if catalog:
        return _iceberg_listing(path, asked)
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if fmt != "parquet" and not any(ch in root for ch in "*?["):
        table = _table_listing(path, fs, protocol, root.rstrip("/"), fmt, asked)
        if table is not None:
            return table
    elif version is not None or as_of_time is not None:
        raise ConfigError("data.version / data.as_of_time need a table (data.format delta or iceberg, or auto "
                          "on a table)")
    infos, base = _listed(path, fs, root)
    out = _parquet_files(path, infos, base, root)
    if is_local(fs):
        _refuse_special(path, out, infos)
    if version is not None or as_of_time is not None:
        raise ConfigError(f"data.version / data.as_of_time: data.path '{path}' is not a Delta or Iceberg table")
    return Listing((fs, protocol, out, root, infos))


def _table_listing(path, fs, protocol, root, fmt, asked: Asked) -> Listing | None:
    """The snapshot's listing if ``root`` is a Delta or Iceberg table (``fmt``), else None."""
    try:
        kind = table_format(fs, root, fmt)
    except (ConfigError, DataError):
        raise
    except Exception as e:  # noqa: BLE001 - object stores fail in many types (auth, network)
        raise DataError(f"data.path '{path}': cannot list ({_first_line(e)})") from None
    if kind == "iceberg":
        return _iceberg_listing(path, asked)
    if kind != "delta":
        return None
    found, infos, table = delta_snapshot(path, root, protocol, asked.storage_options, asked.version, asked.as_of_time)
    if not found:
        raise DataError(f"data.path '{path}': the Delta table (version {table['version']}) has no files")
    return Listing((fs, protocol, found, root, infos), table)


def _listed(path: str, fs, root: str) -> tuple[dict, str]:
    """({full path: info} under a folder, matching a glob, or of the file itself; the base
    the relative paths start from), in one listing."""
    try:
        if any(ch in root for ch in "*?["):
            return fs.glob(root, detail=True), root.split("*")[0].rsplit("/", 1)[0]
        if fs.isdir(root):
            return (_find_local(root) if is_local(fs) else fs.find(root, detail=True)), root
        if fs.exists(root):
            return {root: fs.info(root)}, posixpath.dirname(root)
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001 - object stores fail in many types (auth, network)
        raise DataError(f"data.path '{path}': cannot list ({_first_line(e)})") from None
    raise DataError(f"data.path '{path}' does not exist")


def _parquet_files(path: str, infos: dict, base: str, root: str) -> list[tuple[str, str]]:
    """(full path, path below ``base``) of the Parquet files listed, in order: names
    starting with ``_`` or ``.`` skipped (Spark's ``_SUCCESS``, ``_temporary/``, ``.crc``),
    and in a folder only ``*.parquet`` (a folder of something else is one line)."""
    found = sorted(infos)
    out, others = [], []
    listing = len(found) > 1 or (found and found[0] != root)
    for f in found:
        rel = f[len(base):].lstrip("/") if f.startswith(base) else posixpath.basename(f)
        if any(seg.startswith(("_", ".")) for seg in rel.split("/")) or infos[f].get("type") == "directory":
            continue
        if listing and not f.endswith(PARQUET_SUFFIXES):
            others.append(rel)
            continue
        out.append((f, rel))
    if not out and others:
        raise DataError(f"data.path '{path}' holds no Parquet files (*.parquet); found {len(others)} "
                        f"other file(s), e.g. {others[0]}")
    return out


def _iceberg_listing(path, asked: Asked) -> Listing:
    """An Iceberg table's snapshot as a ``Listing``: the manifests' URIs as the paths of
    the filesystem that holds the table."""
    location, found, infos, table, renamed = iceberg_snapshot(path, *asked)
    if not found:
        raise DataError(f"data.path '{path}': the Iceberg table (snapshot {table['version']}) has no files")
    fs, root = fsspec.core.url_to_fs(location, **asked.storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    strip = fs._strip_protocol
    out = [(strip(uri), rel) for uri, rel in found]
    infos = {strip(uri): {**info, "name": strip(uri)} for uri, info in infos.items()}
    if is_local(fs):
        _refuse_special(path, out, infos)
    return Listing((fs, protocol, out, root.rstrip("/"), infos), table, renamed)


def _find_local(root: str) -> dict:
    """``fs.find(root, detail=True)`` of a local folder through ``os.scandir``: the same
    paths, sizes and mtimes (so the same statistics-cache keys), without fsspec's info
    call per entry (100,000 files: 1.6 s -> 0.6 s)."""
    out, todo = {}, [root]
    while todo:
        with os.scandir(todo.pop()) as entries:
            for e in entries:
                if e.is_dir():  # a link to a folder is walked, as find walks it
                    todo.append(e.path)
                else:
                    st = e.stat()
                    kind = "file" if stat.S_ISREG(st.st_mode) else "other"  # a pipe, socket or device
                    out[e.path] = {"name": e.path, "size": st.st_size, "type": kind, "mtime": st.st_mtime,
                                   "ident": (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)}
    return out


def local_ident(full: str, info: dict) -> tuple | None:
    """What identifies a local file's content: (size, mtime_ns, ctime_ns, inode). A file
    rewritten in place changes its mtime and ctime (ctime even when the mtime is set
    back), one renamed over it its inode. From the listing, else one stat."""
    if info.get("ident") is not None:
        return tuple(info["ident"])
    try:
        st = os.stat(full)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def remote_ident(info: dict) -> tuple | None:
    """An object's ETag from the listing, as ("etag", value): what a read checks the
    object it opens against (``read.check_unchanged``). None where the store gives none."""
    etag = info.get("ETag") or info.get("etag")
    return ("etag", str(etag)) if etag else None


def _refuse_special(path: str, found: list, infos: dict) -> None:
    """Anything but a regular file (a named pipe, a socket, a device) is refused by name
    before it is opened: opening a FIFO waits for a writer, all night."""
    for full, rel in found:
        info = infos[full]
        if info.get("type") == "other" or (info.get("type") not in ("file", "other") and _special(full)):
            raise DataError(f"data.path '{path}': {rel} is not a regular file (a named pipe, socket or device); "
                            "remove it from the folder")


def _special(full: str) -> bool:
    try:
        return not stat.S_ISREG(os.stat(full).st_mode)
    except OSError:
        return False


def deletion_digest(deleted: bytes) -> str:
    """A short digest of a file's deleted positions (``deleted_positions``): part of the
    identity of what the file holds, for the statistics cache and the refit's fingerprint."""
    return hashlib.blake2b(deleted, digest_size=16).hexdigest()


def deleted_positions(info: dict) -> bytes:
    """The sorted int64 positions the table's log deletes from a file, as bytes."""
    d = info.get("deleted")
    return b"" if d is None or not len(d) else np.asarray(d, dtype=np.int64).tobytes()


def display_path(protocol: str, path: str) -> str:
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def file_stamp(info: dict):
    """What changes when a file is rewritten: ETag on object stores, else mtime."""
    for k in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(k) is not None:
            v = info[k]
            return v if isinstance(v, (int, float, str)) else str(v)
    return None
