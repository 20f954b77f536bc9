"""glibc's allocator during a task of the categorical passes.

dask's nanny starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which turns
glibc's adaptive mmap threshold off: every temporary above 128 KiB is then mapped anew
and faulted in page by page, and a pass that forms a dozen slice-sized temporaries per
slice pays for them every slice. A Newton pass with a 20,000-level column over 1M rows
took 1.2 s on a ``dask worker`` and 0.43 s on the same worker started with
``--no-nanny`` (or in the embedded cluster). The numeric kernels reuse per-thread
buffers (``kernels.blocks.scratch_matrix``); the categorical ones form too many arrays
of too many shapes for that.

``reusing`` raises both thresholds while such a task runs, so its slices take the
temporaries the last slice freed from the heap, and when the last such task on the
worker ends it puts the worker's settings back and trims the heap, so the memory goes
back to the system as the worker's setting intends (``one_arena``: all of it). It does
nothing where the variable is not set (glibc's adaptive threshold already reuses) or
glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading

#: mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
#: glibc's mmap threshold where MALLOC_TRIM_THRESHOLD_ pins it (its default).
PINNED_MMAP_BYTES = 128 * 1024
#: While a task runs: allocations below this come from the heap, and freed memory stays
#: in it until the task ends (a slice's largest temporaries are a few MB; a chunk's
#: whole columns, larger, are still mapped and unmapped as they come and go).
TASK_BYTES = 16 * 2**20

_lock = threading.Lock()
_running = 0


@functools.cache
def _libc():
    """glibc, where the worker's trim threshold is set; None otherwise."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc's own, absent elsewhere
    except (OSError, AttributeError):
        return None
    return libc


def one_arena() -> None:
    """Every thread of this worker allocates from glibc's main arena (called as the
    worker starts, before its task threads do): ``malloc_trim`` gives back the main
    arena's free top, never another arena's, so with an arena per task thread the heap
    each task freed stayed with the worker (60 MB over four threads). numpy allocates
    holding the GIL, and Arrow from its own pool: one arena costs no waiting."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, ctypes.c_int(1))


def _set(libc, mmap: int, trim: int) -> None:
    libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap))
    libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim))


def reusing(fn):
    """``fn`` (a task's function) with the heap's freed temporaries reused while it runs."""

    @functools.wraps(fn)
    def task(*args, **kwargs):
        global _running
        libc = _libc()
        if libc is None:
            return fn(*args, **kwargs)
        with _lock:
            if _running == 0:
                _set(libc, TASK_BYTES, TASK_BYTES)
            _running += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                _running -= 1
                if _running == 0:
                    _set(libc, PINNED_MMAP_BYTES, int(os.environ["MALLOC_TRIM_THRESHOLD_"]))
                    libc.malloc_trim(0)

    return task
