"""Blocks and their slices: the fixed slices (``SLICE_ROWS``) every per-block sum is folded over
(so the bits do not depend on how rows arrive), scratch buffers, standardizing a block."""

from __future__ import annotations

import threading

import numpy as np

from ..sizes import SLICE_ROWS

_scratch = threading.local()  # per-thread scratch buffers (``_scratch_like``)


def _scratch_like(z) -> np.ndarray:
    """A per-thread reused column-major array of ``z``'s shape. dask workers set
    MALLOC_TRIM_THRESHOLD_, which pins glibc's mmap threshold at 128 KiB: a fresh
    slice-sized temporary would be mapped and faulted in anew for every slice."""
    size = z.shape[0] * z.shape[1]
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = _scratch.buf = np.empty(size)
    return buf[:size].reshape(z.shape, order="F")


def scratch_matrix(shape: tuple[int, int], slot: str) -> np.ndarray:
    """A per-thread reused column-major array of ``shape`` for the named ``slot``
    (``_scratch_like``'s reason: slice-sized temporaries of a pass, reused slice after
    slice instead of faulted in anew)."""
    size = shape[0] * shape[1]
    slots = getattr(_scratch, "slots", None)
    if slots is None:
        slots = _scratch.slots = {}
    buf = slots.get(slot)
    if buf is None or buf.size < size:
        buf = slots[slot] = np.empty(max(size, SLICE_ROWS * shape[1]))
    return buf[:size].reshape(shape, order="F")


def scratch_vector(n: int) -> np.ndarray:
    """A per-thread reused vector of length n (``_scratch_like``'s reason), for the linear
    predictor of a slice; ``Loss.terms`` may overwrite it."""
    buf = getattr(_scratch, "vec", None)
    if buf is None or buf.size < n:
        buf = _scratch.vec = np.empty(max(n, SLICE_ROWS))
    return buf[:n]


def standardize_block(block, center, scale, y_center=0.0, out=None, weighted: bool = False):
    """``[(x − center)/scale, y − y_center]`` of one block (``[…, w]`` with the weight
    column kept as is when ``weighted``), shape unchanged.

    ``y_center`` (ȳ when centering) keeps y ≈ 1e6 ± 1 from costing digits in ``err``.
    ``out``: where to write (a scratch array for a slice that is used once), else new.
    """
    out = np.empty_like(block, dtype=np.float64) if out is None else out
    k = block.shape[1] - (2 if weighted else 1)
    np.subtract(block[:, :k], center, out=out[:, :k])
    out[:, :k] /= scale
    np.subtract(block[:, k], y_center, out=out[:, k])
    if weighted:
        out[:, -1] = block[:, -1]
    return out


def aligned(block):
    """``block`` itself, or a copy in the same order at an aligned address. A block that
    moved between workers can arrive at an address that is no multiple of 8; NumPy then
    leaves BLAS for loops of its own whose sums round differently (two workers' loss
    curves differed in a last digit when a single cached block was stolen)."""
    if block.flags.aligned:
        return block
    return np.array(block, order="F" if block.flags.f_contiguous else "C")


def block_slices(block, rows: int = SLICE_ROWS):
    """A block's consecutive slices of ``rows`` rows (at least one, maybe empty)."""
    block = aligned(block)
    if block.shape[0] == 0:
        yield block
    for lo in range(0, block.shape[0], rows):
        yield block[lo:lo + rows]


def fold_slices(slices, func, combine, *args):
    """``func(slice, *args)`` folded left to right with ``combine``: for functions that
    add up over rows, the same value as on the whole block; the same bits whether the
    slices come from a cached block or straight from the file (``data.read_slices``)."""
    total = None
    for z in slices:
        part = func(z, *args)
        total = part if total is None else combine(total, part)
    return total


def fold_block(block, func, combine, *args):
    """``fold_slices`` over a block in memory."""
    return fold_slices(block_slices(block), func, combine, *args)


def block_slices_shifted(block, rows: int = SLICE_ROWS):
    """``(slice − shift, shift)`` for each of ``block_slices(block)``, with ``shift`` the
    mean of the first slice; each shifted slice is a reused scratch array."""
    shift = None
    for z in block_slices(block, rows):
        if shift is None:
            shift = z.mean(axis=0) if z.shape[0] else np.zeros(z.shape[1])
        yield np.subtract(z, shift, out=_scratch_like(z)), shift


def split_block(z, weighted: bool = False):
    """``(X, y, w)`` views of a block ``[X, y]`` or ``[X, y, w]``; w is None unweighted."""
    if weighted:
        return z[:, :-2], z[:, -2], z[:, -1]
    return z[:, :-1], z[:, -1], None
