"""Logistic (and the log-link families) with categorical features: Newton passes whose
Hessian the client assembles from per-level sums (``kernels.level_newton``), certified
as any Newton run (``certify.LocalBound``) over the parameters [numeric features,
non-reference levels, intercept]. The levels come from ``prepare``'s grouped pass; the
encoding (reference: the most frequent level) is least squares' (``optimization.categorical``).

The levels' indicators are not standardized (center 0, scale 1), so their coefficients
are the model's own. The largest column's levels stay a diagonal block of the Hessian
(no row has two of them) from ``ABSORB_FROM`` levels on, or where all the non-reference
levels together are more than ``MAX_NEWTON_LEVELS``; everything then goes through the
Schur complement of the rest (``optimization.hessians``): the step, and the
certificate's λmin (a bisection lower bound), Newton decrement and per-coefficient
(H⁻¹)_jj, so memory and time grow with that column's levels, not their square. Below,
the Hessian is dense over all parameters.

The certificate carries each level's rounding from its own rows
(``hessians.FoldedHessian``), and a row's terms are long double's with the gradient
summed exactly (``kernels.level_newton``): on 20 rows a level the bound went from 7
digits to 12.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..artifacts.glm_summary import summarize_glm_levels
from ..data.read import level_key
from ..data.write import OffsetColumn
from ..kernels.irls import U_ROW
from ..kernels.level_newton import assemble, cells
from ..optimization import categorical as cat
from ..optimization.certify import CHAIN_ETA, EXACT_SUM_ROUNDINGS, LocalBound
from ..optimization.descent import Rules
from ..optimization.hessians import BlockHessian, DenseHessian, FoldedHessian
from ..optimization.newton import NEWTON_PASSES, Newton, start_params
from ..optimization.setup import Setup
from .categorical import column_doc, report_pinned
from .prepare import exposure_error, target_error
from .separation import level_tables, set_aside, start_intercept

log = logging.getLogger(__name__)

#: Non-reference levels a Newton run's Hessian is dense over: past them, the largest
#: column's levels form a diagonal block (``optimization.hessians``) and the other
#: columns' levels stay within this.
MAX_NEWTON_LEVELS = cat.MAX_DENSE_LEVELS
#: Non-reference levels of the largest column from which its block of the Hessian is
#: diagonal even where the whole would fit densely: the dense k × k factorizations and
#: eigenvalues took 1.7 s a pass on 1,969 levels, the diagonal block 0.04 s.
ABSORB_FROM = 100
#: Cells of Σℓ'' per pair of levels of the largest column and another, per task (8 bytes
#: each): 32 MB.
MAX_PAIR_CELLS = 4_000_000


def fit_categorical_newton(cfg, prep, t0: float, on_epoch=None, init=None, init_levels=None):
    """A ``FitResult`` for a self-concordant loss with categorical features; ``init``
    (m, b) and ``init_levels`` (model.json's ``categorical``): a warm start."""
    from .training import FitResult, convergence_report, finish

    columns = list(prep.source.categorical)
    enc = cat.encode(prep.groups, columns, names=prep.level_names)
    widths = [len(lv) for lv in enc.levels]
    starts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
    keep = np.concatenate([starts[c] + enc.non_reference(c) for c in range(len(columns))])
    if len(columns) >= 2 and not _fits(widths, keep.size):  # two large columns (and others: ``many_way``)
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
    absorbed = _absorbed(widths, keep.size)
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
        out = assemble(s, widths, keep, absorbed)
        return _folded(out, s, enc, widths, keep, d, certifier.hess_eta) if not cfg.model.l2 else out

    certifier = LocalBound(None, np.append(sc.center, np.zeros(k)), np.append(sc.scale, np.ones(k)), True,
                           prep.mom.n)
    # A row's η adds its numeric terms, one level per column and its offset; its terms are
    # long double's, the gradient's sums exact (``kernels.level_newton``).
    certifier.row_terms = d + len(columns) + int(bool(prep.source.offset))
    certifier.row_unit, certifier.sum_roundings = U_ROW, EXACT_SUM_ROUNDINGS
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
    docs = [column_doc(enc, c, per_column[c], full, sep) for c in range(len(columns))]
    tables = level_tables(full, enc, sep, per_column)
    if prep.source.offset:
        tables.append(OffsetColumn(cfg.data.offset_column, prep.source.offset == "log"))
    metrics = prep.ex.level_metrics(np.asarray(m, dtype=np.float64), float(b), tables)
    info = None
    if state.converged and not setup.loss.canonical and not cfg.model.l2:  # Fisher's ≠ the observed curvature
        s, pearson = prep.ex.level_newton_sums(cat_idx, enc.levels, theta[:d], float(theta[-1]), coef, sc.center,
                                               sc.scale, False, information=True, drop=drop)
        info = (assemble(s, widths, keep, absorbed).hess, pearson)
    kept = loop.kept
    if kept is not None and isinstance(kept.hess, FoldedHessian):  # the summary's: as ``assemble`` gave it
        inner = kept.hess.inner
        kept = kept._replace(hess=inner.matrix if isinstance(inner, DenseHessian) else inner)
    if setup.loss.name == "squared" and kept is not None and not cfg.model.l2:  # ``strategy: stream``
        info = (kept.hess, float(metrics["mse"]) * float(prep.mom.n))  # Gaussian: φ = SSR/(n − k), as OLS's σ²
    summary = _summary(cfg, setup, state, kept, m, b, coef[keep], enc, keep, starts, docs, info,
                       sep.groups.count.sum())
    prep.release()
    return FitResult(
        m=np.asarray(m, dtype=np.float64), b=float(b), epochs_run=state.epoch, converged=state.converged,
        final_loss=metrics[setup.loss.metric], learning_rate=1.0, momentum=0.0, strategy="newton",
        metrics=metrics, history=state.history, params=theta.astype(np.float64), curvature=setup.curv,
        seconds=time.perf_counter() - t0, source=prep.source, rows_dropped=prep.rows_dropped,
        convergence=convergence_report(cfg, state, certifier),
        summary=summary, categorical=docs)


def _folded(out, s, enc, widths, keep, d: int, eta: float):
    """The assembled pass ``out`` with its Hessian a ``FoldedHessian`` through the
    largest column's levels (the absorbed one where there is one), so that the
    certificate carries each level's rounding from its own rows; ``out`` as it is where a
    level of that column besides its reference is held at 0 (``pinned``)."""
    column = int(np.argmax(widths))
    starts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
    keep = np.asarray(keep, dtype=np.int64)
    in_col = (keep >= starts[column]) & (keep < starts[column] + widths[column])
    if int(in_col.sum()) != widths[column] - 1:
        return out
    k = d + len(keep) + 1
    levels = d + np.flatnonzero(in_col)
    rest = np.concatenate((np.arange(d), d + np.flatnonzero(~in_col)))
    hess = out.hess
    if isinstance(hess, BlockHessian):  # its rest: [numeric, other levels, intercept]
        inner, A = hess, hess.A[:-1, :-1]
    else:
        inner = DenseHessian(np.asarray(hess, dtype=np.float64)[:k, :k])
        A = inner.matrix[np.ix_(rest, rest)]
    scale_b = float(out.scale[-1])
    ref = starts[column] + enc.reference[column]
    share = float(s.level_scale[ref]) / scale_b if scale_b > 0 else 1.0
    folded = FoldedHessian(inner, cells(s, A, widths, keep, column), levels, enc.reference[column], rest,
                           min(share, 1.0), np.append(out.grad, out.err), eta)
    return out._replace(hess=folded)


def _fits(widths, levels: int) -> bool:
    """Whether the Hessian's dense part and the largest column's pairs with the others
    stay within ``MAX_NEWTON_LEVELS`` and ``MAX_PAIR_CELLS`` (``_absorbed``)."""
    if levels <= MAX_NEWTON_LEVELS:
        return True
    big = int(np.argmax(widths))
    pairs = max((widths[big] * w for c, w in enumerate(widths) if c != big), default=0)
    return levels - (widths[big] - 1) <= MAX_NEWTON_LEVELS and pairs <= MAX_PAIR_CELLS


def _absorbed(widths, levels: int) -> int | None:
    """The column whose levels' block of the Hessian stays diagonal (``BlockHessian``):
    the largest, where it has ``ABSORB_FROM`` non-reference levels or more, or all the
    non-reference levels together are more than ``MAX_NEWTON_LEVELS`` (the others' then
    within it, and the largest's pairs with each of them within ``MAX_PAIR_CELLS``:
    ``_fits``, else the IRLS steps take the job). None where the Hessian is dense."""
    big = int(np.argmax(widths))
    if levels <= MAX_NEWTON_LEVELS and widths[big] - 1 < ABSORB_FROM:
        return None
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
