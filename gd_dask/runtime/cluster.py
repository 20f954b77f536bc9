"""A dask client: an embedded LocalCluster by default, or an existing scheduler.

The job only ever closes what it started: with an address or a scheduler file it closes
its client, never the cluster.
"""

from __future__ import annotations

import contextlib
import logging

from ..version import __version__
from ..data.read import fast_pool_name
from ..errors import ClusterError, first_line as _first_line
from .waiting import set_timeout

log = logging.getLogger(__name__)

#: Packages whose versions must agree between the client and every worker.
MATCHED = ("gd_dask", "dask", "distributed")


def _probe():
    """A function shipped by value (not by reference to gd_dask), so it runs on a worker
    that lacks gd_dask and reports what the worker has."""
    def probe():
        import importlib

        out = {}
        for name in ("gd_dask", "dask", "distributed"):
            try:
                out[name] = importlib.import_module(name).__version__
            except Exception as e:  # noqa: BLE001 - report, never fail the probe
                out[name] = f"missing ({type(e).__name__})"
        return out
    return probe


def check_workers(client, timeout: float, where: str) -> None:
    """Every worker of a remote cluster can run gd_dask's tasks: at least one worker
    within ``timeout``, and the same gd_dask, dask and distributed versions as here
    (a worker without gd_dask used to die on each task while the client waited)."""
    import concurrent.futures
    import importlib

    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError):
        raise ClusterError(f"dask scheduler at {where} has no workers (waited {timeout:g}s, cluster.timeout); "
                           "start some with: dask worker <address>") from None
    mine = {name: importlib.import_module(name).__version__ for name in MATCHED}
    mine["gd_dask"] = __version__
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(client.run, _probe())
        try:
            theirs = job.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise ClusterError(f"the workers of {where} did not answer a version check within {timeout:g}s") from None
    for worker, versions in sorted(theirs.items()):
        for name in MATCHED:
            if versions.get(name) != mine[name]:
                raise ClusterError(
                    f"worker {worker} has {name} {versions.get(name)}, this client {mine[name]}: install the same "
                    f"versions of {', '.join(MATCHED)} where the workers run (see README, Running on a cluster)")


def _set_up_workers(client, where: str) -> None:
    """gd_dask's worker plugin (``worker.WorkerSetup``) in this and future workers."""
    from .worker import WorkerSetup

    try:
        client.register_plugin(WorkerSetup())
    except Exception as e:  # noqa: BLE001 - raised on the workers, in many types
        raise ClusterError(f"cannot set up the workers of {where} ({_first_line(e)}): they must run the same "
                           "gd_dask as this client (see README, Running on a cluster)") from None


def _seconds(timeout) -> float:
    if isinstance(timeout, (int, float)):
        return float(timeout)
    from dask.utils import parse_timedelta

    return float(parse_timedelta(timeout))


def _security(tls):
    if not (tls.ca_file or tls.cert or tls.key):
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=tls.ca_file,
        tls_client_cert=tls.cert,
        tls_client_key=tls.key,
        require_encryption=True,
    )


#: Environment of embedded worker processes, set before they start (``local_cluster``):
#: Arrow picks its memory pool when it loads, so the nanny's ``env``, applied after the
#: main module's imports, can come too late.
WORKER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": fast_pool_name()}


#: Modules embedded workers import as they start: ``gd_dask.runtime.worker`` imports the read
#: path and the kernels (pyarrow.parquet…), so the first pass does not wait on them, the
#: workers importing in parallel while the cluster starts, and sets each worker up
#: (``worker.dask_setup``).
WORKER_PRELOAD = ("gd_dask.runtime.worker",)


def local_cluster(**kwargs):
    """A LocalCluster whose worker processes start with ``WORKER_ENV`` and import
    ``WORKER_PRELOAD``."""
    import dask
    from distributed import LocalCluster

    pre_spawn = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENV.items()}
    with dask.config.set(pre_spawn):
        kwargs.setdefault("preload", list(WORKER_PRELOAD))
        return LocalCluster(**kwargs)


#: ``cluster.processes: auto`` runs embedded workers as threads when the data, as float64
#: blocks, is at most this fraction of the machine's memory: such a job fits whatever it
#: caches, and spawning workers (1 s) and their first pass cold (0.4 s) were most of a
#: small job's whole command.
THREADS_DATA_FRACTION = 0.25
#: ... and it has at most this many files, unless polars reads its packs of small files
#: (local files, ``data.read._pack_table``; polars' reader lets go of the GIL). Reading a
#: file with pyarrow holds the GIL for about 0.5 ms (its per-file Python and setup), so
#: threads read small files one at a time: 100,000 files of 100 rows took 60 s on 2
#: threads, 49 s with 2 worker processes, start-up included; on 2 cores processes pay
#: off from about 6,000 files. With polars, 20,000 such files train in 3.6-4.0 s on
#: threads, 5.3-5.9 s on processes (whole command).
THREADS_MAX_FILES = 5000


def use_processes(settings, data=None) -> bool:
    """Whether the embedded cluster's workers are processes (``cluster.processes``);
    ``data``: the ``ParquetSource`` to read (unknown: processes)."""
    if settings.processes != "auto":
        return settings.processes
    if settings.memory_limit != "auto" or data is None or data.nbytes is None:
        return True  # a limit the user set is for the nannies to enforce
    from .threads import system_memory

    if data.nbytes > THREADS_DATA_FRACTION * system_memory():
        return True
    return len(data.files) > THREADS_MAX_FILES and not _polars_reads_packs(data)


def _polars_reads_packs(data) -> bool:
    """Whether the data's packs of small files are read by polars, off the GIL: local
    files (a refit's window reads each file alone, for its statistics: pyarrow)."""
    from ..data.read import _polars

    return getattr(data, "protocol", None) in ("file", "local") and _polars() is not None


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS on one thread in this process for the run, as it is in worker processes
    (distributed's nanny sets OPENBLAS_NUM_THREADS=1 and friends). Where workers are
    threads of this process: no oversubscription, the same kernels as process workers.
    On any cluster: the client's own linear algebra (the categorical reduction over
    thousands of groups, the levels' recovery) gives the same bits whether or not the
    workers share its process; threaded BLAS splits such products differently (the last
    bit of b and of every level differed between the embedded cluster and `dask worker`s)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def _fast_pool():
    """Arrow's fast pool (``data.read.fast_pool_name``) while workers are threads of this
    process, as worker processes have it (``WORKER_ENV``); the caller's pool after."""
    import pyarrow as pa

    from ..data.read import use_fast_pool

    before = pa.default_memory_pool()
    use_fast_pool()
    try:
        yield
    finally:
        pa.set_memory_pool(before)


def quiet_distributed(level: int = logging.CRITICAL) -> None:
    """distributed configures its loggers at import; keep them quiet unless -vv.

    What goes wrong in the cluster reaches the user as gd-dask's own one line (``compute``);
    distributed's tracebacks (a lost scheduler, shutdown races) are for -vv.
    """
    if logging.getLogger("gd_dask").getEffectiveLevel() <= logging.DEBUG:
        return
    # distributed's config gives some of its loggers levels of their own: set them all.
    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in ("distributed", "tornado", "bokeh")]
    for name in {"distributed", "tornado", "bokeh", *names}:
        logging.getLogger(name).setLevel(level)
    logging.getLogger("distributed.batched").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def connect(settings, address: str | None = None, data=None):
    """Yield a ``distributed.Client`` for the run: the scheduler at ``address`` (or the
    config's address or scheduler file), else an embedded cluster of threads or of
    worker processes (``use_processes``).

    Parameters
    ----------
    settings : ClusterConfig
    address : str, optional
        ``--scheduler`` from the command line; wins over the config.
    data : ParquetSource, optional
        The data the job reads, for ``cluster.processes: auto`` (its size as float64
        blocks and its number of files: ``nbytes`` and ``files``, as a refit's
        ``WindowSize`` has them too); unknown: processes.
    """
    address = address or settings.address
    if address or settings.scheduler_file:
        opened = _remote(settings, address)
    elif use_processes(settings, data):
        opened = _local_processes(settings)
    else:
        opened = _threads(settings)
    with _one_blas_thread(), opened as client:
        yield client


@contextlib.contextmanager
def _remote(settings, address: str | None):
    """A client of a running scheduler, its workers checked and set up."""
    from distributed import Client

    quiet_distributed()
    timeout = _seconds(settings.timeout)
    where = address or f"scheduler file {settings.scheduler_file}"
    tls = settings.tls
    if address and address.startswith("tls://") and not (tls.ca_file and tls.cert and tls.key):
        raise ClusterError(f"cannot connect to dask scheduler at {address}: a tls:// address needs "
                           "cluster.tls.ca_file, cluster.tls.cert and cluster.tls.key")
    try:
        client = Client(address=address, scheduler_file=None if address else settings.scheduler_file,
                        timeout=timeout, security=_security(settings.tls), set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"cannot reach dask scheduler at {where} within {timeout:g}s ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - TLS and address errors come in many types
        raise ClusterError(f"cannot connect to dask scheduler at {where}: {_first_line(e)}") from None
    log.info("connected to %s; dashboard: %s", where, client.dashboard_link)
    set_timeout(client, timeout)
    try:
        check_workers(client, timeout, where)
        _set_up_workers(client, where)
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def _threads(settings):
    """The embedded cluster as threads of this process, with Arrow's fast pool as worker
    processes have it (and one BLAS thread: ``connect``)."""
    from .threads import ThreadsClient

    with _fast_pool():
        client = ThreadsClient(settings.n_workers, settings.threads_per_worker)
        log.info("embedded cluster: %d threads of this process (cluster.processes: false or auto)", client.threads)
        try:
            yield client
        finally:
            client.close()


@contextlib.contextmanager
def _local_processes(settings):
    """An embedded LocalCluster of worker processes on loopback (set up by their preload)."""
    from distributed import Client

    quiet_distributed()
    try:
        cluster = local_cluster(
            n_workers=settings.n_workers,
            threads_per_worker=settings.threads_per_worker,
            memory_limit=settings.memory_limit,
            processes=True,
            host="127.0.0.1",  # scheduler and workers listen on loopback only
            dashboard_address=settings.dashboard_address,
            silence_logs=logging.ERROR,
        )
    except Exception as e:  # noqa: BLE001 - start-up failures come in many types
        raise ClusterError(f"cannot start the embedded LocalCluster: {e}") from None
    client = Client(cluster, set_as_default=False)
    set_timeout(client, _seconds(settings.timeout))
    log.info("embedded LocalCluster with %d worker processes; dashboard: %s", settings.n_workers, client.dashboard_link)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
