"""Least squares with three categorical columns or more, two of them of many levels
(store × product beside region and device). Pure NumPy on the client, from the grouped
moments (``kernels.groups``: one group per combination of levels seen).

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

Memory: the lifted groups hold G × (d + E + 1) values, G the combinations seen, so the
smaller columns' levels together are at most ``MAX_INDICATORS``.
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
    """groups : the grouped moments over the two large columns' keys, with an indicator
    column per smaller column's non-reference level between the numeric features and the
    target;  enc : the two large columns' encoding (the largest absorbed);  big : their
    indices among the categorical columns;  indicator : per smaller column, (its index,
    its non-reference levels) in indicator order;  d : the numeric features"""

    groups: GroupMoments
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


def indicators(enc: Encoding) -> int:
    """The non-reference levels outside the two largest columns."""
    big = largest_two(enc)
    return sum(len(enc.non_reference(c)) for c in range(len(enc.levels)) if c not in big)


def check(enc: Encoding) -> None:
    """Refuse more than ``MAX_INDICATORS`` levels outside the two largest columns."""
    E = indicators(enc)
    if E > MAX_INDICATORS:
        big = largest_two(enc)
        raise DataError(f"categorical features: {E} levels outside '{enc.columns[big[0]]}' and "
                        f"'{enc.columns[big[1]]}' (the two columns with the most levels); with "
                        f"{len(enc.columns)} categorical columns of which two have many levels, the others take at "
                        f"most {MAX_INDICATORS} together")


def lift(groups: GroupMoments, enc: Encoding, two: Encoding | None = None) -> Lifted:
    """``Lifted`` (module docstring) from the grouped moments of every categorical column
    and their encoding; ``two``: the two large columns' encoding, found already (an IRLS
    step's groups have the same keys as the first's)."""
    check(enc)
    big = largest_two(enc)
    G, k = groups.mean.shape
    d = k - 1
    indicator = indicator_columns(enc)
    E = sum(len(idx) for _, idx in indicator)
    ind = np.zeros((G, E))
    at = 0
    for c, idx in indicator:
        level = np.searchsorted(enc.levels[c], groups.keys[:, c])
        pos = np.searchsorted(idx, level)
        hit = (pos < len(idx)) & (idx[np.minimum(pos, len(idx) - 1)] == level)
        ind[np.flatnonzero(hit), at + pos[hit]] = 1.0
        at += len(idx)

    def spliced(v, middle):
        return np.concatenate((v[:, :d], middle, v[:, d:]), axis=1)

    within = np.zeros((k + E, k + E))
    keep = np.r_[0:d, d + E:k + E]
    within[np.ix_(keep, keep)] = groups.within
    keys = groups.keys[:, big]
    lifted = groups._replace(keys=keys, mean=spliced(groups.mean, ind), within=within,
                             m2=spliced(groups.m2, np.zeros((G, E))),
                             total=spliced(groups.total, groups.n[:, None] * ind),
                             total_lo=spliced(groups.total_lo, groups.n_lo[:, None] * ind))
    two = two if two is not None else two_columns(groups, enc)
    return Lifted(lifted, two, big, indicator, d)


def indicator_columns(enc: Encoding) -> list:
    """(column index, its non-reference levels) per column besides the two largest."""
    big = largest_two(enc)
    return [(c, enc.non_reference(c)) for c in range(len(enc.levels)) if c not in big]


def dense_block(coef: Coefficients, enc: Encoding) -> tuple:
    """(θ, names' parts): the slopes and the smaller columns' non-reference levels'
    coefficients, as the solver's dense block holds them, with (column, level index)
    for each indicator."""
    pairs = indicator_columns(enc)
    theta = np.concatenate([np.asarray(coef.m, dtype=np.float64)] + [np.asarray(coef.levels[c])[idx]
                                                                      for c, idx in pairs])
    return theta, [(c, int(i)) for c, idx in pairs for i in idx]


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


def raise_(coef: Coefficients, lifted: Lifted) -> Coefficients:
    """``lower``'s inverse: every column's coefficients as the two-column solver's
    (the indicators' appended to the slopes)."""
    m = np.concatenate([np.asarray(coef.m, dtype=np.float64)] + [np.asarray(coef.levels[c])[idx]
                                                                  for c, idx in lifted.indicator])
    return Coefficients(m, coef.b, [np.asarray(coef.levels[c]) for c in lifted.big])


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
