"""Least squares with three categorical columns or more, two of them of many levels
(store × product beside region and device), and each IRLS step's weighted least squares
with them (``jobs.categorical_irls``). Pure NumPy on the client, from the grouped moments
(``kernels.groups``: one group per combination of levels seen).

The two columns with the most levels go to the two-column solver (``optimization.
two_way``): the largest absorbed, the second by conjugate gradients on its levels. The
other columns' non-reference levels join the numeric features as indicator columns of
its dense block θ, whose Schur complement Σ is then (d + E) × (d + E). Within a group
an indicator is constant, exactly 0 or 1, so the lifted groups carry it exactly: its
mean is the indicator, its sum Σw (the group's own double-double), its within-group
co-moment 0. The solver and its certificate (``two_way_bounds``) are unchanged: they
judge each indicator's coefficient as a slope, against its own bound.

Two levels of the two large columns that no row links are pinned as with two columns
(``categorical.unlinked``): the smaller columns' terms are additive and do not tie
them. A level of a smaller column whose rows all fall in one level of a large column
leaves Σ singular: one line naming it.

Memory: the solver's data hold G × (d + E + 1) values, G the combinations seen, three
times (``LiftedGroups`` forms the indicators' columns a block at a time), so the smaller
columns' levels together are at most ``MAX_INDICATORS``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import DataError
from ..kernels.groups import GroupMoments
from .categorical import Coefficients, Encoding, unlinked

#: Non-reference levels of the columns besides the two largest, together: each is a
#: column of the two-column solver's dense block (G values, G the groups).
MAX_INDICATORS = 128


class Lifted(NamedTuple):
    """groups : ``LiftedGroups``;  enc : the two large columns' encoding (the largest absorbed);  big : their
    indices among the categorical columns;  indicator : per smaller column, (its index,
    its non-reference levels) in indicator order;  d : the numeric features"""

    groups: object  # LiftedGroups
    enc: Encoding
    big: list
    indicator: list
    d: int

    @property
    def names(self) -> list:
        """(column index, level index) per indicator column, in order."""
        return [(c, int(i)) for c, idx in self.indicator for i in idx]


def largest_two(enc: Encoding) -> list:
    """The indices of the two columns with the most levels, in column order (ties: the first)."""
    order = sorted(range(len(enc.levels)), key=lambda c: (-len(enc.levels[c]), c))
    return sorted(order[:2])


def check(enc: Encoding) -> None:
    """Refuse more than ``MAX_INDICATORS`` levels outside the two largest columns."""
    E = sum(len(idx) for _, idx in indicator_columns(enc))
    if E > MAX_INDICATORS:
        big = largest_two(enc)
        raise DataError(f"categorical features: {E} levels outside '{enc.columns[big[0]]}' and "
                        f"'{enc.columns[big[1]]}' (the two columns with the most levels); with "
                        f"{len(enc.columns)} categorical columns of which two have many levels, the others take at "
                        f"most {MAX_INDICATORS} together")


class LiftedGroups:
    """The grouped moments over the two large columns' keys, with an indicator column per
    smaller column's non-reference level between the numeric features and the target,
    formed ``block`` by block rather than held: an indicator's mean is 0 or 1, its sum the
    group's Σw (double-double), its spread 0. What ``two_way.TwoWay`` reads of a
    ``GroupMoments``: ``keys``, ``n``, ``n_lo``, ``count``, ``rows``, ``within``, ``block``."""

    def __init__(self, groups: GroupMoments, big: list, codes: list, E: int):
        """``codes``: per smaller column, each group's indicator (its position among all
        E), −1 at the reference level."""
        self.base, self.codes, self.E = groups, codes, E
        self.keys = groups.keys[:, big]
        self.n, self.n_lo, self.count, self.rows = groups.n, groups.n_lo, groups.count, groups.rows
        k = groups.within.shape[0]
        self.d = k - 1
        keep = np.r_[0:self.d, self.d + E:k + E]
        self.within = np.zeros((k + E, k + E))
        self.within[np.ix_(keep, keep)] = groups.within

    def indicators(self, J: slice) -> np.ndarray:
        """The indicators among the lifted columns ``J`` (G × |J|; 0 for the others)."""
        out = np.zeros((len(self.n), J.stop - J.start))
        lo, hi = max(J.start - self.d, 0), min(J.stop - self.d, self.E)
        for code in self.codes:
            rows = np.flatnonzero((code >= lo) & (code < hi))
            out[rows, code[rows] + self.d - J.start] = 1.0
        return out

    def block(self, J: slice) -> tuple:
        """(total, total_lo, mean, m2, exact) of the lifted columns ``J`` (``GroupMoments.
        block``): an indicator's mean is exact."""
        d, E = self.d, self.E
        g = self.base
        ind = self.indicators(J)
        col = np.arange(J.start, J.stop)
        src = np.where(col < d, col, np.where(col >= d + E, col - E, -1))
        real = src >= 0

        def pick(v, fill):
            out = fill.copy()
            out[:, real] = v[:, src[real]]
            return out

        return (pick(g.total, self.n[:, None] * ind), pick(g.total_lo, self.n_lo[:, None] * ind), pick(g.mean, ind),
                pick(g.m2, np.zeros_like(ind)), ~real)

    def indicator_sums(self, v: np.ndarray) -> np.ndarray:
        """Σ of v (G) over each indicator's groups (E)."""
        out = np.zeros(self.E)
        for code in self.codes:
            at = code >= 0
            out += np.bincount(code[at], v[at], self.E)
        return out


def lift(groups: GroupMoments, enc: Encoding, two: Encoding | None = None) -> Lifted:
    """``Lifted`` (module docstring) from the grouped moments of every categorical column
    and their encoding; ``two``: the two large columns' encoding, found already (an IRLS
    step's groups have the same keys as the first's)."""
    check(enc)
    big = largest_two(enc)
    indicator = indicator_columns(enc)
    codes, at = [], 0
    for c, idx in indicator:
        level = np.searchsorted(enc.levels[c], groups.keys[:, c])
        pos = np.searchsorted(idx, level)
        hit = (pos < len(idx)) & (idx[np.minimum(pos, len(idx) - 1)] == level)
        codes.append(np.where(hit, at + pos, -1))
        at += len(idx)
    lifted = LiftedGroups(groups, big, codes, at)
    two = two if two is not None else two_columns(groups, enc)
    return Lifted(lifted, two, big, indicator, groups.within.shape[0] - 1)


def indicator_columns(enc: Encoding) -> list:
    """(column index, its non-reference levels) per column besides the two largest."""
    big = largest_two(enc)
    return [(c, enc.non_reference(c)) for c in range(len(enc.levels)) if c not in big]


def dense_block(coef: Coefficients, indicator: list) -> np.ndarray:
    """θ as the solver's dense block holds it: the slopes, then the smaller columns'
    non-reference levels' coefficients (``indicator``: ``indicator_columns``)."""
    return np.concatenate([np.asarray(coef.m, dtype=np.float64)] + [np.asarray(coef.levels[c])[idx]
                                                                      for c, idx in indicator])


def two_columns(groups: GroupMoments, enc: Encoding) -> Encoding:
    """The two large columns' encoding (the largest absorbed), their unlinked sets of
    levels pinned as with two columns (``categorical.unlinked``)."""
    big = largest_two(enc)
    sizes = [len(enc.levels[c]) for c in big]
    absorbed = int(np.argmax(sizes))
    pick = [enc.levels[c] for c in big], [enc.counts[c] for c in big], [enc.reference[c] for c in big]
    columns = [enc.columns[c] for c in big]
    pinned = unlinked(groups._replace(keys=groups.keys[:, big]), columns, *pick, absorbed)
    return Encoding(columns, pick[0], pick[1], pick[2], absorbed, [enc.mass[c] for c in big], enc.names, pinned)


def lower(coef: Coefficients, lifted: Lifted, enc: Encoding) -> Coefficients:
    """The two-column solver's coefficients (or their bounds) over every column: the
    indicators' out of θ, 0 at each smaller column's reference level."""
    d = lifted.d
    levels = [None] * len(enc.levels)
    for i, c in enumerate(lifted.big):
        levels[c] = coef.levels[i]
    at = d
    for c, idx in lifted.indicator:
        full = np.zeros(len(enc.levels[c]))
        full[idx] = coef.m[at:at + len(idx)]
        levels[c] = full
        at += len(idx)
    return Coefficients(np.asarray(coef.m[:d]), coef.b, levels)


def to_solver(coef: Coefficients, lifted: Lifted) -> Coefficients:
    """``lower``'s inverse: every column's coefficients in the two-column solver's
    parameters (the indicators' appended to the slopes: ``dense_block``)."""
    return Coefficients(dense_block(coef, lifted.indicator), coef.b, [np.asarray(coef.levels[c]) for c in lifted.big])


def pinned(two: Encoding, enc: Encoding) -> Encoding:
    """``enc`` with the two large columns' pinned levels (``two``'s: ``categorical.
    unlinked``), none in the others'."""
    out = [np.zeros(0, dtype=np.int64) for _ in enc.levels]
    for i, c in enumerate(largest_two(enc)):
        if two.pinned is not None:
            out[c] = two.pinned[i]
    return enc._replace(pinned=out)


def check_identified(sigma: np.ndarray, lifted: Lifted, enc: Encoding) -> None:
    """An indicator with nothing left once the two large columns' levels are absorbed
    (every row of the level in one level of theirs) leaves Σ singular: one line naming
    the level, rather than a solve that fails."""
    d = lifted.d
    diag = np.diag(sigma)
    big = f"'{enc.columns[lifted.big[0]]}' and '{enc.columns[lifted.big[1]]}'"
    for j, (c, i) in enumerate(lifted.names):
        if not diag[d + j] > 1e-9 * max(float(enc.mass[c][i]), 1e-300):
            raise DataError(f"categorical feature '{enc.columns[c]}': level {enc.label(c, i)!r} cannot be told from "
                            f"the levels of {big} (its rows share one level of theirs); merge it into another level "
                            "or drop the column")
