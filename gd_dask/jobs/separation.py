"""Levels of a GLM's categorical features whose coefficients have no finite optimum
(every row of the level 0, or 1 for logistic), set aside before Newton's method runs, as
fixest and pyfixest do; and model.json's and the scoring tables' account of them
(``data.write.separated_coefficient``)."""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from ..data.write import LevelTable, separated_coefficient
from ..errors import DataError
from ..optimization import categorical as cat
from ..kernels.groups import GroupMoments

log = logging.getLogger(__name__)


class Separated(NamedTuple):
    """The groups whose targets leave their levels' coefficients a finite optimum, and
    per column the levels whose do not: their keys, their rows' target (0 or 1) and the
    round that found them (``separate``); ``rows``: the rows left out with them."""

    groups: GroupMoments
    keys: list
    target: list
    rounds: list
    rows: int


def separate(loss, groups: GroupMoments) -> Separated:
    """Levels whose rows are all of one class (logistic) or all 0 (a count, a Tweedie
    amount) have no finite optimum (none with ``loss`` None: a penalized fit's all have
    one): the likelihood rises without end as their coefficient
    goes to ∓∞, where their rows are predicted exactly (loss 0) whatever the other
    coefficients. So the other coefficients' optimum is that of the rows left, as fixest
    and pyfixest fit fixed-effect GLMs; leaving rows out can leave another level all of
    one class, so this repeats, round after round, until none is (a row at levels of two
    rounds is the earlier's: ``data.write.separated_coefficient``). The groups left have
    no pooled within-group co-moment (NaN): for the encoding and the mean target only."""
    q = groups.keys.shape[1]
    inverse = [np.unique(groups.keys[:, c], return_inverse=True) for c in range(q)]
    found = [np.zeros(len(k), dtype=np.int64) for k, _ in inverse]  # the round, 0: none
    target = [np.zeros(len(k)) for k, _ in inverse]
    active = np.ones(len(groups.n), dtype=bool)
    if loss is not None and loss.target_rule in ("0 or 1", "≥ 0"):
        d = groups.mean.shape[1] - 1
        y = groups.total[:, d] + groups.total_lo[:, d]  # Σ w·y per group: exact for 0/1 and counts
        n = groups.n + groups.n_lo
        for r in range(1, len(groups.n) + 1):
            hit = []
            for c, (keys, inv) in enumerate(inverse):
                sy = np.bincount(inv, np.where(active, y, 0.0), len(keys))
                sn = np.bincount(inv, np.where(active, n, 0.0), len(keys))
                lo = (sn > 0) & (sy <= 0)
                hi = (sn > 0) & (sy >= sn) if loss.target_rule == "0 or 1" else np.zeros(len(keys), dtype=bool)
                found[c][lo | hi], target[c][hi] = r, 1.0
                hit.append((lo | hi)[inv])
            if not any(h.any() for h in hit):
                break
            for h in hit:
                active &= ~h
    rows = int(groups.count[~active].sum())
    kept = groups._replace(keys=groups.keys[active], n=groups.n[active], mean=groups.mean[active],
                           within=np.full_like(groups.within, np.nan), m2=groups.m2[active],
                           total=groups.total[active], total_lo=groups.total_lo[active],
                           count=groups.count[active], n_lo=groups.n_lo[active])
    return Separated(kept, [k[f > 0] for (k, _), f in zip(inverse, found)],
                     [t[f > 0] for t, f in zip(target, found)], [f[f > 0] for f in found], rows)


def set_aside(loss, groups: GroupMoments, enc) -> tuple:
    """(``separate``'s result, the encoding of the groups left): the levels of ``enc``
    whose coefficients have no finite optimum set aside and said in one line (``loss``
    None: a penalized fit, nothing set aside); one line where nothing is left."""
    sep = separate(loss, groups)
    if not sep.rows:
        return sep, enc
    if not len(sep.groups.n):
        raise DataError(f"model.loss {loss.name}: every level's rows are all of one class: nothing to fit")
    report_separated(sep, enc, loss)
    return sep, cat.encode(sep.groups, enc.columns, names=enc.names)


def start_intercept(loss, sep: Separated, offset_mean: float) -> float:
    """Newton's starting intercept: link(ȳ) over the rows left, less the offset's mean."""
    g = sep.groups
    d = g.mean.shape[1] - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(loss.link(np.array(float((g.total[:, d] + g.total_lo[:, d]).sum() / g.n.sum())))) - offset_mean


def report_separated(sep: Separated, enc, loss) -> None:
    """One line when some levels' coefficients are ±∞ (``separate``)."""
    counts = [len(k) for k in sep.keys]
    if not sum(counts):
        return
    c = int(np.argmax(counts))
    i = int(np.searchsorted(enc.levels[c], sep.keys[c][0]))
    what = "of one class" if loss.target_rule == "0 or 1" else "0"
    log.warning("%s: every row's target is %s (e.g. %r of '%s'), so their coefficients are ±inf (model.json: "
                "separated) and their %d rows are predicted exactly; the other coefficients are fitted to the rest, "
                "as fixest does", ", ".join(f"{k} levels of '{col}'" for k, col in zip(counts, enc.columns) if k),
                what, enc.label(c, i), enc.columns[c], sep.rows)


def level_tables(full, enc, sep: Separated, levels) -> list:
    """The model's ``LevelTable``s over every level seen (``full``'s), from each column's
    coefficients over ``enc``'s levels (``levels``): a separated level's coefficient ±∞
    (``data.write.separated_coefficient``), a level with no row left 0 (``categorical.column_doc``)."""
    out = []
    for c, name in enumerate(enc.columns):
        keys = full.levels[c]
        coef = np.zeros(len(keys))
        coef[np.searchsorted(keys, enc.levels[c])] = levels[c]
        coef[np.searchsorted(keys, sep.keys[c])] = [separated_coefficient(t, r)
                                                    for t, r in zip(sep.target[c], sep.rounds[c])]
        out.append(LevelTable.of_keys(name, keys, coef))
    return out
