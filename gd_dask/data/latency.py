"""``latency://``: another filesystem with a fixed delay per request, to measure on one
machine what planning and reading cost against an object store (issue 21).

    data:
      path: latency:///data/lake          # the local folder /data/lake, 30 ms a request
      storage_options: {delay: 0.03}      # target_protocol: file (default), s3, memory, …

Each listing call (``ls``, ``info``) and each range read is one request: reads go through
fsspec's buffered file with its block size and cache, as an s3fs file does, so the
requests counted are those an object store would see. ``requests`` counts them for the
whole process: fsspec keeps an instance per thread, and workers that are threads of the
process read through their own.
"""

from __future__ import annotations

import threading
import time

import fsspec
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

_lock = threading.Lock()


class LatencyFileSystem(AbstractFileSystem):
    """``target_protocol``'s filesystem with ``delay`` seconds added to every request."""

    protocol = "latency"
    requests = 0  # requests made so far in this process, by every instance

    def __init__(self, delay: float = 0.03, target_protocol: str = "file", target_options: dict | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.delay = float(delay)
        self.target = fsspec.filesystem(target_protocol, **(target_options or {}))

    def request(self) -> None:
        """One request: counted, and ``delay`` seconds long."""
        with _lock:
            LatencyFileSystem.requests += 1
        time.sleep(self.delay)

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return path[len("latency://"):] if path.startswith("latency://") else path

    def ls(self, path, detail=True, **kwargs):
        self.request()
        return self.target.ls(path, detail=detail, **kwargs)

    def info(self, path, **kwargs):
        self.request()
        return self.target.info(path, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        """A byte range in one request (one ranged GET, as s3fs's)."""
        self.request()
        return self.target.cat_file(path, start=start, end=end, **kwargs)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise NotImplementedError("latency:// is read-only")
        return _LatencyFile(self, path, mode, block_size=block_size or "default", cache_options=cache_options,
                            **kwargs)


class _LatencyFile(AbstractBufferedFile):
    def _fetch_range(self, start, end):
        self.fs.request()
        with self.fs.target.open(self.path, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start)


fsspec.register_implementation("latency", LatencyFileSystem, clobber=True)
