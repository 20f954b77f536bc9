"""What the client knows of a dataset: files, partitions, footers, chunk layout.

The client lists the files and reads only their footers: row counts per row group and
the schema, enough to check columns and types and to lay out the chunks. ``data.filters``
on hive partition keys (``date=2026-11-01/``) prune files before any footer is read;
filters on data columns are applied to rows while reading (``read``).
"""

from __future__ import annotations

import contextlib
import hashlib
import dataclasses
import itertools
import logging
import operator
import os
import posixpath
import stat
import zlib
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, DataError
from .table import delta_snapshot, iceberg_snapshot, table_format
from .read import (LARGE_ROW_GROUP, ColumnCheck, NativePath, _first_line, check_type, is_local, read_block,
                   read_slices)

log = logging.getLogger(__name__)

#: File names taken as Parquet when listing a directory or a glob.
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
#: Upper bound on the bytes of one chunk (rows × columns × 8) when grouping row groups:
#: 128 MiB, Spark's maxPartitionBytes. Passes that stream hold one row group, not a
#: chunk, so bigger chunks cost memory only to cached blocks (``chunk_bytes_for`` caps
#: them by worker memory); fewer tasks left the 2-core bench 10% faster than 64 MiB.
CHUNK_BYTES = 128 * 2**20
#: What opening a file costs, as bytes of data (float64) it could have read instead, when
#: small files are packed into one task (``Pack``): as Spark's openCostInBytes. Measured
#: locally: opening a 100-row file and reading it took 0.9 ms, about the time to read
#: 1 MiB of float64 columns; so a pack holds at most 128 files.
OPEN_COST_BYTES = 2**20
#: A listing with more than this many files smaller than ``OPEN_COST_BYTES`` is planned
#: from the listing, as Spark plans: their footers are not read on the client (0.2 ms a
#: file locally, a request each on an object store; 100,000 files at 30 ms took 47 s at
#: 64 in flight) but by the task that reads them. The first one's footer is still read,
#: so a config naming a missing column fails before a cluster starts. Below this count
#: every footer is read: exact row counts, each file's columns checked up front.
FOOTERLESS_MIN_FILES = 1000


@dataclass(frozen=True)
class Chunk:
    """The unit of work, one task per pass: some consecutive row groups of one file.

    row_groups, rows : None for a file planned from the listing (every row group, rows
        known once read)
    first_rows : index in the file of each row group's first row
    file_id : CRC-32 of the file's path below ``data.path`` (names it in the holdout hash)
    size : the file's bytes on disk, from the listing (0: unknown)
    """

    path: str
    row_groups: tuple[int, ...] | None
    rows: int | None
    first_rows: tuple[int, ...] = ()
    file_id: int = 0
    size: int = 0
    ident: tuple | None = None  # when planned: a local file's (size, mtime_ns, ctime_ns, inode); ("etag", …)
    deleted: bytes = b""  # int64 positions in the file, within the chunk, that the table's log deletes

    @property
    def pieces(self) -> tuple[Chunk, ...]:
        return (self,)

    def __dask_tokenize__(self):
        # Plain values: dask's generic walk of a dataclass took 9 ms for a pack of 127
        # files, 1.4 s of building one pass over 20,000 files on the client.
        return ("Chunk", self.path, self.row_groups, self.rows, self.first_rows, self.file_id, self.size,
                self.ident, self.deleted)


class Pack:
    """The unit of work for small files: several whole files read by one task, in file
    order, as one run of rows (issue 21: 20,000 files of 100 rows were 20,000 tasks a
    pass). ``path`` names the first file (messages).

    Not a dataclass: ``dask.delayed`` walks a dataclass argument, and the dataclasses in
    it, field by field in search of dask collections; for 158 packs of 127 files that
    was 3 s of building each pass's graph on the client."""

    __slots__ = ("pieces",)

    def __init__(self, pieces):
        self.pieces: tuple[Chunk, ...] = tuple(pieces)

    def __eq__(self, other):
        return isinstance(other, Pack) and self.pieces == other.pieces

    def __hash__(self):
        return hash(self.pieces)

    def __repr__(self):
        return f"Pack({len(self.pieces)} files from {self.path})"

    @property
    def rows(self) -> int | None:
        rows = [c.rows for c in self.pieces]
        return None if None in rows else sum(rows)

    @property
    def path(self) -> str:
        return self.pieces[0].path

    def __dask_tokenize__(self):
        return ("Pack", *(p.__dask_tokenize__() for p in self.pieces))


@dataclass(frozen=True)
class Holdout:
    """One side of a seeded validation split (early stopping).

    A row is held out when a hash of (seed, file, row index within the file) falls below
    ``fraction``: the same rows whatever the chunking, the workers, the filters or the
    order of the files, and so the same between runs.
    """

    seed: int
    fraction: float
    validation: bool  # True: read the held-out rows; False: the rest


@dataclass(frozen=True)
class ReadSpec:
    """What a worker needs, beside the chunk, to read it: the columns (features, target,
    then weight), where the files live, the row filters, what to do with NaN/inf/null
    (``missing``), one side of a validation split (``holdout``), and the row group size
    (bytes in the file) above which a row group is streamed rather than decoded whole."""

    columns: tuple[str, ...]
    protocol: str
    storage_options: dict
    row_filters: tuple = ()
    missing: str = "error"
    holdout: Holdout | None = None
    stream_above: int = LARGE_ROW_GROUP

    def block(self, chunk):
        return read_block(chunk, self)

    def slices(self, chunk, rows: int, shifted: bool = False):
        return read_slices(chunk, self, rows=rows, shifted=shifted)


@dataclass
class ParquetSource:
    """What the client knows about a dataset after reading footers only.

    chunks : in a fixed order (sorted file paths, then row groups)
    columns : features, then target (then weight), the order of the block columns
    """

    fs: Any
    protocol: str
    files: list[dict]
    chunks: list[Chunk]
    columns: list[str]
    partitions: dict[str, dict[str, str]] = field(default_factory=dict)
    row_filters: list = field(default_factory=list)
    storage_options: dict = field(default_factory=dict)
    missing: str = "error"
    _chunk_bytes: int = CHUNK_BYTES
    _stream_above: int | None = None  # None: the chunk size

    weight: str | None = None
    holdout: Holdout | None = None
    root: str = ""  # what was listed: the folder, the glob's folder, or the file
    _pack: bool = True
    table: dict | None = None  # a lakehouse table's snapshot: {"format", "version"}

    @property
    def weighted(self) -> bool:
        return self.weight is not None

    @property
    def rows_known(self) -> bool:
        """Whether the footers give the rows read (every footer read, no row filters, no
        holdout)."""
        return not self.row_filters and self.holdout is None and self.n_rows is not None

    def split(self, seed: int, fraction: float) -> tuple[ParquetSource, ParquetSource]:
        """(training rows, validation rows) of a seeded split; same files and chunks."""
        return (dataclasses.replace(self, holdout=Holdout(seed, fraction, False)),
                dataclasses.replace(self, holdout=Holdout(seed, fraction, True)))

    @property
    def spec(self) -> ReadSpec:
        """How every chunk of this source is read (``read_block``, ``read_slices``): a row
        group up to the chunk size is decoded whole, a larger one streamed."""
        return ReadSpec(tuple(self.columns), self.protocol, self.storage_options,
                        tuple(tuple(f) for f in self.row_filters), self.missing, self.holdout,
                        stream_above=self._stream_above or self._chunk_bytes)

    def read_args(self, chunk: Chunk) -> tuple[Chunk, ReadSpec]:
        """The arguments of ``read_block`` and ``read_slices`` for one chunk."""
        return chunk, self.spec

    @property
    def n_rows(self) -> int | None:
        """Rows in the files; None where some were planned from the listing (unread)."""
        rows = [f["rows"] for f in self.files]
        return None if None in rows else sum(rows)

    @property
    def largest_chunk_bytes(self) -> int:
        """The largest chunk as a float64 block (a cached block's size)."""
        row_bytes = len(self.columns) * 8
        return max((c.rows * row_bytes if c.rows is not None else sum(p.size for p in c.pieces)
                    for c in self.chunks), default=0)

    @property
    def nbytes(self) -> int:
        """Size of the dataset as float64 blocks; a file planned from the listing counts
        its size on disk (an estimate: its rows are not known before it is read)."""
        row_bytes = len(self.columns) * 8
        return sum((f["size"] or 0) if f["rows"] is None else f["rows"] * row_bytes for f in self.files)

    def layout(self, chunk_bytes: int, pack: bool | None = None, stream_above: int | None = None) -> None:
        """Group consecutive row groups of each file into chunks of at most
        ``chunk_bytes`` (as float64), never splitting a row group; then (``pack``) pack
        runs of consecutive small files, whole, into one task each (``pack_small_files``).
        The layout depends only on the files and ``chunk_bytes``, never on the cluster:
        chunks are where sums meet in the fixed tree, so another layout is another
        association of the same sums (callers pass the constant ``CHUNK_BYTES``).
        ``stream_above``: row groups larger than this are streamed (the workers' memory
        sets it: ``chunk_bytes_for``); the same bits either way. Default: ``chunk_bytes``.
        ``pack=False``: a chunk never crosses files (``unpacked``: to name a file at fault)."""
        self._chunk_bytes = chunk_bytes
        if stream_above is not None:
            self._stream_above = stream_above
        self._pack = self._pack if pack is None else pack
        max_rows = max(1, chunk_bytes // (8 * len(self.columns)))
        chunks = []
        for f in self.files:
            file_id = zlib.crc32(f["rel"].encode())
            deleted = np.frombuffer(f.get("deleted") or b"", dtype=np.int64)
            if f["row_groups"] is None:  # planned from the listing: the task reads it whole
                chunks.append(Chunk(f["full_path"], None, f["rows"], (), file_id, f["size"] or 0, f.get("ident"),
                                    deleted.tobytes()))
                continue
            starts = list(itertools.accumulate(f["row_groups"], initial=0))  # numpy's: 14 µs a file

            def chunk(group, rows):
                lo, hi = np.searchsorted(deleted, [starts[group[0]], starts[group[-1] + 1]])
                return Chunk(f["full_path"], tuple(group), rows - int(hi - lo), tuple(starts[rg] for rg in group),
                             file_id, f["size"] or 0, f.get("ident"), deleted[lo:hi].tobytes())

            group, rows = [], 0
            for rg, n in enumerate(f["row_groups"]):
                if group and rows + n > max_rows:
                    chunks.append(chunk(group, rows))
                    group, rows = [], 0
                group.append(rg)
                rows += n
            if group:
                chunks.append(chunk(group, rows))
        chunks = [c for c in chunks if c.rows is None or c.rows > 0]
        if self._pack:
            chunks = pack_small_files(chunks, chunk_bytes, OPEN_COST_BYTES, 8 * len(self.columns))
        self.chunks = chunks

    def unpacked(self) -> ParquetSource:
        """The same dataset with chunks that never cross files (to name a file at fault)."""
        sub = dataclasses.replace(self, chunks=[])
        sub.layout(self._chunk_bytes, pack=False)
        return sub

    def subset(self, full_paths) -> ParquetSource:
        """The same dataset restricted to some files (layout redone)."""
        keep = set(full_paths)
        sub = dataclasses.replace(self, files=[f for f in self.files if f["full_path"] in keep], chunks=[])
        sub.layout(self._chunk_bytes)
        return sub

    def file_key(self, f: dict) -> dict:
        """Identity of one file's statistics: rewritten files get a new key."""
        return file_key(f, self.columns, self.missing, self.row_filters)

    @staticmethod
    def footer_plan(f: dict) -> dict | None:
        """What the file's footer said, for ``open_source(known=...)`` to plan it again
        without reading it; None for a file planned from the listing (footer unread)."""
        if f["row_groups"] is None or f.get("types") is None:
            return None
        return {"row_groups": f["row_groups"], "row_group_bytes": f["row_group_bytes"], "types": f["types"]}

    def fingerprint(self) -> dict:
        return {
            **({"table": self.table} if self.table else {}),
            "files": [{"path": f["path"], "size": f["size"], "rows": f["rows"], "stamp": f["stamp"]}
                      for f in self.files],
            "n_files": len(self.files),
            "n_rows": self.n_rows,
            "total_bytes": sum(f["size"] for f in self.files),
        }


def file_key(f: dict, columns, missing: str, row_filters) -> dict:
    """Identity of one file read one way (columns, missing, row filters), from the
    listing alone: a rewritten file (other size, mtime or ETag) gets another key, and so
    does a table's file with other rows deleted by the log."""
    key = {"path": f["path"], "size": f["size"], "stamp": f["stamp"], "columns": list(columns),
           "missing": missing, "row_filters": [list(x) for x in row_filters], "partition": f["partition"]}
    if f.get("deleted"):
        key["deleted"] = hashlib.blake2b(f["deleted"], digest_size=16).hexdigest()
    return key


def pack_small_files(chunks: list, chunk_bytes: int, open_cost: int, row_bytes: int) -> list:
    """Runs of consecutive chunks that are whole files, packed while their bytes (as
    float64) plus ``open_cost`` per file stay within ``chunk_bytes`` (Spark's file
    packing: maxPartitionBytes and openCostInBytes). A file split into several chunks is
    big already and stays as it is; a pack of one file is that file's chunk. A file of
    unknown rows (planned from the listing) counts its size on disk (``Chunk.size``)."""
    whole = {}  # path → number of chunks of that file
    for c in chunks:
        whole[c.path] = whole.get(c.path, 0) + 1
    out, run, cost = [], [], 0
    for c in [*chunks, None]:  # None: the end, which closes the last run
        if c is None or whole[c.path] > 1:
            c_cost = None
        else:
            c_cost = (c.size if c.rows is None else c.rows * row_bytes) + open_cost
        if run and (c_cost is None or cost + c_cost > chunk_bytes):
            out.append(run[0] if len(run) == 1 else Pack(tuple(run)))
            run, cost = [], 0
        if c_cost is not None:
            run.append(c)
            cost += c_cost
        elif c is not None:
            out.append(c)
    return out


# --------------------------------------------------------------------------- discovery

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


def _keep(keys: dict[str, str], filters) -> bool:
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


def list_files_detailed(path: str, storage_options: dict | None = None, fmt: str = "auto", version=None,
                        as_of_time=None, catalog: dict | None = None):
    """``list_files`` and {full_path: the listing's info (size, mtime or ETag)}: one
    listing, no request per file (a directory test and an info per file were two
    round trips each on an object store). A Delta or Iceberg table (``fmt``,
    ``data.format``; ``catalog``: an Iceberg catalog's table) is listed from its log:
    the live files of one snapshot (``data.table``)."""
    if catalog:
        return _iceberg_listing(path, storage_options, version, as_of_time, catalog)
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if fmt != "parquet" and not any(ch in root for ch in "*?["):
        try:
            kind = table_format(fs, root.rstrip("/"), fmt)
        except (ConfigError, DataError):
            raise
        except Exception as e:  # noqa: BLE001 - object stores fail in many types (auth, network)
            raise DataError(f"data.path '{path}': cannot list ({_first_line(e)})") from None
        if kind == "delta":
            found, infos, table = delta_snapshot(path, root.rstrip("/"), protocol, dict(storage_options or {}),
                                                 version, as_of_time)
            if not found:
                raise DataError(f"data.path '{path}': the Delta table (version {table['version']}) has no files")
            return Listing((fs, protocol, found, root.rstrip("/"), infos), table)
        if kind == "iceberg":
            return _iceberg_listing(path, storage_options, version, as_of_time, None)
    elif version is not None or as_of_time is not None:
        raise ConfigError("data.version / data.as_of_time need a table (data.format delta or iceberg, or auto "
                          "on a table)")
    try:
        if any(ch in root for ch in "*?["):
            infos = fs.glob(root, detail=True)
            base = root.split("*")[0].rsplit("/", 1)[0]
        elif fs.isdir(root):
            infos = _find_local(root) if is_local(fs) else fs.find(root, detail=True)
            base = root
        elif fs.exists(root):
            infos, base = {root: fs.info(root)}, posixpath.dirname(root)
        else:
            raise DataError(f"data.path '{path}' does not exist")
    except FileNotFoundError:
        raise DataError(f"data.path '{path}' does not exist") from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - object stores fail in many types (auth, network)
        raise DataError(f"data.path '{path}': cannot list ({_first_line(e)})") from None
    found = sorted(infos)
    out, others = [], []
    listing = len(found) > 1 or (found and found[0] != root)
    for f in found:
        rel = f[len(base):].lstrip("/") if f.startswith(base) else posixpath.basename(f)
        if any(seg.startswith(("_", ".")) for seg in rel.split("/")):
            continue
        if infos[f].get("type") == "directory":
            continue
        if listing and not f.endswith(PARQUET_SUFFIXES):
            others.append(rel)
            continue
        out.append((f, rel))
    if not out and others:
        raise DataError(f"data.path '{path}' holds no Parquet files (*.parquet); found {len(others)} "
                        f"other file(s), e.g. {others[0]}")
    if is_local(fs):
        _refuse_special(path, out, infos)
    if version is not None or as_of_time is not None:
        raise ConfigError(f"data.version / data.as_of_time: data.path '{path}' is not a Delta or Iceberg table")
    return Listing((fs, protocol, out, root, infos))


def _iceberg_listing(path, storage_options, version, as_of_time, catalog) -> Listing:
    """An Iceberg table's snapshot as a ``Listing``: the manifests' URIs as the paths of
    the filesystem that holds the table."""
    location, found, infos, table, renamed = iceberg_snapshot(path, dict(storage_options or {}), version,
                                                              as_of_time, catalog)
    if not found:
        raise DataError(f"data.path '{path}': the Iceberg table (snapshot {table['version']}) has no files")
    fs, root = fsspec.core.url_to_fs(location, **(storage_options or {}))
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


def open_source(data_cfg, extra_columns: list[str] | None = None, chunk_bytes: int = CHUNK_BYTES,
                with_target: bool = True, known=None, listing=None) -> ParquetSource:
    """Discover files, prune by partition filters, read footers, lay out chunks.

    ``with_target=False``: the data need not hold the target (new data to predict on).
    A listing of many small files is planned from the listing (``FOOTERLESS_MIN_FILES``).
    ``known(file_key) -> footer_plan | None``: what earlier reads of a file said (the
    refit's statistics cache); such a file's footer is not read again.
    ``listing``: what ``list_files_detailed(data_cfg.path, …)`` gave, if the caller has it.

    Raises
    ------
    DataError
        Naming the path, file or column at fault.
    """
    # Block layout: features, target, then the weight column if any (then any extra
    # columns the caller reads for itself, e.g. predict's keys).
    columns = list(data_cfg.features) + ([data_cfg.target] if with_target else [])
    if data_cfg.weight:
        columns.append(data_cfg.weight)
    columns += [c for c in extra_columns or [] if c not in columns]
    listing = listing or list_data(data_cfg)
    fs, protocol, found, root, infos = listing
    renamed = sorted(set(columns) & getattr(listing, "renamed", frozenset()))
    if renamed:
        raise ConfigError(f"data.path '{data_cfg.path}': column '{renamed[0]}' was renamed or replaced in the "
                          "table's history; gd_dask reads columns by name, so it is refused rather than read wrong")
    if any(ch in root for ch in "*?["):
        root = root.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
    if not found:
        raise DataError(f"data.path '{data_cfg.path}' holds no Parquet files")

    partitions, kept, rels = {}, [], {}
    for full, rel in found:
        keys = listing.partition(full, rel) if isinstance(listing, Listing) else hive_keys(rel)
        if _keep(keys, data_cfg.filters):
            kept.append(full)
            partitions[full] = keys
            rels[full] = rel
    if not kept:
        raise DataError(f"data.filters {data_cfg.filters} select no files under '{data_cfg.path}'")

    part_keys = set().union(*partitions.values()) if partitions else set()
    row_filters = [f for f in data_cfg.filters if f[0] not in part_keys]

    table = getattr(listing, "table", None)
    if table and is_local(fs):  # a file the log names but a vacuum removed: say so before reading
        for full in kept:
            infos[full]["ident"] = local_ident(full, infos[full])
            if infos[full]["ident"] is None:
                raise DataError(f"data.path '{data_cfg.path}': the {table['format'].capitalize()} table's version "
                                f"{table['version']} names {rels[full]}, which is gone (removed by a vacuum or "
                                "an expiry?); read a newer version")
    cached = {}
    for full in kept if known is not None else ():
        info = infos[full]
        plan = known(file_key({"path": _display(protocol, full), "size": info.get("size"), "stamp": file_stamp(info),
                               "partition": partitions[full], "deleted": deleted_positions(info)}, columns,
                              data_cfg.missing, row_filters))
        if plan is not None:
            cached[full] = plan
    planned = summary_plan(fs, root, infos, [full for full in kept if full not in cached], rels)
    todo = [full for full in kept if full not in planned and full not in cached]
    unread = listing_plan(todo, infos)
    footers = read_footers(fs, [p for p in todo if p not in unread], infos)  # in order, as the loop asks
    if planned:
        log.info("planned %d files from %s/_metadata", len(planned), root)
    if unread:
        log.info("planned %d small files from the listing (their tasks read their footers)", len(unread))
    if cached:
        log.info("planned %d files from the statistics cache", len(cached))
    if planned or unread or cached:
        log.info("read %d footers", len(todo) - len(unread))
    files, check = [], ColumnCheck(columns + [f[0] for f in row_filters])
    with contextlib.closing(footers):  # a check that fails stops the reads still in flight
        for full in kept:
            info, col_types = infos[full], None
            if full in cached:  # its columns were checked when it was first read
                plan = cached[full]
                row_groups, rg_bytes, schema, col_types = (plan["row_groups"], plan["row_group_bytes"], None,
                                                           plan["types"])
                for col, t in zip(columns, col_types):
                    check_type(full, col, t, check.types)
            elif full in planned:
                row_groups, rg_bytes, schema = planned[full]
            elif full in unread:  # its task checks its columns
                row_groups = rg_bytes = schema = None
            else:
                meta, schema, info = next(footers)
                row_groups, rg_bytes = _row_groups(meta)
            if schema is not None:
                col_types = check(full, schema)[:len(columns)]
            ident = local_ident(full, info) if is_local(fs) else remote_ident(info)
            deleted = deleted_positions(infos[full])
            rows = infos[full].get("rows") if row_groups is None else sum(row_groups)
            if row_groups is not None and infos[full].get("rows") not in (None, rows):
                raise DataError(f"{_display(protocol, full)}: holds {rows} rows but the table's log says "
                                f"{infos[full]['rows']}; the log does not describe this file")
            files.append({"path": _display(protocol, full), "size": info.get("size"),
                          "rows": None if rows is None else rows - len(deleted) // 8, "deleted": deleted,
                          "full_path": full, "rel": rels[full], "stamp": file_stamp(info),
                          "ident": ident,
                          "partition": partitions[full], "row_groups": row_groups, "row_group_bytes": rg_bytes,
                          "types": col_types})
    src = ParquetSource(
        fs=fs, protocol=protocol, files=files, chunks=[], columns=columns,
        partitions=partitions, row_filters=row_filters,
        storage_options=dict(data_cfg.storage_options), missing=data_cfg.missing, weight=data_cfg.weight,
        root=root, table=getattr(listing, "table", None),
    )
    src.layout(chunk_bytes)
    if not src.chunks:
        raise DataError(f"data.path '{data_cfg.path}': the selected files hold no rows")
    return src


def deleted_positions(info: dict) -> bytes:
    """The sorted int64 positions the table's log deletes from a file, as bytes."""
    d = info.get("deleted")
    return b"" if d is None or not len(d) else np.asarray(d, dtype=np.int64).tobytes()


def listing_plan(paths: list[str], infos: dict) -> set[str]:
    """Which of ``paths`` to plan from the listing, footers unread: the small files
    (under ``OPEN_COST_BYTES``) after the first, when there are more than
    ``FOOTERLESS_MIN_FILES`` of them."""
    small = [p for p in paths if isinstance(infos[p].get("size"), int) and infos[p]["size"] < OPEN_COST_BYTES]
    return set(small[1:]) if len(small) > FOOTERLESS_MIN_FILES else set()


def _row_groups(meta) -> tuple[list[int], int]:
    """(rows of each row group, the largest row group's bytes) from a file's metadata."""
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    return [g.num_rows for g in groups], max((g.total_byte_size for g in groups), default=0)


def summary_plan(fs, root: str, infos: dict, kept: list[str], rels: dict) -> dict:
    """What the footers of ``kept`` files would say, from a ``_metadata`` summary file in
    the listed folder (written by pyarrow, dask and Spark): one read instead of one per
    file. {full path: (rows of each row group, largest row group's bytes, schema)} for
    the files it covers and that are not newer than it; the others read their footers.
    No usable summary: {}."""
    path = posixpath.join(root, "_metadata")
    info = infos.get(path)
    if info is None or info.get("type") == "directory":
        return {}
    try:
        opener = NativePath(path) if is_local(fs) else fs.open(path, "rb")
        with opener as fh:
            meta = pq.read_metadata(fh)
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError, ValueError) as e:
        log.info("%s: not a usable summary (%s); reading footers", path, _first_line(e))
        return {}
    groups: dict[str, list] = {}
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        if rg.num_columns:
            groups.setdefault(rg.column(0).file_path, []).append((rg.num_rows, rg.total_byte_size))
    out = {}
    for full in kept:
        found = groups.get(rels[full])
        if found and _not_newer(infos[full], info):
            out[full] = ([n for n, _ in found], max(b for _, b in found), schema)
    return out


def _not_newer(file_info: dict, summary_info: dict) -> bool:
    """Whether a data file was last written no later than the summary (else it may have
    been rewritten since: its own footer decides)."""
    for key in ("mtime", "LastModified", "last_modified"):
        a, b = file_info.get(key), summary_info.get(key)
        if a is not None and b is not None:
            try:
                return a <= b
            except TypeError:
                return False
    return False


def _display(protocol: str, path: str) -> str:
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


#: Footer reads in flight at once on the client. Local files: parsing a footer holds the
#: GIL, more threads do not help. Elsewhere a footer is one request whose latency, not
#: bandwidth, is the cost (issue 21: 100,000 footers one after another at 30 ms is 50
#: minutes; 64 at a time, 47 s).
FOOTER_THREADS = 16
REMOTE_FOOTER_THREADS = 64
#: Bytes fetched from a remote file's end to read its footer in one request (most
#: footers are a few KiB; a larger one costs a second request).
FOOTER_TAIL = 64 * 2**10


def read_footers(fs, paths: list[str], infos: dict | None = None):
    """``_read_footer`` of each path, in order, up to ``FOOTER_THREADS`` at a time. The
    results and the first error are those of reading them one after another.
    ``infos``: what the listing said of each path (else one info request each)."""
    infos = infos or {}
    if len(paths) < 2:
        yield from (_read_footer(fs, p, infos.get(p)) for p in paths)
        return
    from concurrent.futures import ThreadPoolExecutor

    threads = FOOTER_THREADS if is_local(fs) else REMOTE_FOOTER_THREADS
    with ThreadPoolExecutor(min(threads, len(paths)), thread_name_prefix="gd-dask-footer") as pool:
        futures = [pool.submit(_read_footer, fs, p, infos.get(p)) for p in paths]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def _read_footer(fs, path: str, info: dict | None = None):
    try:
        info = info if info is not None and "size" in info else fs.info(path)
        if not is_local(fs):
            tail = _remote_footer(fs, path, info.get("size"))
            if tail is not None:
                pf = pq.ParquetFile(pa.BufferReader(tail))
                return pf.metadata, pf.schema_arrow, info
        # Object stores: small range reads, so only the footer is fetched, not the file.
        # A local path opened here, not by pyarrow from a str (0.26 → 0.12 ms a footer).
        opener = pa.OSFile(path) if is_local(fs) else fs.open(path, "rb", block_size=2**16, cache_type="bytes")
        with opener as fh:
            pf = pq.ParquetFile(fh)
            meta, schema = pf.metadata, pf.schema_arrow
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    return meta, schema, info


def _remote_footer(fs, path: str, size) -> bytes | None:
    """The file's last ``FOOTER_TAIL`` bytes in one ranged request, when they hold the
    whole footer (its length is in the last 8 bytes); else None. Parsed as a file of its
    own: the footer is all ``ParquetFile`` reads to give metadata and schema."""
    if not isinstance(size, int) or size < 12:
        return None
    tail = fs.cat_file(path, start=max(0, size - FOOTER_TAIL), end=size)
    if len(tail) < 8 or tail[-4:] != b"PAR1":
        raise ValueError("no Parquet magic bytes at the end of the file")
    footer = int.from_bytes(tail[-8:-4], "little")
    if footer + 8 > len(tail):
        return None
    return tail if size <= FOOTER_TAIL else b"PAR1" + tail[-(footer + 8):]


def file_stamp(info: dict):
    """What changes when a file is rewritten: ETag on object stores, else mtime."""
    for k in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(k) is not None:
            v = info[k]
            return v if isinstance(v, (int, float, str)) else str(v)
    return None
