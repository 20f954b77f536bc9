"""Moments grouped by the levels of the categorical features: the sufficient statistics of
least squares with categorical columns, with no one-hot column anywhere. Pure NumPy on
one slice of rows; no dask import.

A group is one combination of levels of the categorical columns (as float64 keys: the
values of integer and boolean columns, a 52-bit hash of a string's UTF-8 bytes). For the
numeric columns ``z = [X, y]`` each group keeps its row count and mean, and one matrix
for all groups holds the within-group co-moment ``Σ_g Σ_{i∈g} (z_i − z̄_g)(z_i − z̄_g)ᵀ``.
Everything least squares needs with indicator columns follows without cancellation:
the totals (``to_moments``) and the co-moments within the levels of one column
(``optimization.categorical``). Memory grows with the groups present (at most the rows),
never with levels².

With sample weights (the block's last column) a group's ``n`` is its Σw, its means and
co-moments weighted (as ``moments`` makes them), so everything built on them becomes
weighted least squares unchanged; ``count`` keeps its rows. Rows of weight 0 add
nothing and are left out.

Per slice the groups come from sorting the keys; partial results merge group by group
with Chan's update, in the fixed tree of every other pass, so the bits do not depend on
the workers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .compensated import dd_add, exact_bincount, two_prod
from .moments import Moments


class GroupMoments(NamedTuple):
    """keys : (G, q) level keys, rows in lexicographic order, unique
    n : (G,) rows per group;  mean : (G, k) per-group means of ``z = [X, y]``
    within : (k, k) Σ over groups of their co-moments about their own means
    m2 : (G, k) each group's Σ(z − z̄_g)² per column (the diagonal of its co-moment: how
    large the values a group's mean adds up are, for rounding bounds)
    total, total_lo : (G, k) each group's Σz as a double-double, exact but for far less
    than a rounding (``compensated.exact_bincount``, then ``dd_add``): the levels' means
    from them are off by about one rounding (``optimization.categorical.reduce``), where
    float64 sums of a level's rows and Chan's merges were off by hundreds (with weights:
    Σw·z, each product split exactly by ``two_prod``)
    count : (G,) rows per group (``n`` without weights)
    n_lo : (G,) what Σw adds below ``n``: the weights' sum as an exact double-double
    (0 without weights: counts are exact)"""

    keys: np.ndarray
    n: np.ndarray
    mean: np.ndarray
    within: np.ndarray
    m2: np.ndarray
    total: np.ndarray
    total_lo: np.ndarray
    count: np.ndarray
    n_lo: np.ndarray

    @property
    def rows(self) -> float:
        """Σ n: the rows, or the weights' sum."""
        return float(self.n.sum())

    @property
    def moments_n(self) -> int | float:
        """Σ n as ``Moments.n`` holds it: the rows (an int), or Σw with weights."""
        return int(self.rows) if np.array_equal(self.n, self.count) else self.rows

    def to_moments(self) -> Moments:
        """The moments of ``z`` over every row: within plus between the groups."""
        n = self.rows
        k = self.mean.shape[1]
        if n == 0:
            return Moments(0, np.zeros(k), np.zeros((k, k)))
        mean = (self.n @ self.mean) / n
        dev = self.mean - mean
        return Moments(self.moments_n, mean, self.within + (dev * self.n[:, None]).T @ dev)

    def block(self, J: slice) -> tuple:
        """(total, total_lo, mean, m2, exact) of the columns ``J``: what a solver reads a
        block of columns at a time (``optimization.two_way``; ``many_way.LiftedGroups``
        forms them); ``exact``: per column, whether ``mean`` is its total's exact quotient
        (an indicator's 0 or 1), none here."""
        return (self.total[:, J], self.total_lo[:, J], self.mean[:, J], self.m2[:, J],
                np.zeros(self.total[:, J].shape[1], dtype=bool))

    def columns(self, keep) -> GroupMoments:
        """The same groups over the columns ``keep`` only."""
        keep = np.asarray(keep)
        return self._replace(mean=self.mean[:, keep], within=self.within[np.ix_(keep, keep)], m2=self.m2[:, keep],
                             total=self.total[:, keep], total_lo=self.total_lo[:, keep])


def empty(q: int, k: int) -> GroupMoments:
    none, per_group = np.zeros((0, k)), np.zeros(0)
    return GroupMoments(np.zeros((0, q)), per_group, none, np.zeros((k, k)), none, none, none, per_group, per_group)


def group_moments(z, categorical, weighted: bool = False) -> GroupMoments:
    """``GroupMoments`` of one slice ``z`` (block columns: features, then the target, then
    the weight when ``weighted``); ``categorical``: the indices of the categorical columns
    among them."""
    cat = list(categorical)
    num = [j for j in range(z.shape[1] - int(weighted)) if j not in set(cat)]
    w = None
    if weighted:
        w = z[:, -1]
        if not (w != 0).all():
            z, w = z[w != 0], w[w != 0]
    keys, values = z[:, cat], np.ascontiguousarray(z[:, num])
    if z.shape[0] == 0:
        return empty(len(cat), len(num))
    return group_moments_at(*unique_rows(keys), values, w)


def group_moments_at(uniq, inv, values, w=None, exact: int | None = None, rows: int | None = None,
                     spread: bool = True) -> GroupMoments:
    """``group_moments`` of rows whose groups are known: ``uniq`` their keys (G × q, in
    lexicographic order, every one present), ``inv`` each row's group, ``values`` the
    rows' numeric columns, ``w`` their weights (none 0) or None. ``exact``: the columns
    past the first ``exact`` are summed in float64 (``total_lo`` 0): columns whose sums
    need no more (a rounding bound, a double-double's low part). ``rows``: the
    deviations from the groups' means formed that many rows at a time (memory).
    ``spread``: False leaves ``m2`` 0 (what only rounding bounds read)."""
    G = len(uniq)
    count = np.bincount(inv, minlength=G).astype(np.float64)
    n, n_lo = (count, np.zeros(G)) if w is None else exact_bincount(inv, w, G)
    k = values.shape[1] if exact is None else exact
    exact = [_exact_group_sum(inv, values[:, j], w, G) for j in range(k)]
    exact += [(np.bincount(inv, values[:, j] if w is None else w * values[:, j], G), np.zeros(G))
              for j in range(k, values.shape[1])]
    total = np.column_stack([hi for hi, _ in exact])
    total_lo = np.column_stack([lo for _, lo in exact])
    mean = (total + total_lo) / n[:, None]
    step = len(inv) if rows is None else rows
    within, m2 = np.zeros((values.shape[1], values.shape[1])), np.zeros((G, values.shape[1]))
    for lo in range(0, len(inv), max(step, 1)):
        at = slice(lo, lo + step)
        dev = values[at] - mean[inv[at]]
        wdev = dev if w is None else dev * w[at, None]
        if spread:
            m2 += np.column_stack([np.bincount(inv[at], weights=wdev[:, j] * dev[:, j], minlength=G)
                                   for j in range(values.shape[1])])
        within += wdev.T @ dev
    return GroupMoments(uniq, n, mean, within, m2, total, total_lo, count, n_lo)


def _exact_group_sum(inv, v, w, G: int):
    """Σv (Σw·v with weights ``w``) per group as a double-double, exact but for far less
    than a rounding: each product w·v split exactly (``two_prod``), both parts summed by
    ``exact_bincount``."""
    if w is None:
        return exact_bincount(inv, v, G)
    p, e = two_prod(w, v)
    return dd_add(*exact_bincount(inv, p, G), *exact_bincount(inv, e, G))


#: Rows from which ``unique_rows`` codes the keys by hashing (pandas' factorize) rather
#: than sorting them (NumPy's lexsort): 3 × faster on 512K rows of two columns, not worth
#: importing pandas into a worker for fewer. The same groups, the same order.
FACTORIZE_ROWS = 1 << 16


def unique_rows(keys):
    """(unique rows in lexicographic order, the index of each row's) for a float array."""
    if keys.shape[0] >= FACTORIZE_ROWS:
        return _factorized_rows(keys)
    if keys.shape[1] == 1:
        uniq, inv = np.unique(keys[:, 0], return_inverse=True)
        return uniq[:, None], inv.ravel()
    order = np.lexsort(keys.T[::-1])
    s = keys[order]
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    new[1:] = (s[1:] != s[:-1]).any(axis=1)
    ids = np.cumsum(new) - 1
    inv = np.empty(len(s), dtype=np.int64)
    inv[order] = ids
    return s[new], inv


def _factorized_rows(keys):
    """``unique_rows`` by codes: each column's keys coded in sorted order, the codes
    combined column by column (recoded after each, so they stay below the rows), the
    unique rows read back at a row of each group."""
    import pandas as pd

    comb = None
    for c in range(keys.shape[1]):
        code, uniq = pd.factorize(keys[:, c], sort=True, use_na_sentinel=False)
        code = code.astype(np.int64)
        comb = code if comb is None else comb * len(uniq) + code
        comb, _ = pd.factorize(comb, sort=True)
    inv = comb.astype(np.int64)
    first = np.empty(int(inv.max()) + 1 if len(inv) else 0, dtype=np.int64)
    first[inv[::-1]] = np.arange(len(inv) - 1, -1, -1)  # each group's first row
    return keys[first], inv


def padded(g: GroupMoments, extra: int) -> GroupMoments:
    """``g`` with ``extra`` more columns of zeros (of sums nobody reads: a fast IRLS pass's
    z_lo and e/h)."""
    G, k = g.mean.shape
    zeros = np.zeros((G, extra))
    within = np.zeros((k + extra, k + extra))
    within[:k, :k] = g.within
    return g._replace(mean=np.hstack([g.mean, zeros]), m2=np.hstack([g.m2, zeros]), within=within,
                      total=np.hstack([g.total, zeros]), total_lo=np.hstack([g.total_lo, zeros]))


def merge_groups(a: GroupMoments, b: GroupMoments) -> GroupMoments:
    """Groups of two partial results, in key order; a group present in both merges by Chan,
    Golub & LeVeque (its between term joins ``within``)."""
    if len(a.n) == 0:
        return b._replace(within=a.within + b.within)
    if len(b.n) == 0:
        return a._replace(within=a.within + b.within)
    keys = np.concatenate([a.keys, b.keys])
    uniq, inv = unique_rows(keys)
    ia, ib = inv[:len(a.n)], inv[len(a.n):]
    G = len(uniq)
    n, count, n_lo = np.zeros(G), np.zeros(G), np.zeros(G)
    mean, m2, total, total_lo = (np.zeros((G, a.mean.shape[1])) for _ in range(4))
    n[ia], count[ia], n_lo[ia] = a.n, a.count, a.n_lo
    mean[ia] = a.mean
    m2[ia] = a.m2
    total[ia], total_lo[ia] = a.total, a.total_lo
    only_b = np.ones(G, dtype=bool)
    only_b[ia] = False
    both = ~only_b[ib]                     # b's groups that a has too
    jb = ib[~both]
    n[jb], count[jb], n_lo[jb] = b.n[~both], b.count[~both], b.n_lo[~both]
    mean[jb] = b.mean[~both]
    m2[jb] = b.m2[~both]
    total[jb], total_lo[jb] = b.total[~both], b.total_lo[~both]
    within = a.within + b.within
    if both.any():
        j = ib[both]
        na, nb = n[j], b.n[both]
        nab = na + nb
        delta = b.mean[both] - mean[j]
        mean[j] = mean[j] + delta * (nb / nab)[:, None]
        n[j], n_lo[j] = dd_add(na, n_lo[j], nb, b.n_lo[both])
        count[j] += b.count[both]
        within = within + (delta * (na * nb / nab)[:, None]).T @ delta
        m2[j] = m2[j] + b.m2[both] + delta ** 2 * (na * nb / nab)[:, None]
        total[j], total_lo[j] = dd_add(total[j], total_lo[j], b.total[both], b.total_lo[both])
    return GroupMoments(uniq, n, mean, within, m2, total, total_lo, count, n_lo)
