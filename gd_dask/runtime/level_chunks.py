"""What a worker task runs for categorical features, chunk by chunk (``Executor`` builds
the graphs): the moments grouped by level, a Newton pass's per-level sums, HC1's middle,
and the metrics of a model whose rows' intercepts take their levels' coefficients.
Slices stream from the chunk's file (``ReadSpec.slices``) and fold left to right, so the
bits are those of every other pass."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..data.read import add_level_names, chunk_where
from ..data.write import SEPARATED_ETA
from ..kernels.blocks import split_block
from ..kernels.groups import (
    GroupMoments,
    empty,
    group_moments,
    group_moments_at,
    merge_groups,
    padded,
    unique_rows,
)
from ..kernels.irls import irls_rows
from ..kernels.level_meat import LevelMeat, add_level_meat, slice_level_meat
from ..kernels.level_newton import add_information, add_level_sums, level_indices, slice_level_sums
from ..kernels.metrics import (
    ClassSums,
    ErrorSums,
    add_class_sums,
    add_errors,
    add_family_errors,
    block_classification,
    block_errors,
    block_family_errors,
)
from ..sizes import GROUP_BATCH_SLICES, SLICE_ROWS
from .allocator import reusing


@reusing
def chunk_groups(chunk, spec, categorical, weighted: bool = False) -> tuple[GroupMoments, dict]:
    """``groups.group_moments`` of one chunk, streamed slice by slice, and the text of the
    level keys its text columns gave ({key: text})."""
    names: dict = {}
    slices = (np.array(z) for z in spec.slices(chunk, SLICE_ROWS, names=names))  # each a reused buffer
    return _grouped(slices, categorical, weighted), names


def _grouped(slices, categorical, weighted: bool) -> GroupMoments:
    """``group_moments`` of consecutive slices, ``GROUP_BATCH_SLICES`` at a time, merged
    pairwise (not left to right: merging sorts the groups, and a chunk of many groups
    merged into one growing table batch after batch costs batches × groups)."""
    parts, batch = [], []
    for z in slices:
        batch.append(z)
        if len(batch) == GROUP_BATCH_SLICES:
            parts.append(group_moments(np.concatenate(batch), categorical, weighted))
            batch = []
    if batch or not parts:
        parts.append(group_moments(np.concatenate(batch), categorical, weighted))
    while len(parts) > 1:
        parts = [merge_groups(*parts[i:i + 2]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def add_named_groups(a: tuple, b: tuple) -> tuple:
    """Merge two ``chunk_groups`` results: the groups by key, the names checked for a key
    that two texts share."""
    return merge_groups(a[0], b[0]), add_level_names(dict(a[1]), b[1].items())


@reusing
def chunk_level_errors(chunk, spec, cat_idx, tables, m, b, link, weighted=False) -> ErrorSums:
    """``block_errors`` of one chunk for a model with categorical features: each row's
    levels' coefficients (``data.write.LevelTable``) join its intercept."""
    return _level_fold(chunk, spec, cat_idx, tables, b,
                       lambda z, b_rows: block_errors(z, m, b_rows, weighted, link), add_errors)


@reusing
def chunk_level_newton(chunk, spec, num_idx, target, cat_idx, level_keys, m, b, coef, center, scale, loss,
                       data_terms, offset=None, information=False, weight=None, drop=None):
    """``kernels.level_newton.LevelSums`` of one chunk, slice by slice from its file
    (``information``: Fisher's, with Pearson's χ²); ``drop``: per column, sorted keys of
    levels whose rows are left out (separated: ``jobs.separation``)."""
    return plan_level_newton(_level_slices(chunk, spec, cat_idx, level_keys, drop), num_idx, target, cat_idx,
                             level_keys, m, b, coef, center, scale, loss, data_terms, offset, information, weight)


@reusing
def level_newton_plan(chunk, spec, cat_idx, level_keys, drop=None) -> list:
    """What ``chunk_level_newton`` reads of a chunk and does not change from one pass to
    the next: each slice's rows (less ``drop``'s) with their level indices, kept in
    cluster memory where the blocks may be (``Executor.level_newton_sums``): a pass then
    neither reads the file nor hashes its text again."""
    return [(np.array(z), idx) for z, idx in _level_slices(chunk, spec, cat_idx, level_keys, drop)]


def _level_slices(chunk, spec, cat_idx, level_keys, drop):
    """(rows, each column's level indices) of a chunk's slices, ``drop``'s rows left out."""
    for z in spec.slices(chunk, SLICE_ROWS, names={}):
        if drop is not None:
            z = z[~at_levels(z, cat_idx, drop)]
        yield z, level_indices(z, cat_idx, level_keys)


@reusing
def plan_level_newton(plan, num_idx, target, cat_idx, level_keys, m, b, coef, center, scale, loss, data_terms,
                      offset=None, information=False, weight=None):
    """``chunk_level_newton`` from a chunk's slices and level indices (``level_newton_plan``)."""
    total = None
    combine = add_information if information else add_level_sums
    for z, idx in plan:
        part = slice_level_sums(z, num_idx, target, cat_idx, level_keys, m, b, coef, center, scale, loss,
                                data_terms, offset, information, weight, idx=idx)
        total = part if total is None else combine(total, part)
    return total


@reusing
def chunk_level_meat(chunk, spec, cat_idx, tables, m, b, weighted, absorbed, others, wbar) -> LevelMeat:
    """``kernels.level_meat.LevelMeat`` of one chunk at the model (m, b, ``tables``):
    ``absorbed``: (its column, its level keys); ``others``: per other categorical column
    (its column, its non-reference level keys, their first reduced column)."""
    num = _numeric(spec, cat_idx)
    total = None
    for z, intercepts in _with_intercepts(chunk, spec, cat_idx, tables, b, {}):
        X, y, w = split_block(np.ascontiguousarray(z[:, num]), weighted)
        e = y - (X @ m + intercepts)
        level = np.searchsorted(absorbed[1], z[:, absorbed[0]])
        columns = []
        for j, keys, first in others:
            pos = np.minimum(np.searchsorted(keys, z[:, j]), max(len(keys) - 1, 0))
            hit = keys[pos] == z[:, j] if len(keys) else np.zeros(len(z), dtype=bool)
            columns.append(np.where(hit, first + pos, -1))
        part = slice_level_meat(X, e, w, level, columns, wbar)
        total = part if total is None else add_level_meat(total, part)
    return total


@reusing
def chunk_two_way_meat(chunk, spec, cat_idx, tables, m, b, weighted, x_tables, dummies=()) -> np.ndarray:
    """HC1's middle for the slopes of a two-column fit (``optimization.two_way``), one
    chunk: Σ (w·e)²·x̃x̃ᵀ with e the model's residual and x̃ each numeric feature less its
    own least-squares fit on the two columns' levels (``x_tables``: per feature, its
    tables), the rows the slopes' errors are linear in (Frisch–Waugh–Lovell).
    ``dummies``: (a column's position in ``cat_idx``, a table of 1 at one level) per
    indicator of the dense block after the numeric features (``optimization.many_way``),
    each fitted on the levels as a feature is."""
    num = _numeric(spec, cat_idx)
    where = chunk_where(chunk)
    total = np.zeros((len(x_tables), len(x_tables)))
    for z, intercepts in _with_intercepts(chunk, spec, cat_idx, tables, b, {}):
        X, y, w = split_block(np.ascontiguousarray(z[:, num]), weighted)
        e = y - (X @ m + intercepts)
        R = np.column_stack([X] + [t.offsets(z[:, cat_idx[c]], where, {}) for c, t in dummies])
        for k, feature in enumerate(x_tables):
            R[:, k] -= _level_offsets(z, cat_idx, feature, where, {})
        s = e * e if w is None else (w * e) ** 2
        total += (R * s[:, None]).T @ R
    return total


def _with_intercepts(chunk, spec, cat_idx, tables, b, names: dict):
    """Each of the chunk's slices with each row's intercept: b plus the row's levels'
    coefficients (``data.write.LevelTable``) and its offset (``data.write.OffsetColumn``),
    ``tables`` read from the columns ``cat_idx``; ``names`` collects the text of the keys."""
    where = chunk_where(chunk)
    for z in spec.slices(chunk, SLICE_ROWS, names=names):
        yield z, b + _level_offsets(z, cat_idx, tables, where, names)


def _level_offsets(z, cat_idx, tables, where: str, names: dict) -> np.ndarray:
    """Each row of the slice ``z``: the sum of its levels' coefficients in ``tables`` (read
    from the columns ``cat_idx``)."""
    return sum((t.offsets(z[:, j], where, names) for j, t in zip(cat_idx, tables)), np.zeros(len(z)))


def _numeric(spec, cat_idx) -> list:
    """The block's columns that are not levels (nor an offset): [X, y] (then w)."""
    return [j for j in range(len(spec.columns)) if j not in set(cat_idx)]


def _level_fold(chunk, spec, cat_idx, tables, b, on_rows, combine):
    """``on_rows(numeric block, each row's intercept)`` folded over one chunk's slices
    (``_with_intercepts``)."""
    num = _numeric(spec, cat_idx)
    total = None
    for z, intercepts in _with_intercepts(chunk, spec, cat_idx, tables, b, {}):
        part = on_rows(np.ascontiguousarray(z[:, num]), intercepts)
        total = part if total is None else combine(total, part)
    return total


@reusing
def chunk_level_classes(chunk, spec, cat_idx, tables, m, b, loss, weighted=False) -> ClassSums:
    """``block_classification`` of one chunk for a classifier with categorical features."""
    return _level_fold(chunk, spec, cat_idx, tables, b,
                       lambda z, b_rows: block_classification(z, m, b_rows, loss, weighted=weighted), add_class_sums)


@reusing
def chunk_level_family(chunk, spec, cat_idx, tables, m, b, loss, weighted=False) -> tuple:
    """``block_family_errors`` of one chunk for a family with categorical features."""
    return _level_fold(chunk, spec, cat_idx, tables, b,
                       lambda z, b_rows: block_family_errors(z, m, b_rows, loss, weighted), add_family_errors)


@reusing
def chunk_huber_groups(chunk, spec, categorical, tables, m, b, loss, weighted: bool = False) -> tuple:
    """``chunk_groups`` reweighted for one round of Huber's IRLS at the model (m, b,
    ``tables``): each row weighs ψ(r)/r = min(1, δ/|r|) (δ the Huber ``loss``'s, times the
    sample weight), and the round's Σ w·2ρ(r) comes back beside the groups: (groups,
    names, Σ w·2ρ)."""
    names: dict = {}
    delta = loss.delta
    cat_idx = [spec.columns.index(t.name) for t in tables]
    num = _numeric(spec, cat_idx)
    total = 0.0

    def reweighted():
        nonlocal total
        for z, intercepts in _with_intercepts(chunk, spec, cat_idx, tables, b, names):
            X, y, w = split_block(np.ascontiguousarray(z[:, num]), weighted)
            r = X @ m + intercepts - y
            a = np.abs(r)
            inside = a <= delta
            omega = np.where(inside, 1.0, delta / np.where(inside, 1.0, a))
            two_rho = np.where(inside, r * r, delta * (2.0 * a - delta))
            if w is not None:
                omega, two_rho = omega * w, two_rho * w
            total += float(two_rho.sum())
            yield np.column_stack([z[:, :-1] if weighted else z, omega])

    return _grouped(reweighted(), categorical, True), names, total


def add_huber_groups(a: tuple, b: tuple) -> tuple:
    return (*add_named_groups(a[:2], b[:2]), a[2] + b[2])


def at_levels(z, cat_idx, levels) -> np.ndarray:
    """Rows of ``z`` at any of ``levels`` (per column ``cat_idx``, sorted keys)."""
    out = np.zeros(len(z), dtype=bool)
    for j, keys in zip(cat_idx, levels):
        if len(keys):
            at = np.minimum(np.searchsorted(keys, z[:, j]), len(keys) - 1)
            out |= keys[at] == z[:, j]
    return out


#: Rows an IRLS pass forms its long-double terms and deviations for at a time.
IRLS_ROWS = 4 * SLICE_ROWS


class IrlsPlan(NamedTuple):
    """A chunk's rows as every IRLS pass needs them: the rows of positive weight at no
    separated level, their groups (keys in order, each row's), each categorical column's
    level index per row, their numeric columns [X, y] (then w) and offset (or None).
    Grouped once, the chunk whole: no merges of partial groups in each pass (a quarter of
    a pass in 512K-row batches)."""

    uniq: np.ndarray
    inverse: np.ndarray
    levels: list
    num: np.ndarray
    offset: np.ndarray | None


@reusing
def irls_plan(chunk, spec, cat_idx, level_keys, drop, offset, weighted: bool) -> IrlsPlan:
    """A chunk's ``IrlsPlan``: what does not change from one IRLS pass to the next (the
    rows read, their level keys hashed, grouped and looked up once), kept in cluster
    memory where the blocks may be (``Executor.irls_groups``). ``level_keys``: each
    column's levels in key order; ``drop``: each column's separated levels' keys
    (``jobs.separation``), whose rows are predicted exactly and take no part."""
    off_idx = spec.columns.index(offset.name) if offset is not None else None
    skip = set(cat_idx) | ({off_idx} if off_idx is not None else set())
    num = [j for j in range(len(spec.columns)) if j not in skip]
    z = np.concatenate([np.array(s) for s in spec.slices(chunk, SLICE_ROWS, names={})])  # each a reused buffer
    keep = ~at_levels(z, cat_idx, drop)
    if weighted:
        keep &= z[:, -1] > 0
    z = z[keep]
    uniq, inv = unique_rows(z[:, cat_idx]) if len(z) else (np.zeros((0, len(cat_idx))), np.zeros(0, np.int64))
    levels = [np.searchsorted(keys, z[:, j]) for j, keys in zip(cat_idx, level_keys)]
    off = offset.offsets(z[:, off_idx], chunk_where(chunk)) if offset is not None else None
    return IrlsPlan(uniq, inv, levels, np.ascontiguousarray(z[:, num]), off)


@reusing
def plan_irls_groups(plan: IrlsPlan, coefs, m, b, loss, weighted: bool, information: bool = False,
                     fast: bool = False) -> tuple:
    """One IRLS step of a GLM ``loss`` at the model (m, b, ``coefs``: each column's
    coefficients over its levels) on a chunk's ``irls_plan``: the groups over [X, z, z_lo,
    e/h] weighted by h (``kernels.irls``); with the step's Σ w·ℓ, max |x_j|, max size of
    η, the rows whose h is 0 (the groups are then not formed) and the targets the loss
    refuses: (groups, {}, total, xmax, eta_max, lost, bad_targets). The rows' terms are
    formed ``IRLS_ROWS`` at a time: in long double they took a 1 GiB worker to 85 % on a
    1M-row chunk whole. ``information``: the groups of [X, y] weighted by Fisher's
    weights, ``total`` Pearson's χ² (``kernels.irls``). ``fast``: the rows' terms in
    float64 and the groups' sums too (z_lo, e/h and m2 0): a step that is not certified."""
    X, y, w = split_block(plan.num, weighted)
    n, d = X.shape
    values, h = np.empty((n, d + 3)), np.empty(n)
    total, xmax, eta_max, lost, bad = 0.0, np.zeros(d), 0.0, 0, (0, ())
    for lo in range(0, n, IRLS_ROWS):
        at = slice(lo, lo + IRLS_ROWS)
        s = irls_rows(X[at], y[at], None if w is None else w[at], b, [c[i[at]] for c, i in zip(coefs, plan.levels)],
                      None if plan.offset is None else plan.offset[at], m, loss, SEPARATED_ETA, information, fast)
        total, xmax, eta_max = total + s.total, np.maximum(xmax, s.xmax), max(eta_max, s.eta_max)
        lost, bad = lost + s.lost, merge_bad(bad, s.bad_targets)
        if not lost:
            values[at], h[at] = s.block[:, :-1], s.block[:, -1]
    stats = (total, xmax, eta_max, lost, bad)
    if lost:
        return (None, {}, *stats)
    if not n:
        return (empty(plan.uniq.shape[1], d + 3), {}, *stats)
    if fast:
        g = group_moments_at(plan.uniq, plan.inverse, values[:, :d + 1], h, exact=0, rows=IRLS_ROWS, spread=False)
        return (padded(g, 2), {}, *stats)
    # z_lo's sums (some u of z's) and e/h's (a bound) need no more than float64.
    return (group_moments_at(plan.uniq, plan.inverse, values, h, exact=d + 1, rows=IRLS_ROWS), {}, *stats)


@reusing
def chunk_irls_groups(chunk, spec, cat_idx, level_keys, drop, offset, coefs, m, b, loss, weighted: bool,
                      information: bool = False, fast: bool = False) -> tuple:
    """``plan_irls_groups`` of a chunk streamed from its file (the plan formed anew: the
    same bits as from a kept one)."""
    return plan_irls_groups(irls_plan(chunk, spec, cat_idx, level_keys, drop, offset, weighted), coefs, m, b, loss,
                            weighted, information, fast)


def merge_bad(a: tuple, b: tuple) -> tuple:
    """Two (count, a few values) of targets a loss refuses, as one."""
    return a[0] + b[0], tuple(sorted(set(a[1]) | set(b[1])))[:5]


def add_irls_groups(a: tuple, b: tuple) -> tuple:
    groups = merge_groups(a[0], b[0]) if a[0] is not None and b[0] is not None else None
    return (groups, {}, a[2] + b[2], np.maximum(a[3], b[3]), max(a[4], b[4]), a[5] + b[5], merge_bad(a[6], b[6]))
