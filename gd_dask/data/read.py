"""Reading rows, inside worker tasks: one chunk = some row groups of one file.

No process ever needs a whole file, and the client never holds the data. Passes that add
up over rows stream a chunk slice by slice (``read_slices``); cached passes build the
whole block (``read_block``).
"""

from __future__ import annotations

import itertools
import os
import threading

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError, first_line
from ..sizes import BATCH_ROWS


def _pc():
    """pyarrow.compute, imported on first use: 50 ms of every command's start, needed
    only for filters, deletions, holdouts and nulls."""
    import pyarrow.compute

    return pyarrow.compute


def _first_line(e: Exception) -> str:
    return first_line(e, with_type=False)




def _filtered(table: pa.Table, spec, file_id: int, first_row: int, deleted=None) -> pa.Table:
    """``table`` with the rows a table's log deletes (``deleted``: sorted positions in
    the file) dropped, the row filters and one side of the holdout applied
    (``first_row``: the index in the file of its first row)."""
    row_filters, h = spec.row_filters, spec.holdout
    mask = _row_mask(table, row_filters) if row_filters else None
    if deleted is not None and len(deleted):
        lo, hi = np.searchsorted(deleted, [first_row, first_row + table.num_rows])
        if hi > lo:
            live = np.ones(table.num_rows, dtype=bool)
            live[deleted[lo:hi] - first_row] = False
            mask = pa.array(live) if mask is None else _pc().and_(mask, pa.array(live))
    if h is not None:
        held = holdout_rows(h.seed, file_id, first_row, table.num_rows, h.fraction)
        keep = pa.array(held if h.validation else ~held)
        mask = keep if mask is None else _pc().and_(mask, keep)
    return table.filter(mask) if mask is not None else table


def check_columns(path: str, schema: pa.Schema, columns, types: dict, categorical=(), found=None,
                  text_ok=()) -> None:
    """Every needed column present and numeric, with one type across the files checked
    with the same ``types``; a ``categorical`` column text, integer or boolean. At
    planning, a text column among ``text_ok`` (the features) is categorical: it is
    added to ``found`` rather than refused."""
    names = set(schema.names)
    for col in columns:
        if col not in names:
            raise DataError(f"{path}: column '{col}' not found (has: {', '.join(schema.names)})")
        t = schema.field(col).type
        if col in categorical:
            if not (is_text(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)):
                raise DataError(f"{path}: column '{col}' is {t}: a categorical feature is text, integer or boolean")
        elif is_text(t) and col in text_ok and found is not None:
            found.add(col)
        elif not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                  or pa.types.is_decimal(t)):
            hint = " (a categorical feature: list it in data.categorical)" if is_text(t) else ""
            raise DataError(f"{path}: column '{col}' is {t}, not numeric{hint}")
        check_type(path, col, str(t), types)


def is_text(t) -> bool:
    """Strings, or a dictionary of them (pandas' and polars' categoricals)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


#: Keys of text levels: this many bits of a BLAKE2b hash of the UTF-8 bytes, an integer
#: that float64 holds exactly (two levels of 20,000 share one with probability 4e-8,
#: and a pass that sees both says so).
KEY_BITS = 52


def level_keys(arr, names: dict | None = None) -> np.ndarray:
    """A categorical column (or chunk) as float64 keys: integers and booleans by value,
    text by ``KEY_BITS`` of a hash (``names`` collects key → text); null → NaN."""
    if isinstance(arr, pa.ChunkedArray):
        parts = [level_keys(c, names) for c in arr.chunks]
        return np.concatenate(parts) if parts else np.empty(0)
    if not is_text(arr.type):
        keys = as_float64(arr)
        if np.any(np.abs(keys[np.isfinite(keys)]) > 2.0 ** 53):
            raise DataError("a categorical integer column holds values beyond 2^53")
        return keys
    if not pa.types.is_dictionary(arr.type):
        arr = _pc().dictionary_encode(arr)

    values = arr.dictionary.to_pylist()
    table = np.array([text_key(v) for v in values], dtype=np.float64)
    if names is not None:
        add_level_names(names, zip(table.tolist(), values))
    idx = arr.indices
    out = table[as_float64(idx).astype(np.int64)] if idx.null_count == 0 else np.full(len(idx), np.nan)
    if idx.null_count:
        valid = np.asarray(idx.is_valid())
        out[valid] = table[np.asarray(idx.drop_null()).astype(np.int64)]
    return out


def add_level_names(names: dict, pairs) -> dict:
    """``names`` (key → text) with the (key, text) ``pairs`` added; two texts sharing a
    key are one line naming both."""
    for key, text in pairs:
        if names.setdefault(key, text) != text:
            raise DataError(f"levels {names[key]!r} and {text!r} share a key: rename one")
    return names


def text_key(text: str) -> float:
    """A text level's key: ``KEY_BITS`` of the BLAKE2b hash of its UTF-8 bytes."""
    import hashlib

    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "little") & ((1 << KEY_BITS) - 1))


def level_key(level) -> float:
    """The key of a level as model.json holds it: text, an integer or a boolean."""
    return text_key(level) if isinstance(level, str) else float(level)


def column_values(arr, categorical: bool, names: dict | None = None) -> np.ndarray:
    """``level_keys`` for a categorical column, ``as_float64`` otherwise."""
    return level_keys(arr, names) if categorical else as_float64(arr)


def check_type(path: str, col: str, t: str, types: dict) -> None:
    """One type (as text: ``double``, ``int64``, …) for ``col`` across the files checked
    with the same ``types``."""
    first = types.setdefault(col, (t, path))
    if first[0] != t:
        raise DataError(f"column '{col}' is {first[0]} in {first[1]} but {t} in {path}")


class ColumnCheck:
    """``check_columns`` file after file, where a schema equal to the last one that passed
    passes at once, with the same types (100,000 files sharing one schema: 3 s of checks).
    ``across``: one type per column across the files too (planning); a task checks each
    of its files alone."""

    def __init__(self, columns, across: bool = True, categorical=(), found=None, text_ok=()):
        self.columns, self.across, self.types = list(columns), across, {}
        self.categorical, self.found, self.text_ok = tuple(categorical), found, tuple(text_ok)
        self._last = None  # (schema, its columns' types as text)

    def __call__(self, path: str, schema: pa.Schema) -> list[str]:
        """The columns' types (``double``, ``int64``, …), once the file passes."""
        last = self._last
        if last is None or not (schema is last[0] or schema.equals(last[0])):
            check_columns(path, schema, self.columns, self.types if self.across else {}, self.categorical,
                          self.found, self.text_ok)
            last = self._last = (schema, [str(schema.field(c).type) for c in self.columns])
        return last[1]


_task_checks: dict[tuple, ColumnCheck] = {}  # read columns → the check of this process's tasks


def _row_group_tables(pf, chunk, spec):
    """The chunk's rows as tables in file order, filtered and on one side of the holdout:
    a row group at a time, or ``BATCH_ROWS`` at a time for one larger than
    ``spec.stream_above`` (so a worker's memory is bounded by a batch of rows, not by the
    row groups a file was written with). Same rows, same bits either way."""
    columns = list(spec.columns)
    read = columns + [f[0] for f in spec.row_filters if f[0] not in columns]
    if chunk.row_groups is None:  # planned from the listing: all of it, checked here
        key = (tuple(read), spec.categorical)
        check = _task_checks.get(key) or _task_checks.setdefault(key, ColumnCheck(read, False, spec.categorical))
        check(chunk.path, pf.schema_arrow)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        row_groups, first_rows = range(len(sizes)), list(itertools.accumulate(sizes, initial=0))
        if chunk.rows is not None and sum(sizes) - len(chunk.deleted) // 8 != chunk.rows:
            raise DataError(f"{chunk.path}: holds {sum(sizes)} rows but the table's log says "
                            f"{chunk.rows + len(chunk.deleted) // 8}; the log does not describe this file")
    else:
        row_groups, first_rows = chunk.row_groups, chunk.first_rows or (0,) * len(chunk.row_groups)
    deleted = np.frombuffer(chunk.deleted, dtype=np.int64) if chunk.deleted else None
    for rg, first in zip(row_groups, first_rows if spec.holdout or deleted is not None else (0,) * len(row_groups)):
        try:
            if pf.metadata.row_group(rg).total_byte_size <= spec.stream_above:
                yield _filtered(pf.read_row_group(rg, columns=read), spec, chunk.file_id, first, deleted)
                continue
            at = first
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=read, use_threads=False):
                yield _filtered(pa.Table.from_batches([batch]), spec, chunk.file_id, at, deleted)
                at += batch.num_rows
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(f"{chunk.path}: cannot read row group {rg} ({_first_line(e)})") from None


#: A pack's files on an object store are fetched whole, this many at once (as footers are
#: read on the client) and at most ``PREFETCH_BYTES`` ahead: each small file is a request
#: whose latency, not its bytes, is the cost (2,000 files of 100 rows at 30 ms a request:
#: 63 s one after another, 2.3 s 16 at a time; 20,000 files: 22 s 16 at a time, 14 s 64).
PREFETCH_FILES = 64
PREFETCH_BYTES = 64 * 2**20


class Fetched:
    """One file of a pack with its bytes, fetched ahead (``pack_files``): read as its
    ``Chunk`` would be, from memory."""

    __slots__ = ("chunk", "data")

    def __init__(self, chunk, data: bytes):
        self.chunk, self.data = chunk, data

    @property
    def pieces(self):
        return (self,)

    def __getattr__(self, name):  # path, rows, row_groups, …: the chunk's
        return getattr(self.chunk, name)


def pack_files(pack, spec):
    """The files of a ``Pack`` one by one, each a chunk of its own: on an object store as
    ``Fetched`` bytes, ``PREFETCH_FILES`` in flight (a task that needs a result per file,
    e.g. a refit's statistics, still fetches its files together)."""
    if spec.protocol in ("file", "local"):
        yield from pack.pieces
        return
    for piece, data in _prefetched(pack.pieces, spec):
        yield Fetched(piece, data)


def _chunk_tables(chunk, spec):
    """``_row_group_tables`` of every file of a chunk (one file, or a ``Pack`` of
    several), in order, each file open only while its rows are read; a local pack of
    whole files read as they are, by polars where it can (``_pack_table``)."""
    if len(chunk.pieces) > 1:
        table = _pack_table(chunk, spec)
        if table is not None:
            yield table
            return
    for piece in pack_files(chunk, spec) if len(chunk.pieces) > 1 else chunk.pieces:
        if isinstance(piece, Fetched):
            yield from _row_group_tables(_parquet_file(pa.BufferReader(piece.data), piece.path), piece.chunk, spec)
            continue
        check_unchanged(piece)
        with open_file(piece.path, spec.protocol, spec.storage_options) as fh:
            check_opened(piece, fh)
            pf = _parquet_file(fh, piece.path, piece.row_groups, spec.stream_above)
            yield from _row_group_tables(pf, piece, spec)


def _polars():
    """polars (a dependency), or None where it cannot be imported: then packs are read
    file by file with pyarrow, to the same bits."""
    try:
        import polars
    except ImportError:
        return None
    return polars


def _pack_table(pack, spec):
    """A local pack of small files read in one call of polars' Parquet reader: their
    rows in file order, the same values as reading them one by one (so the same bits),
    in a quarter of the time (measured, one thread: 0.11 ms a 100-row file, against
    0.39 ms for pyarrow's per-file open and read). Only for what needs nothing per file
    (whole files, no deletions, row filters or holdout) and fits where a row group would
    be decoded whole (``_decoded_bytes``); and None — read file by file,
    which also names a culprit — where polars is missing or refuses them (a column gone,
    types that differ between files), or where a column comes back other than numeric."""
    pl = _polars()
    if (pl is None or spec.categorical or spec.protocol not in ("file", "local") or spec.row_filters or spec.holdout
            or any(p.deleted or (p.rows is not None and p.row_groups is None) for p in pack.pieces)
            or _decoded_bytes(pack, spec) > spec.stream_above):
        return None
    for piece in pack.pieces:
        check_unchanged(piece)
    read = list(spec.columns)
    try:
        table = pl.read_parquet([p.path for p in pack.pieces], columns=read, glob=False, hive_partitioning=False,
                                missing_columns="raise").rechunk().to_arrow()
    except Exception:  # noqa: BLE001 - polars' many error types: the file-by-file read names it
        return None
    try:  # files planned from the listing are checked by their task: text read as text is refused
        check_columns(pack.pieces[0].path, table.schema, read, {})
    except DataError:
        return None
    want = sum(p.rows for p in pack.pieces if p.rows is not None)
    if all(p.rows is not None for p in pack.pieces) and table.num_rows != want:
        return None
    return table


def _decoded_bytes(pack, spec) -> int:
    """About what a pack's rows take decoded (float64; a file of unknown rows at 8 × its
    size on disk): a pack read in one call is in memory at once, so it may be no larger
    than a row group the workers decode whole (``stream_above``); a larger one is read a
    row group at a time, file by file."""
    k = len(spec.columns)
    return sum(p.rows * 8 * k if p.rows is not None else 8 * (p.size or 0) for p in pack.pieces)


def check_opened(piece, opened) -> None:
    """An object read again must be the one the run planned: another ETag than the
    listing's (from what opening it fetched: ``opened.details``, no extra request) is one
    line naming it."""
    ident = getattr(piece, "ident", None)
    if not ident or ident[0] != "etag":
        return
    details = getattr(opened, "details", None) or {}
    now = details.get("ETag") or details.get("etag")
    if now is not None and str(now) != ident[1]:
        raise DataError(f"{piece.path}: changed during the run (its ETag is {now}, was {ident[1]} when it "
                        "was planned): the model would match neither version; rerun once the data stays put")


def check_unchanged(piece) -> None:
    """A local file read again (every epoch of a stream run without cache) must be the
    file the run planned: another size, mtime, ctime or inode is one line naming it."""
    ident = getattr(piece, "ident", None)
    if not ident or ident[0] == "etag":
        return
    try:
        st = os.stat(piece.path)
    except OSError as e:
        raise DataError(f"{piece.path}: gone during the run ({e.strerror or e})") from None
    now = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if now != tuple(ident):
        what = [name for name, a, b in zip(("size", "mtime", "ctime", "inode"), ident, now) if a != b]
        raise DataError(f"{piece.path}: changed during the run ({', '.join(what)} differ from when it was "
                        "planned): the model would match neither version; rerun once the data stays put")


_pools: dict = {}
_pools_lock = threading.Lock()


def _pool(name: str, threads: int):
    """This process's pool ``name`` of ``threads`` threads, made and started on first use
    and kept; a worker makes its pools as it starts (``worker.WorkerSetup``). Starting a
    thread from a task can deadlock a dask worker (CPython 3.11): its profiler's
    ``sys._current_frames`` holds the interpreter's thread list while a garbage
    collection under it runs distributed's GC callback, which lets go of the GIL; the
    thread being started holds the GIL while it waits for that list (seen with a pool
    per task: 100,000 files at 30 ms hung both workers after a minute)."""
    with _pools_lock:
        if name not in _pools:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(threads, thread_name_prefix=f"gd-dask-{name}")
            # Start every thread now: each waits for all the others, so none is reused.
            everyone = threading.Barrier(threads)
            for f in [pool.submit(everyone.wait, 60) for _ in range(threads)]:
                f.result()
            _pools[name] = pool
        return _pools[name]


def _fetcher():
    """The threads that fetch a task's small files from an object store."""
    return _pool("fetch", PREFETCH_FILES)


#: Threads that decode a task's next row group while it works on the current one (the
#: 3.4 GB job on 2 workers: 2.9 s → 2.6 s). A few, for workers of several threads.
READ_AHEAD_THREADS = 4
#: A pack's files are read ahead only when they average this size on disk or more: a
#: small file's table is decoded in less time than handing it between threads costs
#: (2,000 files of 100 rows: 0.57 ms a file read ahead, 0.50 ms not).
READ_AHEAD_MIN_BYTES = 2**20


def _reader():
    return _pool("ahead", READ_AHEAD_THREADS)


def _read_ahead(tables):
    """``tables`` (a generator) with the next one decoded on another thread while the
    caller works on the current one: same tables, same order. At most one more is
    decoded than the caller holds."""
    pool = _reader()
    job = pool.submit(next, tables, None)
    try:
        while True:
            table = job.result()
            if table is None:
                return
            job = pool.submit(next, tables, None)
            yield table
    finally:  # an error or an early stop: let the pending read end before closing the generator
        try:
            job.result()
        except BaseException:  # noqa: BLE001 - the caller's own error is the one to report
            pass
        tables.close()


def _prefetched(pieces, spec):
    """(piece, the file's bytes) in order, fetched ``PREFETCH_FILES`` at a time."""
    from collections import deque

    fs = fsspec.filesystem(spec.protocol, **(spec.storage_options or {}))

    def fetch(path):
        try:
            return fs.cat_file(path)
        except Exception as e:  # noqa: BLE001 - object stores fail in many types
            raise DataError(f"{path}: cannot read ({_first_line(e)})") from None

    pool = _fetcher()
    ahead, ahead_bytes, todo = deque(), 0, iter(pieces)
    nxt = next(todo, None)
    try:
        while ahead or nxt is not None:
            while nxt is not None and len(ahead) < PREFETCH_FILES and (
                    not ahead or ahead_bytes + nxt.size <= PREFETCH_BYTES):
                ahead.append((nxt, pool.submit(fetch, nxt.path)))
                ahead_bytes += nxt.size
                nxt = next(todo, None)
            piece, job = ahead.popleft()
            ahead_bytes -= piece.size
            yield piece, job.result()
    finally:  # an error, or a reader that stopped early: no more fetches for this chunk
        for _, job in ahead:
            job.cancel()


def holdout_rows(seed: int, file_id: int, first_row: int, n: int, fraction: float) -> np.ndarray:
    """Whether each of rows ``first_row … first_row + n − 1`` of a file is held out:
    SplitMix64 of (seed, file, row index) as a uniform number in [0, 1), below ``fraction``."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) ^ (np.uint64(file_id) * np.uint64(0xD1B54A32D192ED03))
        z = np.arange(first_row, first_row + n, dtype=np.uint64) + x
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


#: The default ``ReadSpec.stream_above``: row groups larger than this (bytes in the file)
#: are read through a small buffered stream instead of a memory map. The pages of a
#: mapped 174 MB row group all count in the worker's memory (measured RSS: 338 MiB
#: mapped, 196 MiB buffered, reading 8192 rows at a time), and distributed kills a worker
#: past its limit. A job sets it from its workers' memory (``stream_above_for``). With
#: the next row group decoded ahead on another thread, streaming costs about what
#: decoding whole does (20 files of 1M rows × 21 columns, one 174 MB row group each, on
#: two 6 GB one-thread workers: the moments pass 2.9–3.3 s either way).
LARGE_ROW_GROUP = 32 * 2**20
#: The buffered stream's read size for large row groups.
STREAM_BUFFER = 2**20


#: Local files at least this large are memory-mapped; smaller ones are read through a
#: plain file (mapping and unmapping a 3 KiB file cost more than reading it: 100-row files
#: read in 0.34 ms instead of 0.43 ms each).
MMAP_MIN_BYTES = 2**20


def _parquet_file(fh, path, row_groups=(), stream_above: int = LARGE_ROW_GROUP):
    """An open ``ParquetFile``. A local path (a str) is memory-mapped: pages decode
    straight from the page cache instead of being copied into read buffers first
    (measured: 0.022 vs 0.025–0.036 s per 36 MB chunk) — unless the file is smaller than
    ``MMAP_MIN_BYTES``, then read plainly, or one of ``row_groups`` is larger than
    ``stream_above``, then it is streamed page by page. (A path given to pyarrow as a
    str is resolved through a filesystem, 0.14 ms a file: opened here instead.)"""
    try:
        if not isinstance(fh, str):
            return pq.ParquetFile(fh)
        pf = pq.ParquetFile(local_file(fh))
        if row_groups is None:  # every row group
            row_groups = range(pf.metadata.num_row_groups)
        if row_groups:
            largest = max(pf.metadata.row_group(rg).total_byte_size for rg in row_groups)
            if largest > stream_above:
                pf = pq.ParquetFile(fh, memory_map=False, buffer_size=STREAM_BUFFER, pre_buffer=False)
        return pf
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read ({_first_line(e)})") from None


def local_file(path: str):
    """A local file as an Arrow file: memory-mapped from ``MMAP_MIN_BYTES`` on."""
    return pa.memory_map(path) if os.path.getsize(path) >= MMAP_MIN_BYTES else pa.OSFile(path)


#: Workers with at least this memory limit read on mimalloc and keep Arrow's freed
#: buffers between chunks (``set_memory_limit``); smaller ones, and processes of unknown
#: limit, read on jemalloc and give the buffers back after every chunk.
LARGE_WORKER_BYTES = 4 * 2**30


def fast_pool_name(memory_limit: int | None = None) -> str:
    """Arrow's pool for gd_dask's reads in a process of ``memory_limit``.

    - Large workers (``LARGE_WORKER_BYTES`` and up): mimalloc, keeping freed buffers.
      On the 3.4 GB job (20 files of one 174 MB row group), the moments pass on two 6 GB
      ``dask worker`` processes took 2.5–3.2 s; jemalloc took 5.3–6.6 s and system 9 s.
      Embedded, 2.7 s against 3.7–4.3 s.
    - Smaller or unknown: jemalloc, giving buffers back after every chunk, as in session
      10. On 300 MiB workers mimalloc peaked close to distributed's pause threshold (80 %),
      and `test_scale`'s stream run stayed paused.

    Where a pool is missing, the other one; else the system's."""
    large = memory_limit is not None and memory_limit >= LARGE_WORKER_BYTES
    for name in (("mimalloc", "jemalloc") if large else ("jemalloc", "mimalloc")):
        try:
            getattr(pa, f"{name}_memory_pool")()
            return name
        except NotImplementedError:
            continue
    return "system"


def use_fast_pool(memory_limit: int | None = None) -> None:
    """Make ``fast_pool_name(memory_limit)`` this process's default Arrow pool (buffers
    already allocated stay with the pool that made them)."""
    pa.set_memory_pool(getattr(pa, f"{fast_pool_name(memory_limit)}_memory_pool", pa.system_memory_pool)())


#: A worker's process gives Arrow's freed buffers back to the OS once it holds more than
#: this share of its memory limit. distributed pauses a worker at 0.8 of it, and a chunk's
#: decoding on top of kept buffers crossed that at 0.5 on 300 MiB workers (249 MiB, paused
#: for good); a 6 GB worker of the 3.4 GB job peaks at 464 MiB, far below either.
RELEASE_SHARE = 0.25
#: Bytes of resident memory above which ``_release_arrow_memory`` releases; None: always
#: (outside a worker, or one without a limit). Set per process by ``set_memory_limit``.
_release_above: float | None = None


def set_memory_limit(limit: int | None) -> None:
    """The memory limit of the worker this process runs (``runtime.worker.set_up``):
    a large one keeps freed buffers below ``RELEASE_SHARE`` of it (``fast_pool_name``)."""
    global _release_above
    _release_above = RELEASE_SHARE * limit if limit and limit >= LARGE_WORKER_BYTES else None


def _release_arrow_memory() -> None:
    """Give Arrow's freed buffers back to the OS where the process is large: its pools keep
    them otherwise, and a worker near its memory limit is paused by distributed. Not
    after every chunk regardless: buffers mapped anew cost a page fault per 4 KiB, about
    as much as decoding them in a virtual machine (the 3.4 GB job on two 6 GB workers:
    5.5 s releasing after each chunk, 2.2 s keeping them)."""
    if _release_above is not None:
        import psutil

        if psutil.Process().memory_info().rss < _release_above:
            return
    pa.default_memory_pool().release_unused()


def read_block(chunk, spec):
    """Read one chunk (``source.Chunk``, read as ``source.ReadSpec`` says) as a float64
    array of shape (rows, len(columns)).

    Runs inside a worker task. With ``missing: drop`` rows holding NaN/inf/null are
    dropped here; with ``error`` they are kept for the client to report.
    """
    columns = spec.columns
    tables = _chunk_tables(chunk, spec)
    if spec.row_filters or spec.holdout or chunk.rows is None:  # rows unknown until read
        tables = list(tables)
        total = sum(t.num_rows for t in tables)
    else:
        total = sum(piece.rows for piece in chunk.pieces)
    # Column-major: each column is a contiguous copy from Arrow (row-major costs 40×
    # as much in strided writes); NumPy and BLAS take either order. Unfiltered, batch
    # by batch, so Arrow holds one decoded batch at a time.
    out = np.empty((total, len(columns)), dtype=np.float64, order="F")
    lo = 0
    for table in tables:
        for j, col in enumerate(columns):
            at = lo
            for part in table.column(col).chunks:
                out[at:at + len(part), j] = column_values(part, col in spec.categorical)
                at += len(part)
        lo += table.num_rows
    table = tables = None  # let go of Arrow's buffers before returning them
    _release_arrow_memory()
    if spec.weight is not None:
        check_weights(out[:, columns.index(spec.weight)], spec.weight, chunk_where(chunk))
    if spec.missing == "drop":
        good = np.isfinite(out).all(axis=1)
        if not good.all():
            return out[good]
    # With missing: error the values stay: they make the moments non-finite, and only then
    # does ``count_nonfinite`` find them, in file order, for a deterministic message.
    return out


def check_weights(w, column: str, where: str) -> None:
    """Sample weights must not be negative (as scikit-learn's LinearRegression says): one
    line naming the column, the count, a value and the file. NaN follows ``missing``."""
    bad = w < 0
    if bad.any():
        raise DataError(f"{where}: weight column '{column}' has {int(bad.sum())} negative values (e.g. "
                        f"{float(w[np.flatnonzero(bad)[0]]):g}); sample weights must be 0 or more")


def chunk_where(chunk) -> str:
    """What an error names for a chunk: its file, a pack's first file, or a partition."""
    path = getattr(chunk, "path", None)
    if isinstance(path, str):
        return path
    pieces = getattr(chunk, "pieces", None)
    return pieces[0].path if isinstance(pieces, (list, tuple)) and pieces else "a dask DataFrame partition"


def as_float64(arr) -> np.ndarray:
    """An Arrow column (or chunk) as float64: a zero-copy view for one float64 chunk
    without nulls; ints, bools and decimals cast by Arrow; nulls become NaN.

    A view of the values buffer rather than ``to_numpy``, which imports pandas (0.35 s
    of a small job's whole command, paid by every fresh worker)."""
    if isinstance(arr, pa.ChunkedArray):
        if arr.num_chunks == 1:
            return as_float64(arr.chunk(0))
        return np.concatenate([as_float64(c) for c in arr.chunks]) if arr.num_chunks else np.empty(0)
    if len(arr) == 0:
        return np.empty(0)
    if arr.type != pa.float64():
        arr = arr.cast(pa.float64())
    if arr.null_count:
        arr = _pc().fill_null(arr, np.nan)
    return np.frombuffer(arr.buffers()[1], dtype=np.float64, count=len(arr), offset=arr.offset * 8)


def read_slices(chunk, spec, *, rows: int, shifted: bool = False, names: dict | None = None):
    """The slices of ``rows`` rows that ``gradient.block_slices(read_block(...))`` would
    give, without ever building the block: one row group is decoded at a time and copied
    slice by slice into one small reused buffer. So a pass that only adds up over rows
    needs memory for one row group, and never touches freshly mapped pages for a whole
    chunk.

    ``shifted``: yield ``(slice − shift, shift)`` instead, with ``shift`` the mean of the
    first slice, subtracted while copying (``gradient.block_slices_shifted`` of the block,
    to the bit).

    Categorical columns (``spec.categorical``) come as their level keys
    (``level_keys``); ``names``, if given, collects the text of the keys seen.

    Each slice is a view of the same buffer: use it before asking for the next.
    """
    columns, k = list(spec.columns), len(spec.columns)
    buf = np.empty((rows, k), dtype=np.float64, order="F")
    fill, shift, emitted = 0, None, False

    def first_slice():
        nonlocal shift
        shift = buf[:fill].mean(axis=0) if fill else np.zeros(k)
        buf[:fill] -= shift

    def emit(z):
        return (z, shift) if shifted else z

    tables = _chunk_tables(chunk, spec)
    pieces = chunk.pieces
    if len(pieces) == 1 or sum(p.size for p in pieces) >= READ_AHEAD_MIN_BYTES * len(pieces):
        tables = _read_ahead(tables)
    else:
        tables = _coalesced(tables, rows)
    for table in tables:
        for batch in table.select(columns).to_batches():
            arrays = [column_values(col, name in spec.categorical, names)
                      for name, col in zip(batch.schema.names, batch.columns)]
            if spec.weight is not None:
                check_weights(arrays[columns.index(spec.weight)], spec.weight, chunk_where(chunk))
            if spec.missing == "drop" and batch.num_rows:
                good = np.logical_and.reduce([np.isfinite(a) for a in arrays])
                if not good.all():
                    arrays = [a[good] for a in arrays]
            n, pos = arrays[0].shape[0], 0
            while pos < n:
                take = min(rows - fill, n - pos)
                for j, a in enumerate(arrays):
                    if shift is None:
                        buf[fill:fill + take, j] = a[pos:pos + take]
                    else:
                        np.subtract(a[pos:pos + take], shift[j], out=buf[fill:fill + take, j])
                fill, pos = fill + take, pos + take
                if fill == rows:
                    if shifted and shift is None:
                        first_slice()
                    yield emit(buf)
                    fill, emitted = 0, True
        table = batch = arrays = None  # this row group's Arrow buffers can go
    _release_arrow_memory()
    if fill or not emitted:  # the last partial slice, or an empty chunk's one empty slice
        if shifted and shift is None:
            first_slice()
        yield emit(buf[:fill])


def _coalesced(tables, rows: int):
    """``tables`` with runs of small ones of one schema joined into one table of at least
    ``rows`` rows (the last run may be shorter): a pack of 100-row files is converted and
    copied a slice at a time, not a file at a time (0.1 ms a file). Same rows, same order,
    same values."""
    run, n = [], 0
    for table in tables:
        if run and not table.schema.equals(run[0].schema):
            yield _joined(run)
            run, n = [], 0
        run.append(table)
        n += table.num_rows
        if n >= rows:
            yield _joined(run)
            run, n = [], 0
    if run:
        yield _joined(run)


def _joined(tables):
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables).combine_chunks()


class NativePath:
    """Context manager yielding a local path as is: pyarrow's own file reader is
    faster than a Python file object (no GIL round trips per read)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        return False


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def open_file(path, protocol, storage_options):
    if protocol in ("file", "local"):
        return NativePath(path)
    return fsspec.filesystem(protocol, **(storage_options or {})).open(path, "rb")


def count_nonfinite(block) -> np.ndarray:
    """NaN/±inf count per column of one block, shape (n_columns,)."""
    return (~np.isfinite(block)).sum(axis=0)


def _row_mask(table: pa.Table, row_filters):
    pc = _pc()
    mask = None
    for col, op, value in row_filters:
        arr = table.column(col)
        if op in ("in", "not in"):
            vals = pa.array(value if isinstance(value, (list, tuple)) else [value])
            m = pc.is_in(arr, value_set=vals)
            m = pc.invert(m) if op == "not in" else m
        else:
            fn = {"=": pc.equal, "==": pc.equal, "!=": pc.not_equal, "<": pc.less,
                  "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}[op]
            m = fn(arr, pa.scalar(value))
        mask = m if mask is None else pc.and_(mask, m)
    return pc.fill_null(mask, False)
