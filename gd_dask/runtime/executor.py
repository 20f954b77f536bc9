"""The only code that builds dask graphs.

An ``Executor`` holds the dataset as delayed blocks ``[X | y]``, one per chunk, and offers
distributed passes, each a map of a pure-NumPy function from ``gradient`` over every block
(slice by slice, for the functions that add up over rows: moments, metrics, gradient sums)
followed by a reduction in a *fixed* tree (adjacent blocks, ``FAN_IN`` at a time, folded
left to right). The tree depends only on the number of blocks, never on which worker ran
what or in which order results arrived, so the results are bit-identical with any number
of workers and after dask recomputes blocks lost with a dead worker.
"""

from __future__ import annotations

import itertools
import logging
import operator
from functools import reduce

import dask
import numpy as np

from ..data import Pack, ParquetSource, count_nonfinite
from ..data.read import pack_files
from ..data.write import predict_file
from ..kernels import gradient as g
from ..kernels.blocks import SLICE_ROWS, fold_block, fold_slices, standardize_block
from ..kernels.compensated import PointGradient, add_refine, point_gradient, refine_sums
from ..kernels.exact_gram import add_exact_gram, exact_gram
from ..kernels.groups import GroupMoments
from ..kernels.losses import SQUARED, Loss
from ..kernels.level_meat import add_level_meat
from ..kernels.level_newton import add_information, add_level_sums
from ..kernels.newton import NewtonSums, add_newton, block_newton, block_newton_std
from ..kernels.metrics import (
    ClassSums,
    ErrorSums,
    add_class_sums,
    add_errors,
    block_classification,
    block_errors,
    block_errors_std,
    add_family_errors,
    block_family_errors,
    class_metrics,
    error_metrics,
    family_metrics,
)
from ..kernels.moments import (
    Moments,
    Standardizer,
    add_row_sums,
    block_meat,
    block_moments,
    merge_moments,
    row_sums,
    shifted_moments,
)
from ..optimization.sgd_kernel import SGDPlan, add_sgd, sgd_block, sgd_raw
from ..optimization.strategy import STREAM, Strategy
from ..sizes import FAN_IN
from .level_chunks import (
    add_huber_groups,
    add_irls_groups,
    add_named_groups,
    chunk_groups,
    chunk_huber_groups,
    chunk_irls_groups,
    irls_plan,
    plan_irls_groups,
    chunk_level_classes,
    chunk_level_errors,
    chunk_level_family,
    chunk_level_meat,
    chunk_level_newton,
    level_newton_plan,
    plan_level_newton,
    chunk_two_way_meat,
)
from .waiting import compute, large_graphs_quiet

log = logging.getLogger(__name__)

#: Fraction of the cluster's total worker memory that ``cache: auto`` may fill.
CACHE_FRACTION = 0.4
#: A cached block, built (Arrow table, float64 block, standardized copy) and kept, may be
#: at most 1/8 of the smallest worker's memory limit.
CACHE_BLOCK_SHARE = 8


def _fold(combine, parts):
    return reduce(combine, parts)


def fold_chunk(chunk, spec, func, combine, *args):
    """``gradient.fold_block(spec.block(chunk), func, combine, *args)`` without building
    the block where the spec can stream: a file's chunk comes slice by slice
    (``data.read_slices``)."""
    return fold_slices(spec.slices(chunk, SLICE_ROWS), func, combine, *args)


def each_file(pack, spec, on_chunk, *args) -> list:
    """``on_chunk(file, spec, *args)`` for each file of a ``Pack``, in order: one task,
    a result per file (fetched together on an object store: ``data.read.pack_files``)."""
    return [on_chunk(piece, spec, *args) for piece in pack_files(pack, spec)]


def chunk_moments(chunk, spec) -> Moments:
    """``gradient.block_moments(spec.block(chunk))``, to the bit, streamed."""
    return shifted_moments(spec.slices(chunk, SLICE_ROWS, shifted=True))


def sgd_chunk(chunk, spec, theta, index, plan, center, scale, y_center, loss, weighted):
    """``gradient.sgd_raw`` of one chunk read whole (steps need all its rows at hand)."""
    return sgd_raw(spec.block(chunk), theta, index, plan, center, scale, y_center, loss, weighted)


def read_chunk(chunk, spec):
    """One chunk as a float64 block: a Parquet chunk (``data.read_block``) or a dask
    DataFrame's partition (``data.frame``)."""
    return spec.block(chunk)


def read_tasks(src: ParquetSource) -> list:
    """Delayed, one per chunk: its float64 block ``[X, y]`` (then w) as ``read_chunk``
    reads it. A list of delayed blocks, not a dask array: nothing here needs the array's
    shape, and importing dask.array took a second of a cached job's command."""
    spec = src.spec
    return [dask.delayed(read_chunk, pure=True)(c, spec, dask_key_name=f"read-{dask.base.tokenize(c, spec)}")
            for c in src.chunks]


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
    loss : losses.Loss
        The per-row loss of the gradient passes.
    lazy : bool
        With ``cache``: keep only the standardized blocks, built by the first pass after
        ``standardize`` (the moments pass streams from the files, which costs less than
        filling memory twice); Newton's passes all run standardized.
    """

    def __init__(self, client, source: ParquetSource, cache: bool, loss: Loss = SQUARED, lazy: bool = False):
        self.client = client
        self.source = source
        self.cache = cache
        self.loss = loss
        self._blocks: list | None = None
        self._persisted = False  # ``_blocks`` held in cluster memory
        self._exact_gram = None  # refinement's Gram matrix of the raw rows, once computed
        self._plans = {}  # per plan function: (its arguments' token, the chunks' persisted plans)
        if cache and not lazy:
            # Persist: every later pass (each stream epoch, the metrics pass) reads the
            # blocks from worker memory; dask keeps the read tasks to recompute any
            # block lost with a worker.
            self._persist(read_tasks(source))
        self.scaling: Standardizer | None = None

    def _compute(self, graphs):
        """``waiting.compute``, explaining a worker that keeps dying by the data's sizes."""
        return compute(self.client, graphs, explain=self._memory_hint)

    def _memory_hint(self) -> str:
        if not self.source.files:
            return "raise cluster.memory_limit, or use smaller partitions"
        f = max(self.source.files, key=lambda f: f.get("row_group_bytes") or 0)
        limits = [x for x in _memory_limits(self.client) if x > 0]
        limit = f"{min(limits) / 2**20:.0f} MiB" if limits else "no"
        return (f"the largest row group, in {f['path']}, is {(f.get('row_group_bytes') or 0) / 2**20:.0f} MiB "
                f"on disk and the smallest worker memory limit {limit}: raise cluster.memory_limit, or "
                "rewrite the files with smaller row groups")

    def _persist(self, blocks: list) -> None:
        """Keep the delayed ``blocks`` in the workers' memory from now on (a graph of many
        files' names is metadata: no "large graph" warning)."""
        with large_graphs_quiet():
            self._blocks = list(self.client.persist(list(blocks)))
        self._persisted = True

    @property
    def blocks(self) -> list:
        """Delayed blocks: persisted ones, or (no cache) read tasks built on first use —
        passes that add up over rows stream from the files and never need them."""
        if self._blocks is None:
            self._blocks = read_tasks(self.source)
        return self._blocks

    def _tree(self, func, combine, blocks, *args, indexed=False):
        """Delayed: ``func(block, *args)`` over ``blocks`` (``indexed``: with the block's
        index appended), reduced in the fixed tree."""
        fn = dask.delayed(func, pure=True)
        return _reduce_tree([fn(b, *args, i) if indexed else fn(b, *args) for i, b in enumerate(blocks)],
                            combine)

    def _leaves(self, on_block, on_chunk, *args) -> list:
        """Delayed, one per chunk: ``on_block(block, *args)`` on the cached blocks, else
        ``on_chunk(chunk, spec, *args)``, which streams the chunk from its file (the same
        bits, and no memory for whole blocks)."""
        if self.cache and self._persisted:
            fn = dask.delayed(on_block, pure=True)
            return [fn(b, *args) for b in self.blocks]
        fn = dask.delayed(on_chunk, pure=True)
        spec = self.source.spec
        return [fn(c, spec, *args) for c in self.source.chunks]

    def row_leaves(self, func, combine, *args) -> list:
        """Delayed, one per block: ``func`` (a function that adds up over rows) folded over
        the block's slices."""
        return self._leaves(fold_block, fold_chunk, func, combine, *args)

    def _reduce_rows(self, func, combine, *args):
        """Map ``func`` (a function that adds up over rows) over every block slice by
        slice (``row_leaves``), reduce in the fixed tree, compute."""
        # Compute: one small result (a few numbers) comes back to the client.
        return self._compute(_reduce_tree(self.row_leaves(func, combine, *args), combine))

    def moment_leaves(self) -> list:
        """Delayed, one per block: its ``Moments`` (``gradient.block_moments``)."""
        if self.weighted:
            return self.row_leaves(block_moments, merge_moments, True)
        return self._leaves(block_moments, chunk_moments)

    def moments_by_file(self) -> dict[str, Moments]:
        """Each file's ``Moments`` (a refit's statistics cache): {full path: moments}."""
        if self.weighted:
            return self.rows_by_file(block_moments, merge_moments, True)
        return self._by_file(chunk_moments, merge_moments)

    def rows_by_file(self, func, combine, *args) -> dict[str, object]:
        """``func`` (a function that adds up over rows) over each file: {full path: result}."""
        return self._by_file(fold_chunk, combine, func, combine, *args)

    def _by_file(self, on_chunk, combine, *args) -> dict[str, object]:
        """``on_chunk(chunk, spec, *args)`` of every chunk, streamed from the files,
        reduced per file: {full path: result}. A pack's files are read by one task that
        returns a result for each (``each_file``), the very result of that file read as a
        chunk of its own; a file of several chunks is reduced in the fixed tree."""
        spec = self.source.spec
        one, each = dask.delayed(on_chunk, pure=True), dask.delayed(each_file, pure=True)
        packs, trees = [], {}
        for c in self.source.chunks:
            if isinstance(c, Pack):
                packs.append((c, each(c, spec, on_chunk, *args)))
            else:
                trees.setdefault(c.path, []).append(one(c, spec, *args))
        roots = [_reduce_tree(leaves, combine) for leaves in trees.values()]
        # Compute: a few numbers per file come back (statistics to cache on the client).
        done = self._compute([task for _, task in packs] + roots)
        out = dict(zip(trees, done[len(packs):]))
        for (pack, _), results in zip(packs, done):
            out.update(zip((piece.path for piece in pack.pieces), results))
        return out

    @property
    def weighted(self) -> bool:
        return self.source.weighted

    def moments(self) -> Moments:
        """n (Σw with weights), means and co-moments of [X, y]: one pass, stable merges."""
        # Compute: one small result (a few numbers) comes back to the client.
        return self._compute(_reduce_tree(self.moment_leaves(), merge_moments))

    def group_moments(self, categorical) -> tuple[GroupMoments, dict]:
        """Moments of the numeric columns grouped by the levels of the categorical ones
        (``categorical``: their indices among the block's columns), and the text of the
        level keys seen: one pass from the files, merged in the fixed tree."""
        fn = dask.delayed(chunk_groups, pure=True)
        spec = self.source.spec
        # Compute: per group a count and means come back (no row does).
        return self._compute(_reduce_tree([fn(c, spec, tuple(categorical), self.weighted)
                                           for c in self.source.chunks], add_named_groups))

    def huber_groups(self, categorical, m, b, tables) -> tuple:
        """``group_moments`` of one round of Huber's IRLS (``self.loss``) at the model (m, b,
        ``tables``): each row weighs min(1, δ/|r|) (times its sample weight); with the
        round's Σ w·2ρ: (groups, names, Σ w·2ρ). One pass."""
        fn = dask.delayed(chunk_huber_groups, pure=True)
        spec = self.source.spec
        leaves = [fn(c, spec, tuple(categorical), tuple(tables), np.asarray(m, dtype=np.float64), float(b),
                     self.loss, self.weighted) for c in self.source.chunks]
        # Compute: per group a count and means come back (no row does).
        return self._compute(_reduce_tree(leaves, add_huber_groups))

    def _kept(self, make, plan_args) -> list:
        """Each chunk's ``make(chunk, spec, *plan_args)`` (what a pass reads of it and does
        not change from one pass to the next), persisted in cluster memory once for these
        arguments; other arguments replace them."""
        token = dask.base.tokenize(plan_args)
        kept = self._plans.get(make.__name__)
        if kept is None or kept[0] != token:
            kept = self._plans[make.__name__] = (token, self._persist_plans(make, plan_args))
        return kept[1]

    def _persist_plans(self, make, plan_args) -> list:
        """Each chunk's ``make(chunk, spec, *plan_args)``, persisted in cluster memory."""
        fn = dask.delayed(make, pure=True)
        with large_graphs_quiet():
            return list(self.client.persist([fn(c, self.source.spec, *plan_args) for c in self.source.chunks]))

    def _kept_slices(self, make, plan_args) -> list:
        """``_kept`` with each chunk's plan (a list of slices) kept as one persisted object
        per slice instead: per chunk, its slices in order."""
        token = dask.base.tokenize(plan_args)
        kept = self._plans.get(("slices", make.__name__))
        if kept is None or kept[0] != token:
            plans = self._persist_plans(make, plan_args)  # let go once the slices hold the rows
            counts = self._compute([dask.delayed(len, pure=True)(p) for p in plans])
            get = dask.delayed(operator.getitem, pure=True)
            with large_graphs_quiet():
                flat = list(self.client.persist([get(p, i) for p, n in zip(plans, counts) for i in range(n)]))
            at = list(itertools.accumulate(counts, initial=0))
            kept = self._plans[("slices", make.__name__)] = (token, [flat[a:b] for a, b in zip(at, at[1:])])
        return kept[1]

    def irls_groups(self, cat_idx, level_keys, drop, offset, coefs, m, b, information: bool = False,
                    fast: bool = False) -> tuple:
        """The grouped moments of one IRLS step of ``self.loss`` at the model (m, b, each
        categorical column's ``coefs`` over its ``level_keys``; ``offset``: an
        ``OffsetColumn`` or None), the rows at the ``drop`` levels left out: one pass,
        merged in the fixed tree (``level_chunks.plan_irls_groups``). With ``cache`` the
        chunks' ``irls_plan``s (the rows read, hashed and grouped) stay in cluster memory
        from the first step on; else each step forms them again (the same bits).
        ``information``: Fisher's weights and Pearson's χ² instead (a summary's pass);
        ``fast``: in float64 throughout (a step that is not certified)."""
        plan_args = (tuple(cat_idx), [np.asarray(k) for k in level_keys], [np.asarray(k) for k in drop], offset,
                     self.weighted)
        step_args = ([np.asarray(c, dtype=np.float64) for c in coefs], np.asarray(m, dtype=np.float64), float(b),
                     self.loss, self.weighted, information, fast)
        spec = self.source.spec
        if self.cache:
            fn = dask.delayed(plan_irls_groups, pure=True)
            leaves = [fn(p, *step_args) for p in self._kept(irls_plan, plan_args)]
        else:
            fn = dask.delayed(chunk_irls_groups, pure=True)
            leaves = [fn(c, spec, *plan_args[:4], step_args[0], *step_args[1:]) for c in self.source.chunks]
        # Compute: per group a count and means come back (no row does).
        return self._compute(_reduce_tree(leaves, add_irls_groups))

    def groups_by_file(self, categorical) -> dict[str, tuple[GroupMoments, dict]]:
        """``group_moments`` of each file, with its level names: {full path: (groups,
        names)} (a refit's statistics cache)."""
        return self._by_file(chunk_groups, add_named_groups, tuple(categorical), self.weighted)

    def nonfinite_by_block(self) -> list[np.ndarray]:
        """NaN/inf counts per column for every block, in block order (diagnosis only)."""
        parts = self.row_leaves(count_nonfinite, np.add)
        # Compute: one small vector per block comes back, to name the first file at fault.
        return self._compute(parts)

    def standardize(self, scaling: Standardizer) -> None:
        """Train on standardized blocks from now on.

        With the cache on, the standardized blocks replace the raw ones in cluster memory
        (same size), so a stream epoch does no more arithmetic than an in-memory NumPy
        epoch; without it each block is standardized as it is read.
        """
        self.scaling = scaling
        sc = self._block_scaling()
        if self.cache:
            # Persist: the standardized blocks are what every later epoch reads; dask
            # keeps the graph back to the read tasks for blocks lost with a worker.
            raw = self._blocks if self._persisted else read_tasks(self.source)
            fn = dask.delayed(standardize_block, pure=True)
            self._persist([fn(b, sc.center, sc.scale, sc.y_center, None, self.weighted) for b in raw])

    def gradient_sums(self, m, b) -> g.BlockSums:
        """Σ ψ·xs, Σ ψ, Σ loss, n at (m, b) over every chunk (one stream epoch), for
        ``self.loss``; weighted when the data has weights."""
        # Compute: one small result (a few numbers) comes back to the client.
        return self._compute(self.gradient_graph(m, b))

    def gradient_graph(self, m, b):
        """Delayed ``gradient_sums(m, b)``, to compute together with other passes."""
        # Slice by slice (``row_leaves``): faster than whole-block temporaries in workers,
        # and the same bits from cached standardized blocks as from re-read raw ones.
        fn, args = self._kernel(g.block_sums_std, g.block_sums, m, b)
        return _reduce_tree(self.row_leaves(fn, g.add_sums, *args, self.loss, self.weighted), g.add_sums)

    def _kernel(self, on_standardized, on_raw, m, b) -> tuple:
        """(function, arguments) of a kernel at training-space (m, b): on the cached
        standardized blocks, or on raw rows standardized as they are read."""
        sc = self._block_scaling()
        m = np.asarray(m, dtype=np.float64)
        if self.cache:
            return on_standardized, (m, float(b) - sc.y_center)
        return on_raw, (m, float(b), sc.center, sc.scale, sc.y_center)

    def _block_scaling(self) -> Standardizer:
        """The standardization of the block's columns: the features', and an offset's or
        exposure's column left as it is (center 0, scale 1)."""
        sc = self.scaling
        if not self.source_offset:
            return sc
        return sc._replace(center=np.append(sc.center, 0.0), scale=np.append(sc.scale, 1.0))

    @property
    def source_offset(self) -> str | None:
        """"add" or "log" where the column after the features is an offset or an exposure."""
        return getattr(self.source, "offset", None)

    def curvature_sums(self, m, b) -> g.CurvatureSums:
        """Σ w·ℓ''·x̃x̃ᵀ, max ‖x̃‖² and n at (m, b) over every chunk (``gradient``): one
        pass, for the certificate of a loss that is not quadratic."""
        fn, args = self._kernel(g.block_curvature_std, g.block_curvature, m, b)
        return self._reduce_rows(fn, g.add_curvature, *args, self.loss, self.weighted)

    def newton_sums(self, m, b, final: bool = False, data_terms: bool = True) -> NewtonSums:
        """The gradient sums, the Hessian and the gradient's rounding scale at (m, b)
        (``kernels.newton.NewtonSums``), with the metrics and Fisher's information there
        where ``final``, and the data's own terms where ``data_terms``: one pass, all a
        Newton step needs."""
        fn, args = self._kernel(block_newton_std, block_newton, m, b)
        return self._reduce_rows(fn, add_newton, *args, self.loss, self.weighted, self.source_offset, final,
                                 data_terms)

    def bad_targets(self) -> tuple[int, tuple]:
        """(count, a few values) of the target values ``self.loss`` refuses: one pass."""
        return self._reduce_rows(g.target_values, g.add_target_values, self.loss, self.weighted)

    def paired_with(self, val_ex: Executor):
        """(oracle, validate) for stream with early stopping: one round trip per epoch
        computes the training sums and the validation loss at the same (m, b);
        ``validate`` hands back that loss (or makes its own pass at other parameters)."""
        last: dict = {}

        def oracle(m, b):
            # Compute: two small results (a few numbers each) come back to the client.
            s, v = self._compute([self.gradient_graph(m, b), val_ex.gradient_graph(m, b)])
            last.update(m=np.array(m, copy=True), b=float(b), loss=v.loss / v.n)
            return s

        def validate(m, b):
            if last and float(b) == last["b"] and np.array_equal(m, last["m"]):
                return last["loss"]
            v = val_ex.gradient_sums(m, b)
            return v.loss / v.n

        return oracle, validate

    def sgd_round(self, theta, plan: SGDPlan) -> tuple[np.ndarray, np.ndarray, float, float]:
        """One round of minibatch steps in every chunk from ``theta`` (training space),
        the chunk models averaged weighted by rows in the fixed tree (parameter mixing).
        Returns (mixed θ, mixed average of the iterates, Σ batch losses, rows stepped)."""
        sc = self.scaling
        th = np.array(theta, dtype=np.float64)
        th[-1] -= sc.y_center
        if self.cache:
            fn = dask.delayed(sgd_block, pure=True)
            leaves = [fn(b, th, i, plan, self.loss, self.weighted) for i, b in enumerate(self.blocks)]
        else:
            fn = dask.delayed(sgd_chunk, pure=True)
            spec = self.source.spec
            leaves = [fn(c, spec, th, i, plan, sc.center, sc.scale, sc.y_center, self.loss, self.weighted)
                      for i, c in enumerate(self.source.chunks)]
        # Compute: a few numbers per chunk model come back, mixed.
        s = self._compute(_reduce_tree(leaves, add_sgd))
        mixed, average = s.theta / s.n, s.average / s.n
        mixed[-1] += sc.y_center
        average[-1] += sc.y_center
        return mixed, average, s.loss, s.rows

    def refine_sums(self, m_hi, m_lo, b_hi: float, b_lo: float) -> PointGradient:
        """The gradient's sums at m = m_hi + m_lo, b = b_hi + b_lo (original units), far
        beyond float64, with their error bounded: iterative refinement's oracle. Unweighted,
        from the Gram matrix of the raw rows, one pass kept for every later call
        (``exact_gram``); weighted, or where a column's magnitudes do not split, from the
        residuals in double-double, a pass per call (``compensated.refine_sums``). Always
        read from the files, slice by slice: cached blocks are standardized, and these sums
        need the raw rows."""
        passes = 0
        if not self.weighted and self._exact_gram is None:
            sc = self.scaling
            # About the training means (with an intercept), so the sums are as small as
            # the residuals make them.
            shift = np.zeros(len(self.source.spec.columns)) if sc is None else np.append(sc.center, sc.y_center)
            self._exact_gram = self._reduce_raw(exact_gram, add_exact_gram, shift)
            passes = 1
            if not self._exact_gram.exact:
                log.info("refinement: a column's magnitudes are beyond what the exact Gram pass splits; "
                         "refining from the residuals")
        if self._exact_gram is not None and self._exact_gram.exact:
            return self._exact_gram.point_gradient(m_hi, m_lo, b_hi, b_lo)._replace(passes=passes)
        sums = self._reduce_raw(refine_sums, add_refine, np.asarray(m_hi, dtype=np.float64),
                                np.asarray(m_lo, dtype=np.float64), float(b_hi), float(b_lo), self.weighted)
        return point_gradient(sums)._replace(passes=passes + 1)

    def error_sums(self, m, b) -> ErrorSums:
        """Metric sums for a model (m, b) in original units."""
        m = np.asarray(m, dtype=np.float64)
        sc = self.scaling
        if self.cache and sc is not None:
            m_s, b_s = sc.to_training(m, b)
            return self._reduce_rows(block_errors_std, add_errors, m_s, float(b_s) - sc.y_center,
                                     sc.y_center, self.weighted, self.loss.link)
        return self._reduce_rows(block_errors, add_errors, m, float(b), self.weighted, self.loss.link)

    def level_newton_sums(self, cat_idx, level_keys, m, b, coef, center, scale, data_terms: bool,
                          information: bool = False, drop=None):
        """``kernels.level_newton.LevelSums`` over every chunk at numeric (m, b) in the
        training space (features standardized by ``center``, ``scale``) and the levels'
        coefficients ``coef``: one pass (from the plans kept in cluster memory where the
        cache is on, else streamed from the files). ``information``:
        (the sums with Fisher's weights, Pearson's χ²) instead. ``drop``: per column,
        sorted level keys whose rows are left out (``jobs.separation``)."""
        cols = self.source.columns
        target = len(cols) - 1 - int(self.weighted)  # [features, (offset,) target, (weight)]
        offset = (target - 1, self.source_offset) if self.source_offset else None
        num_idx = [j for j in range(target) if j not in set(cat_idx) and (offset is None or j != offset[0])]
        spec = self.source.spec
        keys = [np.asarray(k) for k in level_keys]
        drop = None if drop is None else [np.asarray(k) for k in drop]
        args = (num_idx, target, list(cat_idx), keys, np.asarray(m, dtype=np.float64), float(b),
                np.asarray(coef, dtype=np.float64), np.asarray(center, dtype=np.float64),
                np.asarray(scale, dtype=np.float64), self.loss, data_terms, offset, information,
                len(cols) - 1 if self.weighted else None)
        combine = add_information if information else add_level_sums
        if self.cache:
            # The rows and their level indices stay in cluster memory between passes, a
            # slice each: the slices of one chunk are summed at once (a chunk of 1M rows is
            # one task's otherwise, one thread's) and folded in their order, as a task
            # that reads the chunk folds them: the same bits.
            fn, fold = dask.delayed(plan_level_newton, pure=True), dask.delayed(_fold, pure=True)
            leaves = [fold(combine, [fn([part], *args) for part in parts])
                      for parts in self._kept_slices(level_newton_plan, (list(cat_idx), keys, drop))]
        else:
            fn = dask.delayed(chunk_level_newton, pure=True)
            leaves = [fn(c, spec, *args, drop) for c in self.source.chunks]
        # Compute: per level a few sums come back (no row does).
        return self._compute(_reduce_tree(leaves, combine))

    def level_metrics(self, m, b, tables) -> dict:
        """The metrics of a model with categorical features (``tables``: its
        ``data.write.LevelTable``s, in the source's categorical order, and its
        ``OffsetColumn`` if it has one): one pass."""
        cols = self.source.columns
        cat_idx = [cols.index(t.name) for t in tables]
        loss = self.loss
        if loss.task == "classification":
            on_chunk, arg, combine, done = chunk_level_classes, loss, add_class_sums, class_metrics
        elif getattr(loss, "deviance_metric", None):
            on_chunk, arg, combine = chunk_level_family, loss, add_family_errors
            done = lambda sums: family_metrics(sums, loss)  # noqa: E731
        else:
            on_chunk, arg, combine, done = chunk_level_errors, loss.link, add_errors, error_metrics
        fn = dask.delayed(on_chunk, pure=True)
        spec = self.source.spec
        leaves = [fn(c, spec, cat_idx, tuple(tables), np.asarray(m, dtype=np.float64), float(b), arg, self.weighted)
                  for c in self.source.chunks]
        # Compute: a few numbers come back.
        return done(self._compute(_reduce_tree(leaves, combine)))

    def level_meat(self, m, b, tables, absorbed, others, wbar):
        """``kernels.level_meat.LevelMeat`` over every chunk (HC1 with categorical
        features; ``chunk_level_meat``'s arguments, columns by name): one pass."""
        cols = self.source.columns
        fn = dask.delayed(chunk_level_meat, pure=True)
        spec = self.source.spec
        leaves = [fn(c, spec, [cols.index(t.name) for t in tables], tuple(tables), np.asarray(m, dtype=np.float64),
                     float(b), self.weighted, (cols.index(absorbed[0]), absorbed[1]),
                     [(cols.index(name), keys, first) for name, keys, first in others], wbar)
                  for c in self.source.chunks]
        # Compute: per absorbed level a few sums come back (no row does).
        return self._compute(_reduce_tree(leaves, add_level_meat))

    def two_way_meat(self, m, b, tables, x_tables, dummies=()) -> np.ndarray:
        """HC1's middle for the slopes of a two-column fit (``chunk_two_way_meat``; with
        ``dummies``, the smaller columns' indicators too): one pass, a small matrix back."""
        cols = self.source.columns
        fn = dask.delayed(chunk_two_way_meat, pure=True)
        idx = [cols.index(t.name) for t in tables]
        leaves = [fn(c, self.source.spec, idx, tuple(tables), np.asarray(m, dtype=np.float64), float(b),
                     self.weighted, tuple(tuple(f) for f in x_tables), tuple(dummies)) for c in self.source.chunks]
        return self._compute(_reduce_tree(leaves, np.add))

    def class_sums(self, m, b, threshold: float = 0.5) -> ClassSums:
        """Metric sums of a classifier (m, b) in original units, read from the files."""
        return self._reduce_raw(block_classification, add_class_sums, np.asarray(m, dtype=np.float64),
                                float(b), self.loss, threshold, self.weighted, self.source_offset)

    def metrics(self, m, b) -> dict:
        """Every metric of the model (m, b) in original units on these rows: one pass."""
        if self.loss.task == "classification":
            return class_metrics(self.class_sums(m, b))
        if getattr(self.loss, "deviance_metric", None):
            sums = self._reduce_raw(block_family_errors, add_family_errors, np.asarray(m, dtype=np.float64),
                                    float(b), self.loss, self.weighted, self.source_offset)
            return family_metrics(sums, self.loss)
        return error_metrics(self.error_sums(m, b))

    def row_sums(self) -> tuple[int, float]:
        """(rows, Σ log w) over every chunk, read from the files."""
        return self._reduce_raw(row_sums, add_row_sums, self.weighted)

    def meat(self, m, b, fit_intercept: bool) -> np.ndarray:
        """Σ w²·r²·x̃x̃ᵀ for the model (m, b) in original units (HC1), read from the files."""
        return self._reduce_raw(block_meat, np.add, np.asarray(m, dtype=np.float64), float(b), fit_intercept,
                                self.weighted)

    def _reduce_raw(self, func, combine, *args):
        """``func`` (adding up over rows) on the raw rows, streamed from the files, reduced
        in the fixed tree (cached blocks may be standardized)."""
        fn = dask.delayed(fold_chunk, pure=True)
        spec = self.source.spec
        # Compute: one small result comes back to the client.
        return self._compute(_reduce_tree([fn(c, spec, func, combine, *args) for c in self.source.chunks],
                                          combine))

    def predict_files(self, dest: dict, out_protocol: str, features, keys, m, b, threshold=None,
                      categorical=()) -> list[int]:
        """Score every file into ``dest[full path]`` (keys + prediction, row group by row
        group, through ``self.loss``'s inverse link; + label with ``threshold``;
        ``categorical``: ``data.write.LevelTable``s): one task per file; returns the row
        counts."""
        src = self.source
        fn = dask.delayed(predict_file)
        tasks = [fn(f["full_path"], dest[f["full_path"]], src.protocol, src.storage_options, out_protocol,
                    list(features), list(keys), m, b, self.loss, threshold, tuple(categorical)) for f in src.files]
        # Compute: each task writes its own file; only row counts come back.
        return compute(self.client, tasks, what="predict")

    def release(self) -> None:
        """Drop the cached blocks (and IRLS and level-Newton plans) from cluster memory."""
        self._blocks = []
        self._persisted = False
        self._plans = {}


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


def worker_records(client) -> list[dict]:
    """The scheduler's record of each worker (``memory_limit``, ``nthreads``, …)."""
    return list(client.scheduler_info().get("workers", {}).values())


def _memory_limits(client) -> list[int]:
    """Each worker's memory limit in bytes (0: unlimited)."""
    return [w.get("memory_limit") or 0 for w in worker_records(client)]


#: A worker process's own memory before it holds any rows (measured ~150 MiB).
WORKER_BASE_BYTES = 160 * 2**20
#: What a row group decoded whole holds in memory, over its size in the file: its Arrow
#: table, the next one read ahead, the float64 block and a centered copy.
ROW_GROUP_COST = 4
#: The share of a worker's memory limit that row groups decoded whole may take (dask's
#: nanny starts spilling at 60 %).
DECODE_SHARE = 0.5


def stream_above_for(workers, default: int) -> int:
    """The largest row group (bytes in the file) this cluster decodes whole
    (``stream_above``): every thread of the smallest worker may hold one in flight
    (``ROW_GROUP_COST`` times its size) within ``DECODE_SHARE`` of its limit, after the
    process's own ``WORKER_BASE_BYTES``; larger ones are streamed ``BATCH_ROWS`` at a time
    (the same bits either way). ``workers``: the scheduler's worker records
    (``worker_records``); ``default`` where none has a limit. A 174 MB row group,
    pyarrow's default for a million rows of 21 float64 columns, is decoded whole on a
    2 GB one-thread worker (measured: a 6 GB worker peaked at 452 MiB decoding them
    whole, 302 MiB streaming them). Not the layout: chunks are the data's alone, so
    that the bits are the same on every cluster."""
    room = [(w["memory_limit"] * DECODE_SHARE - WORKER_BASE_BYTES) / (ROW_GROUP_COST * (w.get("nthreads") or 1))
            for w in workers if w.get("memory_limit")]
    if not room:
        return default
    return int(max(2**20, min(room)))


def cluster_memory(client) -> int:
    """Total worker memory limit in bytes (0 when any worker is unlimited)."""
    limits = _memory_limits(client)
    if not limits or 0 in limits:
        return 0
    return int(sum(limits))


def decide_cache(setting: str, source: ParquetSource, client, strategy: Strategy = STREAM) -> bool:
    """``memory`` / ``none`` as given. ``auto``: stream caches only when the blocks fit;
    gram never does, since it reads the data only twice (moments, then the metrics) and
    streaming a chunk from its file costs less than filling fresh memory with it."""
    if setting != "auto":
        return setting == "memory"
    if strategy.gram:
        log.info("cache: none (gram reads the data for its moments and for the metrics only)")
        return False
    need = source.nbytes
    if need is None:
        log.info("cache: none (the data's size is not known in advance)")
        return False
    limits = [x for x in _memory_limits(client) if x > 0]
    block = source.largest_chunk_bytes
    if limits and block * CACHE_BLOCK_SHARE > min(limits):
        # Chunks are the data's, not the workers': a block this large, built and kept,
        # would not fit; streaming from the files gives the same bits.
        log.info("cache: none (blocks of up to %.1f MiB for workers of %.0f MiB)", block / 2**20,
                 min(limits) / 2**20)
        return False
    have = cluster_memory(client)
    if have == 0:
        import psutil

        have = psutil.virtual_memory().total
    fits = need <= CACHE_FRACTION * have
    log.info("cache: %s (data %.1f MiB, cluster memory %.1f MiB)",
             "memory" if fits else "none", need / 2**20, have / 2**20)
    return fits
