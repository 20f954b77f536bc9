"""Logistic (and the log-link families) with categorical features: Newton passes whose
Hessian the client assembles from per-level sums (``kernels.level_newton``), certified
as any Newton run (``certify.LocalBound``) over the parameters [numeric features,
non-reference levels, intercept]. The levels come from ``prepare``'s grouped pass; the
encoding (reference: the most frequent level) is least squares' (``optimization.categorical``).

The levels' indicators are not standardized (center 0, scale 1), so their coefficients
are the model's own. The Hessian is dense over all parameters up to ``MAX_NEWTON_LEVELS``
non-reference levels together. Past that, the largest column's levels stay a diagonal
block (no row has two of them) and everything goes through the Schur complement of the
rest (``optimization.hessians``): the step, and the certificate's λmin (a bisection
lower bound), Newton decrement and per-coefficient (H⁻¹)_jj, so memory and time grow with
that column's levels, not their square.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..artifacts.glm_summary import summarize_glm_levels
from ..data.read import level_key
from ..data.write import OffsetColumn
from ..errors import DataError
from ..kernels.level_newton import assemble
from ..optimization import categorical as cat
from ..optimization.certify import (
    CHAIN_ETA,
    LEVEL_SUM_ROUNDINGS,
    PAIRWISE_ROUNDINGS,
    LocalBound,
)
from ..optimization.descent import Rules
from ..optimization.newton import NEWTON_PASSES, Newton, start_params
from ..optimization.setup import Setup
from .categorical import report_pinned
from .prepare import exposure_error, target_error
from .separation import column_doc, level_tables, set_aside, start_intercept

log = logging.getLogger(__name__)

#: Non-reference levels a Newton run's Hessian is dense over: past them, the largest
#: column's levels form a diagonal block (``optimization.hessians``) and the other
#: columns' levels stay within this.
MAX_NEWTON_LEVELS = cat.MAX_DENSE_LEVELS
#: Cells of Σℓ'' per pair of levels of the largest column and another, per task (8 bytes
#: each): 32 MB.
MAX_PAIR_CELLS = 4_000_000


def fit_categorical_newton(cfg, prep, t0: float, on_epoch=None, init=None, init_levels=None):
    """A ``FitResult`` for a self-concordant loss with categorical features; ``init``
    (m, b) and ``init_levels`` (model.json's ``categorical``): a warm start."""
    from .training import FitResult, convergence_report, finish

    columns = list(prep.source.categorical)
    enc = cat.encode(prep.groups, columns, limit=False, names=prep.level_names)
    widths = [len(lv) for lv in enc.levels]
    starts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
    keep = np.concatenate([starts[c] + enc.non_reference(c) for c in range(len(columns))])
    if len(columns) == 2 and not _fits(widths, keep.size):
        from .categorical_irls import fit_two_way_newton

        return fit_two_way_newton(cfg, prep, enc, t0, on_epoch, init, init_levels)
    setup = Setup.of(cfg.model, cfg.optimizer, prep.mom)
    full = enc
    # With l2 every coefficient has a finite optimum: nothing is set aside.
    sep, enc = set_aside(setup.loss if not cfg.model.l2 else None, prep.groups, enc)
    if sep.rows:
        widths = [len(lv) for lv in enc.levels]
        starts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
        keep = np.concatenate([starts[c] + enc.non_reference(c) for c in range(len(columns))])
    drop = sep.keys if sep.rows else None
    report_pinned(enc)
    absorbed = _absorbed(cfg, columns, widths, keep.size)
    sc = setup.scaling
    d, k = sc.center.shape[0], keep.size
    cat_idx = [prep.source.columns.index(c) for c in columns]
    L = int(sum(widths))

    def oracle(m_all, b, final, data_terms):
        coef = np.zeros(L)
        coef[keep] = m_all[d:]
        s = prep.ex.level_newton_sums(cat_idx, enc.levels, m_all[:d], b, coef, sc.center, sc.scale, data_terms,
                                      drop=drop)
        if s.num.bad_targets[0]:
            raise target_error(cfg, *s.num.bad_targets)
        if s.num.bad_exposures[0]:
            raise exposure_error(cfg, *s.num.bad_exposures)
        return assemble(s, widths, keep, absorbed)

    certifier = LocalBound(None, np.append(sc.center, np.zeros(k)), np.append(sc.scale, np.ones(k)), True,
                           prep.mom.n)
    # A row's η adds its numeric terms, one level per column and its offset.
    certifier.row_terms = d + len(columns) + int(bool(prep.source.offset))
    certifier.sum_roundings = np.concatenate(([PAIRWISE_ROUNDINGS] * d, [LEVEL_SUM_ROUNDINGS] * k,
                                              [PAIRWISE_ROUNDINGS]))  # the levels' Σψ: exact sums
    certifier.hess_eta = certifier.eta + CHAIN_ETA  # the levels' Σℓ'': bincount's chains
    loop = Newton(oracle, certifier, Rules.of(cfg.model, cfg.optimizer))
    b0 = start_intercept(setup.loss, sep, prep.offset_mean)
    epochs = NEWTON_PASSES if cfg.optimizer.epochs == "auto" else cfg.optimizer.epochs
    start = start_params(d + k, True, b0)
    if init is not None:  # the current model's levels against this window's references
        levels, b_init = warm_levels(init_levels, enc, float(init[1]))
        theta = setup.initial_params((np.asarray(init[0], dtype=np.float64), b_init), extended=False)
        start = np.concatenate((theta[:d], levels[keep], theta[d:]))
    state = loop.run(loop.start(start), passes=epochs, tol=cfg.optimizer.tol, on_epoch=on_epoch)
    state = finish(cfg, setup, state, certifier, None, epochs, on_epoch)
    theta = state.params
    m, b = sc.to_original(theta[:d], float(theta[-1]))
    coef = np.zeros(L)
    coef[keep] = theta[d:-1]
    per_column = [coef[starts[c]:starts[c] + widths[c]] for c in range(len(columns))]
    docs = [column_doc(full, enc, sep, c, per_column[c]) for c in range(len(columns))]
    tables = level_tables(full, enc, sep, per_column)
    if prep.source.offset:
        tables.append(OffsetColumn(cfg.data.offset_column, prep.source.offset == "log"))
    metrics = prep.ex.level_metrics(np.asarray(m, dtype=np.float64), float(b), tables)
    info = None
    if state.converged and not setup.loss.canonical and not cfg.model.l2:  # Fisher's ≠ the observed curvature
        s, pearson = prep.ex.level_newton_sums(cat_idx, enc.levels, theta[:d], float(theta[-1]), coef, sc.center,
                                               sc.scale, False, information=True, drop=drop)
        info = (assemble(s, widths, keep, absorbed).hess, pearson)
    summary = _summary(cfg, setup, state, loop.kept, m, b, coef[keep], enc, keep, starts, docs, info,
                       sep.groups.count.sum())
    prep.release()
    return FitResult(
        m=np.asarray(m, dtype=np.float64), b=float(b), epochs_run=state.epoch, converged=state.converged,
        final_loss=metrics[setup.loss.metric], learning_rate=1.0, momentum=0.0, strategy="newton",
        metrics=metrics, history=state.history, params=theta.astype(np.float64), curvature=setup.curv,
        seconds=time.perf_counter() - t0, source=prep.source, rows_dropped=prep.rows_dropped,
        convergence=convergence_report(cfg, state, certifier),
        summary=summary, categorical=docs)


def _fits(widths, levels: int) -> bool:
    """Whether the Hessian's dense part and the largest column's pairs with the others
    stay within ``MAX_NEWTON_LEVELS`` and ``MAX_PAIR_CELLS`` (``_absorbed``)."""
    if levels <= MAX_NEWTON_LEVELS:
        return True
    big = int(np.argmax(widths))
    pairs = max((widths[big] * w for c, w in enumerate(widths) if c != big), default=0)
    return levels - (widths[big] - 1) <= MAX_NEWTON_LEVELS and pairs <= MAX_PAIR_CELLS


def _absorbed(cfg, columns, widths, levels: int) -> int | None:
    """The column whose levels' block of the Hessian stays diagonal (``BlockHessian``):
    the largest, where all the non-reference levels together are more than
    ``MAX_NEWTON_LEVELS``; the others' stay within it, and the largest's pairs with each
    of them within ``MAX_PAIR_CELLS``. None where the Hessian is dense."""
    if levels <= MAX_NEWTON_LEVELS:
        return None
    big = int(np.argmax(widths))
    rest = levels - (widths[big] - 1)
    if not _fits(widths, levels):
        others = [c for i, c in enumerate(columns) if i != big]
        raise DataError(f"categorical features ({', '.join(others)}): {rest} levels besides the references "
                        f"beside '{columns[big]}'; model.loss {cfg.model.loss} takes at most {MAX_NEWTON_LEVELS} "
                        "together besides its largest column's")
    return big


def _summary(cfg, setup, state, kept, m, b, level_coef, enc, keep, starts, docs, info=None, nobs=None) -> dict:
    """model.json's ``summary``: a row per numeric feature, per non-reference level
    (``region[north]``) and the intercept, from Fisher's information at the fitted
    coefficients: the last pass's Hessian for logistic and Poisson, ``info`` (its own
    pass's, with Pearson's χ²) for Gamma and Tweedie; ``nobs``: the rows."""
    if not state.converged or kept is None:
        return {"available": False, "reason": "not converged: these statistics hold at the maximum of the likelihood"}
    if cfg.model.l2:
        return {"available": False, "reason": "penalized fit (l2): the likelihood's covariance does not apply"}
    names = [f for f in cfg.data.features if f not in enc.columns]
    for g in keep:
        c = int(np.searchsorted(starts, g, side="right") - 1)
        names.append(f"{enc.columns[c]}[{docs[c]['levels'][g - starts[c]]}]")
    coef = np.concatenate((m, level_coef, [b]))
    doc = summarize_glm_levels(kept, setup.loss, coef, names + ["b"], setup.scaling.center, setup.scaling.scale,
                               info, float(nobs))
    return {"available": True, **doc}


def warm_levels(init_levels: list[dict] | None, enc, b: float) -> tuple[np.ndarray, float]:
    """The current model's level coefficients over the window's levels (``enc``, all
    columns' levels one after another) re-expressed against the window's reference
    levels, and the intercept that keeps every prediction: (coefficients, b). A level the
    current model never saw starts at 0, its reference's effect."""
    by_name = {doc["name"]: doc for doc in init_levels or ()}
    coef = []
    for c, col in enumerate(enc.columns):
        doc = by_name.get(col) or {"levels": [], "coef": []}
        old = {level_key(v): float(a) for v, a in zip(doc["levels"], doc["coef"])}
        a = np.array([old.get(float(k), 0.0) for k in enc.levels[c]])
        shift = a[enc.reference[c]]
        coef.append(a - shift)
        b += shift
    return (np.concatenate(coef) if coef else np.zeros(0)), b
