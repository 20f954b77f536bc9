"""What gd_dask sets up in every dask worker it runs on, as the worker starts: embedded
workers through their preload (``cluster.WORKER_PRELOAD`` calls ``dask_setup``), the
workers of a cluster given by address through a plugin (``WorkerSetup``, registered by
``cluster.connect`` under one name, so each run replaces it rather than adding one)."""

from __future__ import annotations

from distributed import WorkerPlugin


def set_up(worker=None) -> None:
    """In this worker, on its event loop's thread:

    - Arrow's pool for its memory limit (``data.read.fast_pool_name``), whatever pool
      the environment gave the worker.
    - The threads that fetch a task's small files from an object store and decode its
      next row group (``data.read._fetcher``, ``_reader``), started here rather than in
      a task: starting a thread in a task can deadlock with the worker's profiler (see
      ``data.read._pool``).
    - One thread for polars' pool (``POLARS_MAX_THREADS``, read when polars is first
      imported) unless set: the worker's own threads are the parallelism, a pool of all
      cores in each would oversubscribe them.
    - The worker's memory limit, below which a task keeps Arrow's freed buffers for the
      next (``data.read.set_memory_limit``).
    - glibc's main arena for every thread (``allocator.one_arena``), where the nanny set
      MALLOC_TRIM_THRESHOLD_.
    """
    import os

    from gd_dask.data.read import _fetcher, _reader, set_memory_limit, use_fast_pool
    from gd_dask.runtime.allocator import one_arena

    one_arena()

    os.environ.setdefault("POLARS_MAX_THREADS", "1")

    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    set_memory_limit(limit)
    use_fast_pool(limit)
    _fetcher()
    _reader()


class WorkerSetup(WorkerPlugin):
    """``set_up`` in every worker of a cluster, present and future."""

    name = "gd-dask-worker-setup"

    def setup(self, worker):
        set_up(worker)


def dask_setup(worker):
    """Called by distributed in each embedded worker as it starts, this module being its
    preload (``cluster.WORKER_PRELOAD``): the read path and kernels imported now, so the
    first pass does not wait on them, and ``set_up``."""
    import gd_dask.runtime.executor  # noqa: F401

    set_up(worker)
