"""Training with categorical features: the grouped moments of ``prepare`` reduced to an
ordinary problem (``optimization.categorical``), trained and certified as gram training
is (``fit_moments``), and every level's coefficient recovered with its error bound."""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from ..artifacts.summary import RowSums, summarize_levels, summarize_two_way
from ..data.write import LevelTable
from ..errors import ConfigError, DataError
from ..kernels.metrics import sse_metrics
from ..optimization import categorical as cat
from ..optimization import many_way, two_way
from ..optimization.certify import (
    EPS,
    EPS_LONG,
    ZERO_FLOOR,
    CoefficientBound,
    U,
    digits,
)
from ..optimization.descent import Rules, gradient_at
from ..optimization.setup import Setup

log = logging.getLogger(__name__)

#: Solves of the reduced problem, each tighter, until the derived bounds meet tol.
TIGHTEN_ROUNDS = 4
#: Roundings of a level's numeric mean (``level_mean_error``): the long-double sums of its
#: groups' double-doubles (a few units of 2⁻⁶⁴ each), the division, the float64 result;
#: counted generously.
LEVEL_MEAN_ROUNDINGS = 4


def fit_categorical(cfg, prep, t0: float, on_epoch=None, summary: bool = True, report: bool = True):
    """A ``FitResult`` for data with categorical features (``prep.groups``): m for the
    numeric features, b at every column's reference level, and ``categorical`` for
    model.json (``summary``: False leaves it out, for a solve within Huber's rounds;
    ``report``: False leaves out the line on unlinked sets of levels, said once already)."""
    from .training import fit_moments

    columns = list(prep.source.categorical)
    enc = cat.encode(prep.groups, columns, names=prep.level_names)
    if report:
        report_pinned(enc)
    if cat.dense_levels(enc) > cat.MAX_DENSE_LEVELS:  # past the dense reduced problem
        return (_two_way if len(columns) == 2 else _many_way)(cfg, prep, enc, t0, summary)
    red = cat.reduce(prep.groups, enc)
    _check_within(cfg, red, enc, prep.mom)
    tol = cfg.optimizer.tol
    if red.mom.mean.shape[0] == 1:  # nothing but levels: each a_ℓ is its level's mean
        return _levels_only(cfg, prep, red, enc, t0, summary)
    reduced_tol, init = tol, None
    for _ in range(TIGHTEN_ROUNDS):
        o = cfg.optimizer.model_copy(update={"tol": reduced_tol})
        reduced_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"fit_intercept": False}),
                                             "optimizer": o})
        with _quiet(init is not None):  # a tightened round's own stall is reported below
            res = fit_moments(reduced_cfg, red.mom, init=init, on_epoch=on_epoch)
        coef = cat.recover(res.m, red, enc)
        convergence, converged = _convergence(res, reduced_cfg, red, enc, coef, tol)
        bound = convergence.get("bound")
        if converged or not res.converged or bound is None or tol <= 0:
            break
        # The intercept's and the absorbed levels' bounds sum the reduced coefficients'
        # errors: solve the reduced problem tighter, from where it stopped (no pass).
        reduced_tol, init = reduced_tol * tol / bound / 4, (res.m, 0.0)
    convergence["tol"] = tol
    if (not converged and len(columns) == 2 and tol > 0 and not cfg.model.l2
            and cfg.optimizer.learning_rate == "auto"):
        # The reduced problem's float64 moments stopped short; the two-column solver
        # refines from the groups in double-double. (A learning rate of the user's, as a
        # sweep sets, asks for the descent itself.)
        alt = two_way.fit_two_way(prep.groups, enc, tol)
        if alt.bound < (convergence.get("bound") or np.inf):
            return _two_way(cfg, prep, enc, t0, summary, alt, red)
    if not converged and convergence.get("bound") is not None and res.converged is False and init is not None:
        log.warning("not converged: the coefficients reached %.1f digits of %.1f; the smallest levels' "
                    "coefficients are limited by float64 group sums (the reduced problem is at its rounding "
                    "floor); the model is saved with converged: false", convergence["digits"] or 0.0, -np.log10(tol))
    mom = prep.mom
    sse = res.metrics["mse"] * mom.n
    sst = float(mom.comoment[-1, -1])
    metrics = dict(res.metrics, r2=1.0 - sse / sst if sst > 0 else 0.0)
    theta = np.asarray(res.m, dtype=np.float64)
    res.m, res.b = coef.m, coef.b
    res.converged, res.convergence = converged, convergence
    res.metrics = metrics
    res.source, res.rows_dropped = prep.source, prep.rows_dropped
    res.categorical = [column_doc(enc, c, coef.levels[c]) for c in range(len(columns))]
    res.summary = _summary(cfg, res, red, enc, coef, theta, columns, sst, prep) if summary else None
    res.seconds = time.perf_counter() - t0
    return res


def _check_within(cfg, red: cat.Reduced, enc: cat.Encoding, mom) -> None:
    """A numeric feature constant within every level of the absorbed column (each
    level's rows share one value: a level's own attribute, or one row a level) has
    nothing left once the levels are absorbed: one line naming it, rather than a
    reduced problem whose curvature is 0 (it crashed on NaN)."""
    numeric = [f for f in cfg.data.features if f not in enc.columns]
    S = red.mom.comoment
    for j, name in enumerate(numeric[:red.d]):
        if not S[j, j] > 1e-12 * float(mom.comoment[j, j]):
            raise DataError(f"feature '{name}' is constant within every level of '{enc.columns[enc.absorbed]}': its "
                            "coefficient cannot be told from the levels'; drop the feature or the column")


def _summary(cfg, res, red, enc, coef, theta, columns, sst: float, prep) -> dict:
    """model.json's summary (``summary.summarize_levels``) where it holds: at the
    least-squares solution, nonrobust or HC1 standard errors (``prep``: the training rows,
    for weighted data's row count and Σ log w, and HC1's middle)."""
    if not res.converged:
        return {"available": False, "reason": "not converged: these statistics hold at the least-squares solution"}
    if cfg.model.l2:
        return {"available": False, "reason": "penalized fit (l1/l2): the coefficients are biased and the "
                                              "classical covariance does not apply"}
    hc1 = cfg.summary.cov_type == "HC1"
    if (cfg.data.weight or hc1) and prep.ex is None:  # a refit from cached moments: no rows at hand
        return {"available": False, "reason": "computed by train: weighted statistics and HC1 need a pass over "
                                              "the rows"}
    numeric = [f for f in cfg.data.features if f not in columns]
    levels = [doc["levels"] for doc in res.categorical]
    # Weighted: nobs counts the rows of positive weight (those of weight 0 are left out of
    # the groups); Σ log w takes one more pass.
    rows = RowSums(int(prep.groups.count.sum()), prep.ex.row_sums()[1]) if cfg.data.weight else None
    meat = _level_meat(res, red, enc, prep) if hc1 else None
    return {"available": True, **summarize_levels(red, enc, coef, theta, numeric, levels, sst, rows, meat)}


def _level_meat(res, red: cat.Reduced, enc: cat.Encoding, prep):
    """HC1's middle at the fitted model: one pass (``kernels.level_meat``)."""
    tables = [LevelTable(doc["name"], doc["levels"], doc["coef"]) for doc in res.categorical]
    a = enc.absorbed
    d = len(res.m)
    others, first = [], d
    for c, idx in red.indicator:
        others.append((enc.columns[c], enc.levels[c][idx], first))
        first += len(idx)
    return prep.ex.level_meat(res.m, res.b, tables, (enc.columns[a], enc.levels[a]), others,
                              red.level_mean[:, :-1])


def _levels_only(cfg, prep, red: cat.Reduced, enc: cat.Encoding, t0: float, summary: bool = True):
    """A model of categorical features only: the intercept and the absorbed column's
    coefficients are level means (no descent); their error is the means' rounding."""
    from .training import FitResult

    coef = cat.recover(np.zeros(0), red, enc)
    mom, n = prep.mom, prep.mom.n
    sse, sst = float(red.mom.comoment[0, 0]), float(mom.comoment[-1, -1])
    err = level_mean_error(red, np.zeros(0))  # each level's mean, against the magnitudes it adds
    a = coef.levels[enc.absorbed]
    ref = enc.reference[enc.absorbed]
    sd_level = _level_sd(red)
    floor = ZERO_FLOOR * float(np.max(np.abs(a) * sd_level))
    worst = [err[ref] / max(abs(coef.b) - err[ref], floor, 1e-300)]
    others = np.delete(np.arange(len(a)), ref)
    if len(others):
        e = err[others] + err[ref]
        worst.append(float(np.max(e / np.maximum(np.abs(a[others]) - e, max(floor, 1e-300) / sd_level[others]))))
    bound = max(worst)
    metrics = sse_metrics(sse, sst, n)
    tol = cfg.optimizer.tol
    res = FitResult(m=np.zeros(0), b=coef.b, epochs_run=0, converged=bool(tol > 0 and bound <= tol),
                    final_loss=metrics["mse"], learning_rate=0.0, momentum=0.0, strategy="gram", metrics=metrics,
                    convergence={"criterion": "coefficients", "tol": tol, "bound": bound, "digits": digits(bound),
                                 "epochs": 0, "refinements": 0},
                    source=prep.source, rows_dropped=prep.rows_dropped)
    res.categorical = [column_doc(enc, c, coef.levels[c]) for c in range(len(enc.columns))]
    res.summary = _summary(cfg, res, red, enc, coef, np.zeros(0), enc.columns, sst, prep) if summary else None
    res.seconds = time.perf_counter() - t0
    return res


def _two_way(cfg, prep, enc: cat.Encoding, t0: float, summary: bool = True, fit=None, red=None, lifted=None):
    """Two categorical columns solved by conjugate gradients on the second column's levels,
    certified (``optimization.two_way``): when they have more levels besides the absorbed
    one's than the dense reduced problem takes, or when that problem stopped short of tol
    (``fit``: its result; ``red``: the reduced problem, whose summary then holds;
    ``lifted``: more columns, ``_many_way``'s)."""
    from .training import FitResult

    refuse_ridge(cfg, enc)
    tol = cfg.optimizer.tol
    fit = fit or two_way.fit_two_way(prep.groups, enc, tol)
    mom, n = prep.mom, prep.mom.n
    sst = float(mom.comoment[-1, -1])
    metrics = sse_metrics(fit.sse, sst, n)
    converged = bool(tol > 0 and fit.bound <= tol)
    if not converged and tol > 0:
        log.warning("not converged: the coefficients reached %.1f digits of %.1f (the certificate's rounding "
                    "floor for these levels); the model is saved with converged: false",
                    digits(fit.bound) or 0.0, -np.log10(tol))
    res = FitResult(m=fit.coef.m, b=fit.coef.b, epochs_run=0, converged=converged, final_loss=metrics["mse"],
                    learning_rate=0.0, momentum=0.0, strategy="gram", metrics=metrics,
                    convergence={"criterion": "coefficients", "tol": tol, "bound": fit.bound,
                                 "digits": digits(fit.bound), "epochs": 0, "refinements": fit.refinements,
                                 "solver": "conjugate gradients", "iterations": fit.iterations},
                    source=prep.source, rows_dropped=prep.rows_dropped)
    res.categorical = [column_doc(enc, c, fit.coef.levels[c]) for c in range(len(enc.columns))]
    if summary and red is not None:
        theta = np.concatenate([fit.coef.m] + [fit.coef.levels[c][idx] for c, idx in red.indicator])
        res.summary = _summary(cfg, res, red, enc, fit.coef, theta, enc.columns, sst, prep)
    elif summary:
        res.summary = _two_way_summary(cfg, res, fit, enc, sst, prep, lifted)
    res.seconds = time.perf_counter() - t0
    return res


def _many_way(cfg, prep, enc: cat.Encoding, t0: float, summary: bool = True):
    """Three categorical columns or more, two of many levels: the two-column solver with
    the others' levels as indicator columns (``optimization.many_way``)."""
    lifted = many_way.lift(prep.groups, enc)
    refuse_ridge(cfg, lifted.enc)
    report_pinned(lifted.enc)
    enc = many_way.pinned(lifted.enc, enc)
    fit = two_way.fit_two_way(lifted.groups, lifted.enc, cfg.optimizer.tol, identified=lambda sigma: (
        many_way.check_identified(sigma, lifted, enc)))
    errors = many_way.lower(fit.errors, lifted, enc) if fit.errors is not None else None
    fit = fit._replace(coef=many_way.lower(fit.coef, lifted, enc), errors=errors)
    return _two_way(cfg, prep, enc, t0, summary, fit, lifted=lifted)


def refuse_ridge(cfg, enc: cat.Encoding) -> None:
    """model.l2 with two categorical columns past the dense limit: one line."""
    if cfg.model.l2:
        raise ConfigError(f"model.l2 with the categorical features {enc.columns[0]!r} and {enc.columns[1]!r} "
                          f"({len(enc.levels[0])} and {len(enc.levels[1])} levels): ridge is supported with at most "
                          f"{cat.MAX_DENSE_LEVELS} levels outside the column with the most")


def _two_way_summary(cfg, res, fit, enc: cat.Encoding, sst: float, prep, lifted=None) -> dict:
    """The numeric slopes' rows with both columns' levels absorbed
    (``summary.summarize_two_way``), where they hold; ``lifted`` (``_many_way``): the
    smaller columns' levels have rows too, as the slopes'."""
    if not res.converged:
        return {"available": False, "reason": "not converged: these statistics hold at the least-squares solution"}
    hc1 = cfg.summary.cov_type == "HC1"
    if (cfg.data.weight or hc1) and prep.ex is None:  # a refit from cached moments: no rows at hand
        return {"available": False, "reason": "computed by train: weighted statistics and HC1 need a pass over "
                                              "the rows"}
    theta, names = res.m, [f for f in cfg.data.features if f not in enc.columns]
    if lifted is not None:
        theta = many_way.dense_block(fit.coef, lifted.indicator)
        names += [f"{enc.columns[c]}[{res.categorical[c]['levels'][i]}]" for c, i in lifted.names]
    d = len(theta)
    rows = RowSums(int(prep.groups.count.sum()), prep.ex.row_sums()[1]) if cfg.data.weight else None
    nobs = float(rows.rows if rows is not None else prep.mom.n)
    if d:
        scale = np.sqrt(np.maximum(np.diag(fit.sigma), 1e-300))
        inv = np.linalg.inv(fit.sigma / np.outer(scale, scale)) / np.outer(scale, scale)
    else:
        inv = np.zeros((0, 0))
    meat = None
    if hc1 and d:
        tables = [LevelTable(doc["name"], doc["levels"], doc["coef"]) for doc in res.categorical]
        x_levels, dummies = fit.x_levels, ()
        if lifted is not None:  # the fits over every column (0 on the smaller ones'), and the indicators
            width = lifted.d + len(lifted.names)
            x_levels = [many_way.lower(cat.Coefficients(np.zeros(width), 0.0, levels), lifted, enc).levels
                        for levels in fit.x_levels]
            dummies = [(c, LevelTable(res.categorical[c]["name"], res.categorical[c]["levels"],
                                      np.eye(len(res.categorical[c]["levels"]))[i])) for c, i in lifted.names]
        x_tables = [[LevelTable(doc["name"], doc["levels"], levels[c]) for c, doc in enumerate(res.categorical)]
                    for levels in x_levels]
        meat = prep.ex.two_way_meat(res.m, res.b, tables, x_tables, dummies)
    absorbed = lifted.enc.columns if lifted is not None else enc.columns
    return {"available": True, **summarize_two_way(theta, inv, names, absorbed, nobs, d + fit.params, fit.sse, sst,
                                                   rows, meat)}


@contextlib.contextmanager
def _quiet(on: bool):
    """Training's warnings off while ``on`` (the reduced problem's tightened rounds)."""
    logger = logging.getLogger("gd_dask.jobs.training")
    before = logger.level
    if on:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def _convergence(res, reduced_cfg, red: cat.Reduced, enc: cat.Encoding, coef: cat.Coefficients, tol: float):
    """The reduced problem's certificate extended to the intercept and the absorbed
    column's levels: each is a linear function uᵀθ of the reduced training-space
    parameters (a_ℓ = ȳ_ℓ − Σ_j (w̄_ℓj/σ_j)·θ_j), so ``certify``'s per-coefficient rule
    bounds it by ‖H⁻¹u‖·(‖∇J‖ + its rounding), plus the arithmetic of forming it."""
    conv = dict(res.convergence or {})
    if conv.get("bound") is None or res.params is None:
        return conv, False
    setup = Setup.of(reduced_cfg.model, reduced_cfg.optimizer, red.mom)
    certifier = setup.certifier()
    if not isinstance(certifier, CoefficientBound) or not certifier.certifiable:
        return conv, False
    params = np.asarray(res.params, dtype=np.float64)
    k = certifier.k
    rules = Rules.of(reduced_cfg.model, reduced_cfg.optimizer)
    grads = gradient_at(setup.gram.sums, params, rules)
    g = float(np.linalg.norm(np.asarray(grads[:k], dtype=np.float64))) + certifier.grad_error(params)
    scale = setup.scaling.scale
    U = (red.level_mean[:, :-1] / scale).T                # (k, L): a_ℓ's functional, up to sign
    ref = enc.reference[enc.absorbed]
    theta = np.asarray(res.m, dtype=np.float64)
    terms = np.abs(red.level_mean[:, :-1]) @ np.abs(theta) + np.abs(red.level_mean[:, -1])
    a = coef.levels[enc.absorbed]
    # Forming a_ℓ (long double, then float64) and the difference a_ℓ − a_ref; and the
    # level's means themselves (``level_mean_error``).
    rounding = 8 * EPS_LONG * terms + 2 * EPS * (np.abs(a) + abs(coef.b)) + level_mean_error(red, theta)
    err_b = certifier.inverse_norms(U[:, [ref]])[0] * g + rounding[ref]
    # The zero floor as ``certify`` sets it, in standardized units: a level is an
    # indicator column whose standard deviation is √(p(1 − p)).
    sd_level = _level_sd(red)
    s = max(float(np.max(np.abs(params[:k]))) if k else 0.0, float(np.max(np.abs(a) * sd_level)))
    floor = ZERO_FLOOR * s
    worst = [err_b / max(abs(coef.b) - err_b, floor)]
    others = np.delete(np.arange(len(a)), ref)
    if len(others):
        err = certifier.inverse_norms(U[:, others] - U[:, [ref]]) * g + rounding[others] + rounding[ref]
        worst.append(float(np.max(err / np.maximum(np.abs(a[others]) - err, floor / sd_level[others]))))
    bound = max(conv["bound"], *worst)
    conv.update(bound=float(bound), digits=digits(bound))
    # The bound holds at the final point whether or not the reduced problem's descent met
    # its own (tightened) tol: a stall just short of it is no reason to disown the model.
    return conv, bool(np.isfinite(bound) and bound <= tol)


def _level_sd(red: cat.Reduced) -> np.ndarray:
    """Each absorbed level's indicator column's standard deviation, √(p(1 − p))."""
    p = red.level_n / red.mom.n
    return np.sqrt(np.maximum(p * (1 - p), 1e-300))


def level_mean_error(red: cat.Reduced, theta) -> np.ndarray:
    """A bound on the rounding of a_ℓ = ȳ_ℓ − w̄_ℓ·θ from its level's means, against the
    magnitudes they add (each column's root mean square within the level,
    ``Reduced.level_rms``). A numeric column's level mean comes from its groups' exact
    sums (``kernels.groups``: each batch's sum exact but for m²·u²·σ, merged as
    double-doubles), added in long double, divided and rounded to float64:
    ``LEVEL_MEAN_ROUNDINGS``·u, plus a long-double rounding per group added. The
    indicators' level means are ratios of exact counts; with sample weights, float64 sums
    of their groups' Σw, one rounding per group, of positive terms (and the division).
    (A batch's remainders are summed within m²·u²·σ, σ ≤ 4 × the batch's Σ|z|: below u of
    a level's own values unless they are some 10¹⁰ times smaller than the batch's
    largest.)"""
    rms = red.level_rms
    eta = LEVEL_MEAN_ROUNDINGS * U + red.level_groups * EPS_LONG
    theta = np.abs(np.asarray(theta, dtype=np.float64))
    err = eta * (rms[:, -1] + rms[:, :-1] @ theta)
    if red.weighted:
        err = err + (red.level_groups + 2) * U * (rms[:, red.d:-1] @ theta[red.d:])
    return err


def column_doc(enc: cat.Encoding, c: int, coef: np.ndarray, full: cat.Encoding | None = None, sep=None) -> dict:
    """One categorical column as model.json holds it: levels (their text, or integer
    values) in key order, a coefficient per level (0 at the reference), and ``pinned``:
    the levels held at 0 as references of sets of levels linked to no other
    (``categorical.unlinked``), when there are any.

    With levels set aside (``sep``, a ``separation.Separated`` with rows; ``full``: the
    encoding before): their ``separated`` list ({level, target, round}), and after the
    levels above, those all of whose rows are at another column's separated levels, held
    at 0 (``pinned`` too: no row is left to fit them)."""
    levels = [enc.label(c, i) for i in range(len(enc.levels[c]))]
    doc = {"name": enc.columns[c], "levels": levels, "reference": levels[enc.reference[c]],
           "counts": [int(n) for n in enc.counts[c]], "coef": [float(v) for v in coef]}
    if enc.pinned is not None and len(enc.pinned[c]):
        doc["pinned"] = [levels[i] for i in enc.pinned[c].tolist()]
    if sep is None or not sep.rows:
        return doc
    keys = full.levels[c]
    where = np.searchsorted(keys, sep.keys[c])
    gone = np.zeros(len(keys), dtype=bool)
    gone[where] = True
    orphans = np.flatnonzero(~gone & ~np.isin(keys, enc.levels[c]))
    if len(orphans):
        labels = [full.label(c, int(i)) for i in orphans]
        doc["levels"] += labels
        doc["coef"] += [0.0] * len(orphans)
        doc["counts"] += [int(full.counts[c][i]) for i in orphans]
        doc["pinned"] = doc.get("pinned", []) + labels
    if len(where):
        doc["separated"] = [{"level": full.label(c, int(i)), "target": int(t), "round": int(r)}
                            for i, t, r in zip(where, sep.target[c], sep.rounds[c])]
    return doc


def report_pinned(enc: cat.Encoding) -> None:
    """One line when some levels are linked to no other through shared rows."""
    for c, pinned in enumerate(enc.pinned or ()):
        if len(pinned):
            log.warning("%d sets of levels of '%s' and '%s' share no rows with the rest (e.g. %r of '%s'): one level "
                        "of '%s' in each is held at 0 as that set's reference (model.json: pinned), which changes "
                        "no prediction", len(pinned), enc.columns[1 - c], enc.columns[c],
                        enc.label(c, int(pinned[0])), enc.columns[c], enc.columns[c])
