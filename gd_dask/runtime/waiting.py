"""Bounded waits on a dask cluster: results gathered in slices while the cluster is
watched, so a cluster without workers for ``cluster.timeout``, or a lost scheduler, ends
the wait in one ``ClusterError`` line instead of a hang (the executor's ``compute``)."""

from __future__ import annotations

import contextlib
import time
import warnings
import weakref

from ..errors import ClusterError, first_line as _first_line

#: Seconds between looks at the cluster while a distributed result is awaited.
POLL_SECONDS = 0.5
#: cluster.timeout of each client ``connect`` made: how long a cluster may have no
#: workers before a wait gives up.
_timeouts: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

def compute(client, graphs, *, what: str = "a pass over the data", explain=None):
    """``client.compute(graphs, sync=True)`` with no unbounded wait: a cluster that has
    had no worker for ``cluster.timeout``, or a client that lost its scheduler, ends the
    wait with one ``ClusterError`` line instead of hanging or a page of tracebacks."""
    single = not isinstance(graphs, (list, tuple))
    graphs = [graphs] if single else list(graphs)
    if getattr(client, "in_process", False):  # threads of this process: nothing to lose or wait on
        results = client.compute(graphs)
        return results[0] if single else results
    import asyncio

    with large_graphs_quiet():
        futures = client.compute(graphs)
    address = getattr(client.scheduler, "address", "?")
    # One gather on the client's event loop, awaited here in slices. Its deadline is ours,
    # not the loop's: ``Future.result(timeout=)`` cancels the gather when it times out, and
    # distributed shares a pending gather between callers, so the next result() could
    # await a cancelled one (on Python 3.11 that surfaced as distributed's sync() raising
    # UnboundLocalError). The gather also outlives a worker lost after its task finished:
    # dask recomputes the key and the gather waits for it, while we watch the cluster.
    job = asyncio.run_coroutine_threadsafe(_gather(client, futures), client.loop.asyncio_loop)
    try:
        results = _await(job, client, address, what)
    except BaseException as e:  # Ctrl-C and SIGTERM too: stop gathering
        job.cancel()
        if isinstance(e, ClusterError) or not isinstance(e, Exception):
            raise
        if type(e).__name__ == "KilledWorker":
            hint = f"; {explain()}" if explain is not None else ""
            raise ClusterError(f"workers kept dying during {what} (out of memory?){hint}") from None
        if client.status not in ("running", "connecting") or _is_comm_loss(e):
            raise ClusterError(f"lost the dask scheduler at {address} during {what} ({_first_line(e)})") from None
        raise
    return results[0] if single else results


@contextlib.contextmanager
def large_graphs_quiet():
    """No "Sending large graph" warning from distributed: 100,000 small files make a
    10 MiB graph of file names and row groups, metadata rather than the data the warning
    is about (data embedded in a graph)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        yield


def _await(job, client, address: str, what: str):
    """``job``'s result, looking at the cluster every ``POLL_SECONDS`` while it runs."""
    import concurrent.futures

    timeout = _timeouts.get(client, 30.0)
    empty_since = None
    while True:
        try:
            return job.result(timeout=POLL_SECONDS)
        except concurrent.futures.TimeoutError:
            pass
        if client.status not in ("running", "connecting"):
            raise ClusterError(f"lost the dask scheduler at {address} during {what}")
        if client.scheduler_info().get("workers"):
            empty_since = None
        elif empty_since is None:
            empty_since = time.monotonic()
        elif time.monotonic() - empty_since > timeout:
            raise ClusterError(f"the dask cluster at {address} has had no workers for {timeout:g}s "
                               f"(cluster.timeout) during {what}")


def set_timeout(client, seconds: float) -> None:
    """How long ``client``'s cluster may have no workers before a wait gives up
    (``cluster.timeout``, set by ``cluster.connect``)."""
    _timeouts[client] = seconds


async def _gather(client, futures):
    return await client.gather(futures, asynchronous=True)


def _is_comm_loss(e: BaseException) -> bool:
    from asyncio import CancelledError

    from distributed.comm.core import CommClosedError

    # Futures of a lost scheduler end as Future(s)CancelledError, whose types vary by version.
    return isinstance(e, (CommClosedError, CancelledError)) or "Cancelled" in type(e).__name__
