"""Reading what the footers say, only as much as planning needs: from a ``_metadata``
summary (one read), from the listing alone for many small files (their tasks read their
footers), else each file's footer, many in flight on an object store."""

from __future__ import annotations

import logging
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .read import NativePath, _first_line, is_local

log = logging.getLogger(__name__)

#: What opening a file costs, as bytes of data (float64) it could have read instead, when
#: small files are packed into one task (``source.Pack``): as Spark's openCostInBytes.
#: Measured locally: opening a 100-row file and reading it took 0.9 ms, about the time to
#: read 1 MiB of float64 columns; so a pack holds at most 128 files. Files smaller than
#: this are also those planned from the listing (``listing_plan``).
OPEN_COST_BYTES = 2**20

#: A listing with more than this many files smaller than ``OPEN_COST_BYTES`` is planned
#: from the listing, as Spark plans: their footers are not read on the client (0.2 ms a
#: file locally, a request each on an object store; 100,000 files at 30 ms took 47 s at
#: 64 in flight) but by the task that reads them. The first one's footer is still read,
#: so a config naming a missing column fails before a cluster starts. Below this count
#: every footer is read: exact row counts, each file's columns checked up front.
FOOTERLESS_MIN_FILES = 1000


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
