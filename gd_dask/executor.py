"""The only code that builds dask graphs.

An ``Executor`` holds the dataset as a dask array of blocks ``[X | y]`` and offers
distributed passes, each a map of a pure-NumPy function from ``gradient`` over every block
(slice by slice, for the functions that add up over rows: moments, metrics, gradient sums)
followed by a reduction in a *fixed* tree (adjacent blocks, ``FAN_IN`` at a time, folded
left to right). The tree depends only on the number of blocks, never on which worker ran
what or in which order results arrived, so the results are bit-identical with any number
of workers and after dask recomputes blocks lost with a dead worker.
"""

from __future__ import annotations

import functools
import logging
from functools import reduce

import dask
import numpy as np

from . import gradient as g
from .cluster import compute
from .compensated import RefineSums, add_refine, refine_sums
from .data import ParquetSource, count_nonfinite, read_slices, to_dask_array

log = logging.getLogger(__name__)

#: Partial results merged per reduction task.
FAN_IN = 8
#: Fraction of the cluster's total worker memory that ``cache: auto`` may fill.
CACHE_FRACTION = 0.4


def _fold(combine, parts):
    return reduce(combine, parts)


def fold_piece(read_args, func, combine, *args):
    """``gradient.fold_block(read_block(*read_args), func, combine, *args)`` without
    building the block: the chunk streams from the file slice by slice."""
    return g.fold_slices(read_slices(*read_args, rows=g.SLICE_ROWS), func, combine, *args)


def piece_moments(read_args) -> g.Moments:
    """``gradient.block_moments(read_block(*read_args))``, to the bit, streamed."""
    return g.shifted_moments(read_slices(*read_args, rows=g.SLICE_ROWS, shifted=True))


class Executor:
    """Distributed passes over one dataset.

    Parameters
    ----------
    client : distributed.Client
    source : ParquetSource
        Files and chunk layout from the footers.
    cache : bool
        Keep the blocks in cluster memory after the first pass (``persist``) instead of
        re-reading the Parquet files on every pass.
    """

    def __init__(self, client, source: ParquetSource, cache: bool):
        self.client = client
        self.source = source
        self.cache = cache
        self.array = None
        self._blocks: list | None = None
        if cache:
            # Persist: every later pass (each stream epoch, the metrics pass) reads the
            # blocks from worker memory; dask keeps the read tasks to recompute any
            # block lost with a worker.
            self._keep(client.persist(to_dask_array(source)))
        self.std: g.Standardizer | None = None
        self.loss: g.Loss = g.SQUARED  # the stream kernels' per-row loss

    def _compute(self, graphs):
        """``cluster.compute``, explaining a worker that keeps dying by the data's sizes."""
        return compute(self.client, graphs, explain=self._memory_hint)

    def _memory_hint(self) -> str:
        f = max(self.source.files, key=lambda f: f.get("row_group_bytes") or 0)
        limits = [x for x in _memory_limits(self.client) if x > 0]
        limit = f"{min(limits) / 2**20:.0f} MiB" if limits else "no"
        return (f"the largest row group, in {f['path']}, is {(f.get('row_group_bytes') or 0) / 2**20:.0f} MiB "
                f"on disk and the smallest worker memory limit {limit}: raise cluster.memory_limit, or "
                "rewrite the files with smaller row groups")

    def _keep(self, array) -> None:
        self.array = array
        self._blocks = list(array.to_delayed().ravel())

    @property
    def blocks(self) -> list:
        """Delayed blocks: persisted ones, or (no cache) read tasks built on first use —
        passes that add up over rows stream from the files and never need them."""
        if self._blocks is None:
            self._keep(to_dask_array(self.source))
        return self._blocks

    def _tree(self, func, combine, blocks, *args, indexed=False):
        """Delayed: ``func(block, *args)`` over ``blocks`` (``indexed``: with the block's
        index appended), reduced in the fixed tree."""
        fn = dask.delayed(func, pure=True)
        return _reduce_tree([fn(b, *args, i) if indexed else fn(b, *args) for i, b in enumerate(blocks)],
                            combine)

    def _leaves(self, on_block, on_piece, *args) -> list:
        """Delayed, one per block: ``on_block(block, *args)`` on the cached blocks, else
        ``on_piece(read_args, *args)``, which streams the chunk from its file (the same
        bits, and no memory for whole blocks)."""
        if self.cache:
            fn = dask.delayed(on_block, pure=True)
            return [fn(b, *args) for b in self.blocks]
        fn = dask.delayed(on_piece, pure=True)
        return [fn(self.source.read_args(p), *args) for p in self.source.pieces]

    def row_leaves(self, func, combine, *args) -> list:
        """Delayed, one per block: ``func`` (a function that adds up over rows) folded over
        the block's slices."""
        return self._leaves(g.fold_block, fold_piece, func, combine, *args)

    def _reduce_rows(self, func, combine, *args):
        """Map ``func`` (a function that adds up over rows) over every block slice by
        slice (``row_leaves``), reduce in the fixed tree, compute."""
        # Compute: one small result (a few numbers) comes back to the client.
        return self._compute(_reduce_tree(self.row_leaves(func, combine, *args), combine))

    def moment_leaves(self) -> list:
        """Delayed, one per block: its ``Moments`` (``gradient.block_moments``)."""
        if self.weighted:
            return self.row_leaves(g.block_moments, g.merge_moments, True)
        return self._leaves(g.block_moments, piece_moments)

    def reduce_by_file(self, leaves: list, combine) -> dict[str, object]:
        """Per-block delayed results (``row_leaves``, ``moment_leaves``) reduced per file
        in the fixed tree: {full path: result}."""
        groups: dict[str, list] = {}
        for piece, leaf in zip(self.source.pieces, leaves):
            groups.setdefault(piece.path, []).append(leaf)
        roots = [_reduce_tree(leaves, combine) for leaves in groups.values()]
        # Compute: a few numbers per file come back (statistics to cache on the client).
        return dict(zip(groups, self._compute(roots)))

    @property
    def weighted(self) -> bool:
        return self.source.weighted

    def moments(self) -> g.Moments:
        """n (Σw with weights), means and co-moments of [X, y]: one pass, stable merges."""
        # Compute: one small result (a few numbers) comes back to the client.
        return self._compute(_reduce_tree(self.moment_leaves(), g.merge_moments))

    def nonfinite_by_block(self) -> list[np.ndarray]:
        """NaN/inf counts per column for every block, in block order (diagnosis only)."""
        parts = self.row_leaves(count_nonfinite, np.add)
        # Compute: one small vector per block comes back, to name the first file at fault.
        return self._compute(parts)

    def standardize(self, std: g.Standardizer) -> None:
        """Train on standardized blocks from now on.

        With the cache on, the standardized blocks replace the raw ones in cluster memory
        (same size), so a stream epoch does no more arithmetic than an in-memory NumPy
        epoch; without it each block is standardized as it is read.
        """
        self.std = std
        if self.cache:
            # Persist: the standardized blocks are what every later epoch reads; dask
            # keeps the graph back to the read tasks for blocks lost with a worker.
            array = self.array.map_blocks(g.standardize_block, std.center, std.scale, std.y_center, None,
                                          self.weighted, dtype=np.float64)
            self._keep(self.client.persist(array))

    def gradient_sums(self, m, b) -> g.BlockSums:
        """Σ err·xs, Σ err, Σ err², n at (m, b) over every block (one stream epoch), for
        ``self.loss`` (ψ and 2ρ in place of err and err²); weighted when the data has weights."""
        # Compute: one small result (a few numbers) comes back to the client.
        return self._compute(self.gradient_graph(m, b))

    def gradient_graph(self, m, b):
        """Delayed ``gradient_sums(m, b)``, to compute together with other passes."""
        std = self.std
        m = np.asarray(m, dtype=np.float64)
        # Slice by slice (``row_leaves``): faster than whole-block temporaries in workers,
        # and the same bits from cached standardized blocks as from re-read raw ones.
        if self.cache:
            fn, args = g.block_sums_std, (m, float(b) - std.y_center)
        else:
            fn, args = g.block_sums, (m, float(b), std.center, std.scale, std.y_center)
        return _reduce_tree(self.row_leaves(fn, g.add_sums, *args, self.loss, self.weighted), g.add_sums)

    def sampled_sums(self, m, b, fraction: float, seed: int, step: int) -> g.BlockSums:
        """Minibatch gradient sums: every block samples its rows (seeded by seed, step and
        block index) in parallel; one reduction per step."""
        std = self.std
        blocks = self.blocks
        if not self.cache:
            fn = dask.delayed(g.standardize_block, pure=True)
            blocks = [fn(b, std.center, std.scale, std.y_center, None, self.weighted) for b in blocks]
        sampled = functools.partial(g.block_sums_sampled, weighted=self.weighted)
        root = self._tree(sampled, g.add_sums, blocks, np.asarray(m, dtype=np.float64), float(b) - std.y_center,
                          fraction, seed, step, indexed=True)
        # Compute: one small result (a few numbers) comes back to the client.
        return self._compute(root)

    def refine_sums(self, m_hi, m_lo, b_hi: float, b_lo: float) -> RefineSums:
        """The gradient's sums at m = m_hi + m_lo, b = b_hi + b_lo (original units), in
        double-double (``compensated``): iterative refinement's pass. Always read from
        the files, slice by slice: cached blocks are standardized, and these sums need
        the raw rows."""
        fn = dask.delayed(fold_piece, pure=True)
        args = (np.asarray(m_hi, dtype=np.float64), np.asarray(m_lo, dtype=np.float64), float(b_hi), float(b_lo),
                self.weighted)
        leaves = [fn(self.source.read_args(p), refine_sums, add_refine, *args) for p in self.source.pieces]
        # Compute: one small result (a few numbers) comes back to the client.
        return self._compute(_reduce_tree(leaves, add_refine))

    def error_sums(self, m, b) -> g.ErrorSums:
        """Metric sums for a model (m, b) in original units."""
        m = np.asarray(m, dtype=np.float64)
        if self.cache and self.std is not None:
            m_s, b_s = self.std.to_training(m, b)
            return self._reduce_rows(g.block_errors_std, g.add_errors, m_s, float(b_s) - self.std.y_center,
                                     self.std.y_center, self.weighted)
        return self._reduce_rows(g.block_errors, g.add_errors, m, float(b), self.weighted)

    def release(self) -> None:
        """Drop the cached blocks from cluster memory."""
        self._blocks = []
        self.array = None


def _reduce_tree(level: list, combine):
    """Delayed: the fixed reduction tree over ``level`` (adjacent items, ``FAN_IN`` at a
    time, folded left to right); it depends only on the number of items."""
    fold = dask.delayed(_fold, pure=True)
    while len(level) > 1:
        level = [
            fold(combine, level[i:i + FAN_IN]) if len(level[i:i + FAN_IN]) > 1 else level[i]
            for i in range(0, len(level), FAN_IN)
        ]
    return level[0]


def _memory_limits(client) -> list[int]:
    """Each worker's memory limit in bytes (0: unlimited)."""
    return [w.get("memory_limit") or 0 for w in client.scheduler_info().get("workers", {}).values()]


def chunk_bytes_for(client, default: int) -> int:
    """Chunk size for this cluster: a block in flight costs a few times its size
    (Arrow table, float64 block, a standardized or centered copy), so keep chunks to
    1/32 of the smallest worker memory limit (measured: a worker at 250 MiB peaked at
    ~220 MiB with 1/16)."""
    limits = [x for x in _memory_limits(client) if x > 0]
    if not limits:
        return default
    return int(max(2**20, min(default, min(limits) // 32)))


def cluster_memory(client) -> int:
    """Total worker memory limit in bytes (0 when any worker is unlimited)."""
    limits = _memory_limits(client)
    if not limits or 0 in limits:
        return 0
    return int(sum(limits))


def decide_cache(setting: str, source: ParquetSource, client, strategy: str = "stream") -> bool:
    """``memory`` / ``none`` as given. ``auto``: stream caches only when the blocks fit;
    gram never does, since it reads the data only twice (moments, then the metrics) and
    streaming a chunk from its file costs less than filling fresh memory with it."""
    if setting != "auto":
        return setting == "memory"
    if strategy == "gram":
        log.info("cache: none (gram reads the data for its moments and for the metrics only)")
        return False
    need = source.nbytes
    have = cluster_memory(client)
    if have == 0:
        import psutil

        have = psutil.virtual_memory().total
    fits = need <= CACHE_FRACTION * have
    log.info("cache: %s (data %.1f MiB, cluster memory %.1f MiB)",
             "memory" if fits else "none", need / 2**20, have / 2**20)
    return fits
