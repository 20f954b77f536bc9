"""What the client knows of a dataset: files, partitions, footers, chunk layout.

The client lists the files and reads only their footers: row counts per row group and
the schema, enough to check columns and types and to lay out the chunks. ``data.filters``
on hive partition keys (``date=2026-11-01/``) prune files before any footer is read;
filters on data columns are applied to rows while reading (``read``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..sizes import CHUNK_BYTES
from .footers import OPEN_COST_BYTES, _row_groups, listing_plan, read_footers, summary_plan
from .listing import (
    display_path,
    keep_partition,
    deleted_positions,
    deletion_digest,
    file_stamp,
    list_data,
    local_ident,
    remote_ident,
)
from .read import (
    LARGE_ROW_GROUP,
    ColumnCheck,
    check_type,
    is_local,
    read_block,
    read_slices,
)

log = logging.getLogger(__name__)


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
    categorical: tuple[str, ...] = ()  # read as level keys (``read.level_keys``)
    weight: str | None = None  # the sample weights' column: a negative weight is refused

    def block(self, chunk):
        return read_block(chunk, self)

    def slices(self, chunk, rows: int, shifted: bool = False, names: dict | None = None):
        return read_slices(chunk, self, rows=rows, shifted=shifted, names=names)


@dataclass
class ParquetSource:
    """What the client knows about a dataset after reading footers only.

    chunks : in a fixed order (sorted file paths, then row groups)
    columns : features (then offset or exposure), then target (then weight), the order of
        the block columns
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
    categorical: list[str] = field(default_factory=list)  # features read as level keys
    offset: str | None = None  # "add": the column after the features is an offset; "log": an exposure

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
                        stream_above=self._stream_above or self._chunk_bytes, categorical=tuple(self.categorical),
                        weight=self.weight)

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
        sets it: ``stream_above_for``); the same bits either way. Default: ``chunk_bytes``.
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
        return file_key(f, self.columns, self.missing, self.row_filters, self.categorical)

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


def file_key(f: dict, columns, missing: str, row_filters, categorical=()) -> dict:
    """Identity of one file read one way (columns, missing, row filters, the columns read
    as levels), from the listing alone: a rewritten file (other size, mtime or ETag) gets
    another key, and so does a table's file with other rows deleted by the log."""
    key = {"path": f["path"], "size": f["size"], "stamp": f["stamp"], "columns": list(columns),
           "missing": missing, "row_filters": [list(x) for x in row_filters], "partition": f["partition"]}
    if categorical:  # its statistics are grouped by these columns' levels
        key["categorical"] = list(categorical)
    if f.get("deleted"):
        key["deleted"] = deletion_digest(f["deleted"])
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


def open_source(data_cfg, extra_columns: list[str] | None = None, chunk_bytes: int = CHUNK_BYTES,
                with_target: bool = True, known=None, listing=None) -> ParquetSource:
    """Discover files, prune by partition filters, read footers, lay out chunks.

    ``with_target=False``: the data need not hold the target (new data to predict on).
    A listing of many small files is planned from the listing (``FOOTERLESS_MIN_FILES``).
    ``known(file_key) -> footer_plan | None``: what earlier reads of a file said (the
    refit's statistics cache); such a file's footer is not read again.
    ``listing``: what ``list_data(data_cfg)`` gave, if the caller has it.

    Raises
    ------
    DataError
        Naming the path, file or column at fault.
    """
    columns = block_columns(data_cfg, extra_columns, with_target)
    sel = select(listing or list_data(data_cfg), data_cfg, columns)
    found: set[str] = set()
    files = _plan_files(sel, columns, data_cfg.missing, known, list(data_cfg.categorical), found,
                        list(data_cfg.features))
    src = ParquetSource(
        fs=sel.fs, protocol=sel.protocol, files=files, chunks=[], columns=columns,
        partitions=sel.partitions, row_filters=sel.row_filters,
        storage_options=dict(data_cfg.storage_options), missing=data_cfg.missing, weight=data_cfg.weight,
        root=sel.root, table=sel.table,
        categorical=[c for c in data_cfg.features if c in found or c in data_cfg.categorical],
        offset=offset_kind(data_cfg),
    )
    src.layout(chunk_bytes)
    if not src.chunks:
        raise DataError(f"data.path '{data_cfg.path}': the selected files hold no rows")
    return src


def offset_kind(data_cfg) -> str | None:
    """How the column after the features enters the linear predictor: "add" (an offset),
    "log" (an exposure), None (there is none)."""
    if getattr(data_cfg, "offset", None):
        return "add"
    return "log" if getattr(data_cfg, "exposure", None) else None


def block_columns(data_cfg, extra_columns=None, with_target: bool = True) -> list[str]:
    """The block's columns: features, the offset or exposure if any, the target, then the
    weight column if any (then any extra columns the caller reads for itself, e.g.
    predict's keys)."""
    offset = getattr(data_cfg, "offset_column", None)
    columns = list(data_cfg.features) + ([offset] if offset else []) + ([data_cfg.target] if with_target else [])
    if data_cfg.weight:
        columns.append(data_cfg.weight)
    return columns + [c for c in extra_columns or [] if c not in columns]


@dataclass
class Selection:
    """The files of a listing that ``data.filters`` keep, with their partition values and
    paths below the root, and the filters left for the rows."""

    fs: Any
    protocol: str
    root: str
    infos: dict
    kept: list[str]
    partitions: dict[str, dict[str, str]]
    rels: dict[str, str]
    row_filters: list
    table: dict | None


def select(listing, data_cfg, columns) -> Selection:
    """Prune ``listing`` by the partition filters; a table's files that a vacuum removed,
    or columns renamed in its history, are refused before any footer is read."""
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
        keys = listing.partition(full, rel)
        if keep_partition(keys, data_cfg.filters):
            kept.append(full)
            partitions[full] = keys
            rels[full] = rel
    if not kept:
        raise DataError(f"data.filters {data_cfg.filters} select no files under '{data_cfg.path}'")
    part_keys = set().union(*partitions.values())
    sel = Selection(fs, protocol, root, infos, kept, partitions, rels,
                    [f for f in data_cfg.filters if f[0] not in part_keys], getattr(listing, "table", None))
    if sel.table and is_local(fs):
        _check_table_files(sel, data_cfg.path)
    return sel


def _check_table_files(sel: Selection, path: str) -> None:
    """A file the table's log names but a vacuum removed: one line saying so, before any
    read (else a footer read fails naming only the file). Its identity, stat'ed here, is
    kept for the reads (``check_unchanged``)."""
    for full in sel.kept:
        info = sel.infos[full]
        info["ident"] = local_ident(full, info)
        if info["ident"] is None:
            raise DataError(f"data.path '{path}': the {sel.table['format'].capitalize()} table's version "
                            f"{sel.table['version']} names {sel.rels[full]}, which is gone (removed by a vacuum "
                            "or an expiry?); read a newer version")


def _plan_files(sel: Selection, columns: list[str], missing: str, known, categorical=(), found=None,
                text_ok=()) -> list[dict]:
    """Each kept file's entry (``ParquetSource.files``), from the cheapest source of its
    footer's facts: the statistics cache (``known``), a ``_metadata`` summary, the listing
    alone (many small files), else its footer; columns checked as each is planned."""
    cached = {}
    for full in sel.kept if known is not None else ():
        plan = known(file_key(_identity(sel, full), columns, missing, sel.row_filters))
        if plan is not None:
            cached[full] = plan
    planned = summary_plan(sel.fs, sel.root, sel.infos, [f for f in sel.kept if f not in cached], sel.rels)
    todo = [full for full in sel.kept if full not in planned and full not in cached]
    unread = listing_plan(todo, sel.infos)
    footers = read_footers(sel.fs, [p for p in todo if p not in unread], sel.infos)  # in order, as asked
    _log_plan(sel, planned, unread, cached, len(todo) - len(unread))
    files, check = [], ColumnCheck(columns + [f[0] for f in sel.row_filters], True, categorical, found, text_ok)
    with contextlib.closing(footers):  # a check that fails stops the reads still in flight
        for full in sel.kept:
            info, col_types = sel.infos[full], None
            if full in cached:  # its columns were checked when it was first read
                plan = cached[full]
                row_groups, rg_bytes, schema, col_types = (plan["row_groups"], plan["row_group_bytes"], None,
                                                           plan["types"])
                for col, t in zip(columns, col_types):
                    check_type(full, col, t, check.types)
                    if found is not None and col in text_ok and t.replace("dictionary<values=", "").startswith(
                            ("string", "large_string")):
                        found.add(col)
            elif full in planned:
                row_groups, rg_bytes, schema = planned[full]
            elif full in unread:  # its task checks its columns
                row_groups = rg_bytes = schema = None
            else:
                meta, schema, info = next(footers)
                row_groups, rg_bytes = _row_groups(meta)
            if schema is not None:
                col_types = check(full, schema)[:len(columns)]
            files.append(_file_entry(sel, full, info, row_groups, rg_bytes, col_types))
    return files


def _identity(sel: Selection, full: str) -> dict:
    """What ``file_key`` needs of a file, from the listing alone."""
    info = sel.infos[full]
    return {"path": display_path(sel.protocol, full), "size": info.get("size"), "stamp": file_stamp(info),
            "partition": sel.partitions[full], "deleted": deleted_positions(info)}


def _log_plan(sel: Selection, planned, unread, cached, footers_read: int) -> None:
    if planned:
        log.info("planned %d files from %s/_metadata", len(planned), sel.root)
    if unread:
        log.info("planned %d small files from the listing (their tasks read their footers)", len(unread))
    if cached:
        log.info("planned %d files from the statistics cache", len(cached))
    if planned or unread or cached:
        log.info("read %d footers", footers_read)


def _file_entry(sel: Selection, full: str, info: dict, row_groups, rg_bytes, col_types) -> dict:
    """One ``ParquetSource.files`` entry; rows are the live rows (a table's deletions
    taken off), and a table's row count must be the footer's."""
    listed = sel.infos[full]
    deleted = deleted_positions(listed)
    rows = listed.get("rows") if row_groups is None else sum(row_groups)
    if row_groups is not None and listed.get("rows") not in (None, rows):
        raise DataError(f"{display_path(sel.protocol, full)}: holds {rows} rows but the table's log says "
                        f"{listed['rows']}; the log does not describe this file")
    return {"path": display_path(sel.protocol, full), "size": info.get("size"),
            "rows": None if rows is None else rows - len(deleted) // 8, "deleted": deleted,
            "full_path": full, "rel": sel.rels[full], "stamp": file_stamp(info),
            "ident": local_ident(full, info) if is_local(sel.fs) else remote_ident(info),
            "partition": sel.partitions[full], "row_groups": row_groups, "row_group_bytes": rg_bytes,
            "types": col_types}
