"""What gd_dask sets up in every dask worker it runs on (``cluster.connect``), present
and future: registered once under one name, so each run replaces it rather than adding
another."""

from __future__ import annotations

from distributed import WorkerPlugin


class WorkerSetup(WorkerPlugin):
    """In each worker, on its event loop's thread:

    - Arrow's fast memory pool (``data.read.fast_pool_name``). A worker started by
      ``dask worker`` has pyarrow's default, mimalloc: the 3.4 GB job's training took
      3.1 s there, 2.5 s on jemalloc. (Embedded workers also get it from ``WORKER_ENV``.)
    - The threads that fetch a task's small files from an object store
      (``data.read._fetcher``), started here rather than in a task: starting a thread
      in a task can deadlock with the worker's profiler (see ``_fetcher``).
    """

    name = "gd-dask-worker-setup"

    def setup(self, worker):
        from gd_dask.data.read import _fetcher, use_fast_pool

        use_fast_pool()
        _fetcher()
