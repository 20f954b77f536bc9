"""Least squares with categorical features, from grouped moments (``kernels.groups``):
the levels' encoding, the problem reduced to its numeric part, and the coefficients of
every level recovered from it. Pure NumPy on the client.

Encoding: against a reference level per column, with the intercept kept, as
statsmodels' ``C(col)`` and scikit-learn's ``OneHotEncoder(drop=…)`` do. The reference
is the most frequent level (ties: the smallest key), so the intercept is the prediction
for the most common case and the levels' coefficients are differences from it.

Solving without one-hot columns: the column with the most levels (A) is absorbed. Its
indicators together with the intercept span exactly "one intercept a_ℓ per level of A",
and least squares over them is the within transformation: every other column, the
target included, minus its mean over the rows of its A-level. What remains is an
ordinary least-squares problem without intercept over the numeric features and the
indicators of the other categorical columns, whose moments (``Moments`` with mean 0)
come from the groups without cancellation:

    S = Σ_g within-group co-moment + Σ_g n_g (w_g − w̄_ℓ(g))(w_g − w̄_ℓ(g))ᵀ

with ``w_g`` a group's means of [x, indicators, y] and ``w̄_ℓ`` its A-level's. The usual
gram descent solves and certifies it (the criterion ``coefficients``: the within
transformation is exact algebra, and S's rounding is that of co-moments formed the
same way). Then ``a_ℓ = ȳ_ℓ − w̄_ℓ·θ``, the intercept is ``a`` at A's reference level
and A's coefficients are ``a_ℓ − a_ref``. An error bound on θ bounds those too:
``|δa_ℓ| ≤ Σ_j |w̄_ℓj|·|δθ_j|``.

The other categorical columns' indicators are dense in the reduced problem: together at
most ``MAX_DENSE_LEVELS`` levels (any number of levels in the absorbed column); past
them, ``two_way`` (two columns) or ``many_way`` (more) take the problem.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import DataError
from ..kernels.groups import GroupMoments
from ..kernels.moments import Moments

#: Levels of the categorical columns other than the absorbed one, together (their
#: indicators are columns of the reduced dense problem).
MAX_DENSE_LEVELS = 2000
#: Groups processed at a time when forming the reduced co-moment.
BATCH_GROUPS = 8192


class Encoding(NamedTuple):
    """columns : names of the categorical features;  levels : per column, its level keys
    in key order;  counts : rows per level;  reference : per column, the index of its
    reference level;  absorbed : the index of the column whose levels are absorbed;
    mass : per column, Σw per level (``counts`` without sample weights);  names : a text
    level's key → its text (for messages);  pinned : per column, the levels held at 0
    besides its reference (``unlinked``)"""

    columns: list
    levels: list
    counts: list
    reference: list
    absorbed: int
    mass: list
    names: dict | None = None
    pinned: list | None = None

    def label(self, c: int, i: int):
        """Level i of column c as a user wrote it: its text, or its number."""
        key = float(self.levels[c][i])
        if self.names and key in self.names:
            return self.names[key]
        return key_value(key)

    def non_reference(self, c: int) -> np.ndarray:
        """Indices of column c's levels other than its reference (and its pinned levels)."""
        drop = [self.reference[c]] + ([] if not self.pinned else list(self.pinned[c]))
        return np.delete(np.arange(len(self.levels[c])), drop)


def key_value(key: float):
    """A numeric level's key as its value: an int where it is whole (integer and boolean
    columns), else the float."""
    return int(key) if float(key).is_integer() else float(key)


def encode(groups: GroupMoments, columns, names: dict | None = None) -> Encoding:
    """The levels seen, their counts, each column's reference level (most frequent;
    ties: smallest key), and the column to absorb (most levels; ties: first). Frequency
    counts rows, with sample weights too."""
    levels, counts, reference, mass = [], [], [], []
    for c in range(groups.keys.shape[1]):
        keys, inv = np.unique(groups.keys[:, c], return_inverse=True)
        n = np.bincount(inv.ravel(), weights=groups.count, minlength=len(keys))
        levels.append(keys)
        counts.append(n)
        mass.append(np.bincount(inv.ravel(), weights=groups.n, minlength=len(keys)))
        reference.append(int(np.argmax(n)))  # first maximum: the smallest key among ties
    absorbed = int(np.argmax([len(lv) for lv in levels]))
    pinned = unlinked(groups, columns, levels, counts, reference, absorbed)
    return Encoding(list(columns), levels, counts, reference, absorbed, mass, names, pinned)


def unlinked(groups: GroupMoments, columns, levels, counts, reference, absorbed: int) -> list | None:
    """With two categorical columns: per column, the levels held at 0 besides the
    reference. Levels of the two columns are linked when some row has both; a set of
    levels linked among themselves but to none outside (a user whose only items nobody
    else bought) can shift together, +c on one column's, −c on the other's, without
    changing a prediction. The reference pins the set it belongs to; each other set gets
    a reference of its own in the column not absorbed, its level with the most rows (ties:
    the smallest key), as fixest and reghdfe do. Predictions are unchanged. A column every
    level of which is a set of its own (its levels nest the absorbed one's) is refused by
    name."""
    if len(levels) != 2 or not len(groups.n):
        return None
    o = 1 - absorbed
    LA = len(levels[absorbed])
    la = np.searchsorted(levels[absorbed], groups.keys[:, absorbed])
    lb = LA + np.searchsorted(levels[o], groups.keys[:, o])
    label = _components(la, lb, LA + len(levels[o]))
    comp = label[LA:]
    free = comp != comp[reference[o]]
    pinned = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]
    if free.any():
        idx = np.nonzero(free)[0]
        order = idx[np.lexsort((idx, -counts[o][idx], comp[idx]))]    # by set, most rows first
        first = np.ones(len(order), dtype=bool)
        first[1:] = comp[order][1:] != comp[order][:-1]
        pinned[o] = np.sort(order[first])
    if len(levels[o]) > 1 and len(pinned[o]) == len(levels[o]) - 1:
        raise DataError(f"categorical features: '{columns[o]}' adds nothing to '{columns[absorbed]}': every level "
                        f"of '{columns[absorbed]}' has rows of a single level of '{columns[o]}', so the coefficients "
                        f"of '{columns[o]}' cannot be told from those of '{columns[absorbed]}'; drop '{columns[o]}'")
    return pinned


def _components(u, v, N: int) -> np.ndarray:
    """Connected components of the graph with edges u–v over N nodes: each node's label is
    its component's smallest node (minimum labels across edges, then pointer jumping)."""
    label = np.arange(N)
    while True:
        new = label.copy()
        low = np.minimum(label[u], label[v])
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new


def dense_levels(enc: Encoding) -> int:
    """The non-reference levels outside the absorbed column: the reduced problem's
    indicator columns."""
    return sum(len(enc.non_reference(c)) for c in range(len(enc.levels)) if c != enc.absorbed)


class Reduced(NamedTuple):
    """The problem with the absorbed column's levels eliminated.

    mom : Moments of [x (d), indicators (E), y] within the absorbed levels (mean 0)
    names : the reduced columns' names (features, then ``col[level]`` indicators)
    level_n : (L_A,) rows (Σw) per absorbed level;  level_mean : (L_A, d + E + 1) their means
    indicator : list of (column index, level indices) in indicator order
    level_rms : (L_A, d + E + 1) root mean square of each column's values within the level
    (the indicators': at most 1)
    level_groups : (L_A,) the groups each absorbed level's means add up
    weighted : whether rows carry sample weights (the indicators' level means are then
    float64 sums of weights, not ratios of exact counts)
    """

    mom: Moments
    level_n: np.ndarray
    level_mean: np.ndarray
    indicator: list
    level_rms: np.ndarray
    level_groups: np.ndarray
    weighted: bool = False

    @property
    def d(self) -> int:
        """The numeric features among the reduced columns (the indicators follow them)."""
        return self.level_mean.shape[1] - 1 - sum(len(idx) for _, idx in self.indicator)


def reduce(groups: GroupMoments, enc: Encoding) -> Reduced:
    """``Reduced`` from the grouped moments (module docstring)."""
    a = enc.absorbed
    G, k = groups.mean.shape
    d = k - 1
    level_idx = [np.searchsorted(enc.levels[c], groups.keys[:, c]) for c in range(len(enc.levels))]
    indicator, offsets = [], {}
    for c in range(len(enc.levels)):
        if c != a:
            offsets[c] = d + sum(len(idx) for _, idx in indicator)
            indicator.append((c, enc.non_reference(c)))
    E = sum(len(idx) for _, idx in indicator)
    D = d + E + 1

    def rows(lo, hi):
        """w_g for groups lo..hi: [x̄, indicators, ȳ]."""
        w = np.zeros((hi - lo, D))
        w[:, :d] = groups.mean[lo:hi, :d]
        w[:, -1] = groups.mean[lo:hi, d]
        for c, idx in indicator:
            if not len(idx):
                continue
            pos = np.searchsorted(idx, level_idx[c][lo:hi])      # position among non-reference levels
            hit = (pos < len(idx)) & (idx[np.minimum(pos, len(idx) - 1)] == level_idx[c][lo:hi])
            w[np.nonzero(hit)[0], offsets[c] + pos[hit]] = 1.0
        return w

    la = level_idx[a]
    L = len(enc.levels[a])
    num = list(range(d)) + [D - 1]
    level_n, numeric_mean, numeric_rms = numeric_level_means(groups, la, L)
    sums = np.zeros((L, D))
    for lo in range(0, G, BATCH_GROUPS):
        hi = min(G, lo + BATCH_GROUPS)
        np.add.at(sums, la[lo:hi], rows(lo, hi) * groups.n[lo:hi, None])
    level_mean = sums / level_n[:, None]
    level_mean[:, num] = numeric_mean
    level_rms = np.ones((L, D))
    level_rms[:, num] = numeric_rms
    S = np.zeros((D, D))
    S[np.ix_(num, num)] = groups.within
    for lo in range(0, G, BATCH_GROUPS):
        hi = min(G, lo + BATCH_GROUPS)
        dev = rows(lo, hi) - level_mean[la[lo:hi]]
        S += (dev * groups.n[lo:hi, None]).T @ dev
    _check_identifiable(S, enc, indicator, offsets, d)
    return Reduced(Moments(groups.moments_n, np.zeros(D), S), level_n, level_mean, indicator, level_rms,
                   np.bincount(la, minlength=L), not np.array_equal(groups.n, groups.count))


def numeric_level_means(groups: GroupMoments, la, L: int):
    """(Σw per level, the numeric columns' level means, their root mean squares within the
    level) for the levels ``la`` (each group's level index among L). Σw from the groups'
    exact double-doubles, in long double (the counts themselves without weights). The
    means from the groups' exact sums, added in long double (``level_mean_error``): about
    one rounding, where float64 means would carry every rounding of their levels' rows.
    Σ z² per level: its groups' own, plus between its groups."""
    level_n = np.zeros(L, dtype=np.longdouble)
    np.add.at(level_n, la, groups.n.astype(np.longdouble) + groups.n_lo.astype(np.longdouble))
    exact = np.zeros((L, groups.mean.shape[1]), dtype=np.longdouble)
    np.add.at(exact, la, groups.total.astype(np.longdouble))
    np.add.at(exact, la, groups.total_lo.astype(np.longdouble))
    mean = (exact / level_n[:, None]).astype(np.float64)
    level_n = level_n.astype(np.float64)
    sq = np.zeros((L, groups.mean.shape[1]))
    np.add.at(sq, la, groups.m2 + groups.n[:, None] * (groups.mean - mean[la]) ** 2)
    return level_n, mean, np.sqrt(mean ** 2 + sq / level_n[:, None])


def _check_identifiable(S, enc: Encoding, indicator, offsets, d: int) -> None:
    """An indicator constant within every level of the absorbed column (a level nested in
    one of its levels) has nothing left after the within transformation: refuse it by
    name rather than fit an arbitrary split."""
    a = enc.absorbed
    for c, idx in indicator:
        for pos, level in enumerate(idx):
            j = offsets[c] + pos
            if S[j, j] <= 1e-9 * enc.mass[c][level]:
                raise DataError(f"categorical features: level {enc.label(c, level)!r} of '{enc.columns[c]}' "
                                f"occurs within a single level of '{enc.columns[a]}' only: its coefficient "
                                f"cannot be told from that level's; drop one of the two columns")


class Coefficients(NamedTuple):
    """The full model: ``m`` numeric slopes, ``b`` intercept, and per categorical column an
    array of coefficients for its levels in key order (0 at the reference)."""

    m: np.ndarray
    b: float
    levels: list


def recover(theta, reduced: Reduced, enc: Encoding) -> Coefficients:
    """The model from the reduced solution θ = [m (d), indicator coefficients (E)] in
    original units (module docstring)."""
    theta = np.asarray(theta, dtype=np.float64)
    d = reduced.d
    a_level = reduced.level_mean[:, -1] - reduced.level_mean[:, :-1] @ theta
    ref = enc.reference[enc.absorbed]
    coef = [np.zeros(len(lv)) for lv in enc.levels]
    coef[enc.absorbed] = a_level - a_level[ref]
    pos = d
    for c, idx in reduced.indicator:
        coef[c][idx] = theta[pos:pos + len(idx)]
        pos += len(idx)
    return Coefficients(theta[:d], float(a_level[ref]), coef)


def level_error(theta_error, reduced: Reduced, enc: Encoding) -> np.ndarray:
    """Bounds on |δa_ℓ| for every absorbed level from bounds on |δθ| (absolute), and so on
    the intercept and the absorbed column's coefficients (twice: a_ℓ − a_ref)."""
    return np.abs(reduced.level_mean[:, :-1]) @ np.asarray(theta_error, dtype=np.float64)
