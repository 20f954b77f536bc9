"""The embedded cluster as threads of this process: dask's threaded scheduler behind the
few ``distributed.Client`` methods gd_dask calls (``compute`` through ``waiting.compute``,
``persist``, ``scheduler_info``, ``close``).

For a job whose data fits comfortably in memory (``cluster.processes: auto``), starting a
scheduler and worker processes was most of the whole command: importing distributed
(0.4 s beyond dask), spawning workers that import the read path again (1 s) and run their
first pass cold (0.4 s). Here the workers are ``n_workers × threads_per_worker`` threads
of a pool that lives as long as the client; Parquet decoding and BLAS release the GIL.
The graphs are the same as on any cluster, so are the bits.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def system_memory() -> int:
    """Bytes of memory this process may use: the machine's, a cgroup limit or RSS rlimit
    if lower (as ``distributed.system.memory_limit`` reckons it, without importing
    distributed), so ``memory_limit: auto`` means here what it means for workers."""
    import psutil

    limit = psutil.virtual_memory().total
    if sys.platform == "linux":
        for path in ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
                     "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.high", "/sys/fs/cgroup/memory.low"):
            try:
                with open(path) as fh:
                    value = int(fh.read())
            except (OSError, ValueError):
                continue
            if value > 0:
                limit = min(limit, value)
    if sys.platform != "win32":
        import resource

        hard = resource.getrlimit(resource.RLIMIT_RSS)[1]
        if 0 < hard < limit:
            limit = hard
    return limit


class ThreadsClient:
    """A client whose cluster is a thread pool in this process.

    Parameters
    ----------
    n_workers, threads_per_worker : int
        The pool has their product of threads.
    """

    status = "running"
    dashboard_link = None
    in_process = True

    def __init__(self, n_workers: int, threads_per_worker: int):
        from concurrent.futures import ThreadPoolExecutor

        self.n_workers = n_workers
        self.threads = n_workers * threads_per_worker
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gd-dask-worker")
        # As LocalCluster splits memory_limit: auto between its workers.
        self.memory_limit = system_memory() // n_workers

    def compute(self, graphs: list) -> list:
        """The results of ``graphs`` (dask collections or delayed), in order."""
        import dask

        return list(dask.compute(*graphs, scheduler=self.pool))

    def persist(self, collection):
        """``collection`` with its blocks computed and held in this process."""
        import dask

        return dask.persist(collection, scheduler=self.pool)[0]

    def scheduler_info(self) -> dict:
        return {"workers": {f"thread-{i}": {"memory_limit": self.memory_limit} for i in range(self.n_workers)}}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
