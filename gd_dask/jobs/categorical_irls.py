"""Logistic, Poisson, Gamma and Tweedie with two categorical columns of many levels each
(user × item), and other columns of few levels beside them (``optimization.many_way``:
their levels' indicators join the slopes): Newton's method as iteratively reweighted
least squares (IRLS), each step solved by the two-column least-squares solver
(``optimization.two_way``), so no level × level block exists anywhere, on the workers
or the client.

**A step.** At the model θ_c one pass groups the rows by their levels with each row
weighing h = ℓ''(η) and its working response z = η − ψ/h (``kernels.irls``). The
weighted least-squares fit of z is θ_c − Ĥ⁻¹ĝ: Newton's step, whose linear system the
solver solves to its certified accuracy. A step that raises the loss (measured by the
next pass) is halved, as damped Newton does, until it does not. Far from the minimum
(the last step moved a coefficient by more than ``PRECISE_BELOW``) only the step's
direction matters: its pass is float64 throughout and its solve one conjugate-gradient
system from θ_c (``two_way.solve_step``); the steps near it are certified.

**The certificate** (every coefficient, after the step from θ_c to θ_new). With v the
way from θ_c to the minimizer θ*, H̄ = ∫₀¹ F''(θ_c + s·v) ds and g the exact gradient
at θ_c, H̄·v = −g. Each row's curvature moves by at most a factor e^{±|x̃ᵢ·v|} along v
(|ℓ'''| ≤ ℓ'' for every family here, as ``certify.LocalBound`` uses), and the computed
Ĥ is within e^{±τ₀} of the exact one at θ_c (η's and ℓ''s rounding). So with the
step's residual r,

    Ĥ·(θ* − θ_new) = r + (Ĥ − H̄)·v + (ĝ − g),

where for v in a box |v| ≤ V entry by entry, τ = max_i |x̃ᵢ·v| ≤ Σ_j max|x_j|·V_j +
max V_A + max V_B, and |(Ĥ − H̄)·v|_j ≤ (e^{τ+τ₀} − 1)·τ·Σ_i ĥᵢ|x̃ᵢⱼ|, while |ĝ − g|_j ≤
Σ_i |x̃ᵢⱼ|·eᵢ from each row's rounding bound eᵢ. These add to the residual's bound and
the solver's own certificate (the M-matrix bound on S_BB⁻¹, ``two_way_bounds.carried``)
bounds θ* − θ_new entry by entry. Where |θ_new − θ_c| plus that bound lies within V,
every y with Ĥ⁻¹H̄(u)·y = −Ĥ⁻¹g for u in the box lies in it too, so (Brouwer) the map
u ↦ −H̄(u)⁻¹g has a fixed point in the box, which is θ* − θ_c (a convex loss has one
minimizer): the bound holds. V starts at twice the step and its first bound, and is
doubled at most twice.

Near the minimum τ is the size of the step, so the Hessian's change is second order
and the bound is the solver's and the rows' rounding, which the M-matrix bound gathers
over every level (some 300-fold on 2,100 × 1,950 levels of uniform popularity): hence
the rows' terms in long double (``kernels.irls``). On 1M rows with 20,000 × 20,000
levels the worst coefficient is certified to 6.6e-10 (9.2 digits).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..artifacts.glm_summary import FIXED_SCALE, summarize_two_way_glm
from ..data.write import OffsetColumn
from ..errors import TrainingError
from ..kernels import losses
from ..kernels.compensated import dd_add
from ..kernels.irls import U_ROW
from ..optimization import many_way, two_way
from ..optimization.certify import PSI_ROUNDINGS, U, digits
from ..optimization.newton import NEWTON_PASSES
from .categorical import column_doc, refuse_ridge, report_pinned
from .prepare import target_error
from .separation import level_tables, set_aside, start_intercept

log = logging.getLogger(__name__)

#: Halvings of one step, at most, before the run stops as not converged.
MAX_HALVINGS = 30
#: Doublings of the certificate's box (module docstring).
BOX_TRIES = 3
#: A step's relative change below which the certificate is tried.
CERTIFY_BELOW = 1e-3
#: A step's relative change after which the next is solved to be certified: its change
#: is then about the square, past where the certificate holds (some 1e-7).
PRECISE_BELOW = 1e-5


class _Model:
    """θ in the solver's parameters: slopes m, intercept b, every level's coefficient
    of each column (0 at its references)."""

    def __init__(self, m, b: float, levels):
        self.m, self.b = np.asarray(m, dtype=np.float64), float(b)
        self.levels = [np.asarray(v, dtype=np.float64) for v in levels]

    def toward(self, other: _Model, t: float) -> _Model:
        """self + t·(other − self)."""
        return _Model(self.m + t * (other.m - self.m), self.b + t * (other.b - self.b),
                      [x + t * (y - x) for x, y in zip(self.levels, other.levels)])

    def change(self, other: _Model) -> float:
        """The largest change of a coefficient, against the largest coefficient."""
        a = np.concatenate([self.m, [self.b], *self.levels])
        b = np.concatenate([other.m, [other.b], *other.levels])
        return float(np.max(np.abs(b - a)) / max(float(np.max(np.abs(b))), 1e-300))


def fit_two_way_newton(cfg, prep, enc, t0: float, on_epoch=None, init=None, init_levels=None):
    """A ``FitResult`` for a GLM family with two categorical columns past the dense
    Newton path (module docstring); ``init`` (m, b) and ``init_levels``: a warm start."""
    from .categorical_newton import warm_levels
    from .training import FitResult

    refuse_ridge(cfg, enc)
    loss = losses.of(cfg.model)
    tol = cfg.optimizer.tol
    d = prep.groups.mean.shape[1] - 1
    full = enc
    sep, enc = set_aside(loss, prep.groups, enc)
    layout = None
    if len(enc.columns) > 2:  # the two largest to the solver, the others' levels as indicators
        many_way.check(enc)
        layout = many_way.two_columns(sep.groups, enc)
        report_pinned(layout)
        enc = many_way.pinned(layout, enc)
    else:
        report_pinned(enc)
    offset = OffsetColumn(cfg.data.offset_column, prep.source.offset == "log") if prep.source.offset else None
    # η: the slopes' terms, b, a level per column (the smaller columns' too), the offset.
    row_terms = d + 1 + len(enc.columns) + int(offset is not None)
    model = _Model(np.zeros(d), start_intercept(loss, sep, prep.offset_mean), [np.zeros(len(lv)) for lv in enc.levels])
    if init is not None:  # the current model's levels against this window's references
        levels, b_init = warm_levels(init_levels, enc, float(init[1]))
        widths = np.cumsum([0] + [len(lv) for lv in enc.levels])
        model = _Model(init[0], b_init, [levels[widths[c]:widths[c + 1]] for c in range(len(enc.levels))])
    steps = _Steps(cfg, prep, loss, enc, full, sep, offset, row_terms, layout)
    model, bound = steps.run(model, warm=init is not None, t0=t0, on_epoch=on_epoch)
    history = steps.history
    converged = bool(tol > 0 and bound <= tol)
    if not converged:
        log.warning("not converged: %s after %d passes; the model is saved with converged: false",
                    f"the coefficients reached {digits(bound):.1f} digits of {-math.log10(tol):.1f}"
                    if math.isfinite(bound) and tol > 0 else "no certified bound", len(history))
    docs = [column_doc(enc, c, model.levels[c], full, sep) for c in range(len(enc.columns))]
    tables = level_tables(full, enc, sep, model.levels) + ([offset] if offset is not None else [])
    metrics = prep.ex.level_metrics(model.m, model.b, tables)
    summary = _summary(cfg, loss, converged, steps, model, enc, int(sep.groups.count.sum()))
    prep.release()
    return FitResult(
        m=model.m, b=model.b, epochs_run=len(history), converged=converged, final_loss=metrics[loss.metric],
        learning_rate=1.0, momentum=0.0, strategy="newton", metrics=metrics, history=history,
        seconds=time.perf_counter() - t0, source=prep.source, rows_dropped=prep.rows_dropped,
        convergence={"criterion": "local_curvature", "tol": tol,
                     "bound": float(bound) if math.isfinite(bound) else None, "digits": digits(bound),
                     "epochs": len(history), "refinements": 0, "solver": "IRLS, conjugate gradients",
                     "steps": steps.solves},
        summary=summary, categorical=docs)


class _Steps:
    """The IRLS steps of ``fit_two_way_newton`` (module docstring): a pass and a solve
    each, halved where the loss rose, until the certificate meets tol or stops improving.
    After ``run``: ``history``, ``solves``, ``total`` (Σ loss at the last step's pass) and
    ``solved`` (the last solve's Σ and parameter count, for the summary)."""

    def __init__(self, cfg, prep, loss, enc, full, sep, offset, row_terms: int, two=None):
        self.cfg, self.prep, self.loss, self.enc, self.full, self.sep = cfg, prep, loss, enc, full, sep
        self.offset, self.row_terms, self.two = offset, row_terms, two
        self.cat_idx = [prep.source.columns.index(c) for c in enc.columns]
        self.history, self.solves, self.total, self.solved = [], 0, math.nan, None

    def _groups(self, model: _Model, information: bool = False, fast: bool = False) -> tuple:
        """``Executor.irls_groups`` at ``model``."""
        coefs = [t.coef for t in level_tables(self.full, self.enc, self.sep, model.levels)]  # over full's levels
        return self.prep.ex.irls_groups(self.cat_idx, self.full.levels, self.sep.keys, self.offset, coefs, model.m,
                                        model.b, information, fast)

    def _pass(self, model: _Model, fast: bool) -> tuple:
        """The IRLS pass at ``model``: (groups, Σ loss, max |x_j|, max size of η), its
        refusals raised; ``fast``: in float64 (a step that will not be certified)."""
        groups, _, total, xmax, eta_max, lost, bad = self._groups(model, fast=fast)
        if bad[0]:
            raise target_error(self.cfg, *bad)
        if lost:
            raise TrainingError(f"model.loss {self.loss.name}: {lost} rows reached a linear predictor where the "
                                "loss's curvature underflows to 0: the levels together separate the targets (no "
                                "single level's rows are all of one kind, but a combination's are), so the "
                                "coefficients have no finite optimum")
        return groups, total, xmax, eta_max

    def information(self, model: _Model) -> tuple:
        """(Σ, parameters, Pearson's χ²) at ``model`` from one pass of Fisher's weights."""
        groups, _, pearson, *_ = self._groups(model, information=True)
        fit, _ = self._solve(groups, model, "sigma")
        return fit.sigma, fit.params, pearson

    def _solve(self, groups, model: _Model, kind: str) -> tuple:
        """The weighted least-squares fit of an IRLS pass's ``groups``: (the solver's fit,
        in its own parameters, the ``many_way.Lifted`` groups or None with two columns).
        ``kind``: "certified" (``two_way.fit_two_way``), "step" (the model alone, from
        ``model``: ``two_way.solve_step``) or "sigma" (uncertified, with Σ)."""
        tol, d = self.cfg.optimizer.tol, len(model.m)
        groups = working(groups, d)
        lifted, enc = None, self.enc
        if self.two is not None:
            lifted, enc = many_way.lift(groups, self.enc, self.two), self.two
            groups = lifted.groups
        if kind == "step":
            start = model if lifted is None else many_way.to_solver(model, lifted)
            return two_way.solve_step(groups, enc, start), lifted
        identified = None if lifted is None else (lambda sigma: many_way.check_identified(sigma, lifted, self.enc))
        return two_way.fit_two_way(groups, enc, tol, certified=kind == "certified", identified=identified), lifted

    def run(self, model: _Model, warm: bool, t0: float, on_epoch=None) -> tuple:
        """(the model, its certified bound: inf where none holds) from ``model``
        (``warm``: a warm start, near the minimum)."""
        cfg, tol = self.cfg, self.cfg.optimizer.tol
        passes = NEWTON_PASSES if cfg.optimizer.epochs == "auto" else cfg.optimizer.epochs
        n = float(self.prep.mom.n)
        halvings, last, bound, best, stalled = 0, None, math.inf, math.inf, 0
        change = 0.0 if warm else 1.0  # a warm start: certified solves from the first
        for k in range(1, passes + 1):
            # Far from the minimum only the step's direction matters: a float64 pass and
            # solve. Near it (the last step moved the coefficients by little, so this one
            # moves them by about its square) the certified ones.
            precise = change < PRECISE_BELOW
            groups, total, xmax, eta_max = self._pass(model, fast=not precise)
            row = {"epoch": k, "loss": total / n, "grad_norm": float("nan"), "learning_rate": 1.0,
                   "seconds": time.perf_counter() - t0}
            self.history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if last is not None and total > last[1] + 1e-12 * abs(last[1]):
                if halvings >= MAX_HALVINGS:  # no step lowers the loss: stop where it was lowest
                    return last[0], math.inf
                halvings += 1
                model = last[0].toward(model, 0.5)  # overshot: half the way from where the loss was lower
                continue
            halvings, last, self.total = 0, (model, total), total
            fit, lifted = self._solve(groups, model, "certified" if precise else "step")
            self.solves += 1
            coef = fit.coef if lifted is None else many_way.lower(fit.coef, lifted, self.enc)
            new = _Model(coef.m, coef.b, coef.levels)
            change = model.change(new)
            if not (precise and change < CERTIFY_BELOW):
                bound = math.inf
            elif lifted is None:
                bound = certify(fit, model, new, groups, self.enc, xmax, eta_max, self.row_terms)[0]
            else:  # in the solver's parameters: the indicators' coefficients among the slopes
                bound = certify(fit, many_way.to_solver(model, lifted), many_way.to_solver(new, lifted),
                                groups._replace(keys=groups.keys[:, lifted.big]), self.two, xmax, eta_max,
                                self.row_terms, lifted)[0]
            self.solved, model = (fit.sigma, fit.params), new
            del fit, groups, lifted  # the client's largest arrays, before the next pass
            if tol > 0 and bound <= tol:
                break
            # At the rounding floor the bound stops halving: two such steps end the run.
            stalled = stalled + 1 if math.isfinite(bound) and bound > best / 2 else 0
            best = min(best, bound)
            if stalled >= 2:
                break
        return model, bound


def _summary(cfg, loss, converged: bool, steps: _Steps, model: _Model, enc, nobs: int) -> dict:
    """model.json's summary: the numeric slopes' rows, both columns absorbed
    (``glm_summary.summarize_two_way_glm``), where they hold: from the last step's
    weights for logistic and Poisson (Fisher's information), from a pass of Fisher's
    weights and Pearson's χ² for Gamma and Tweedie (their observed curvature is not it)."""
    if not converged:
        return {"available": False, "reason": "not converged: these statistics hold at the maximum of the likelihood"}
    sigma, params = steps.solved
    pearson = None
    if loss.name not in FIXED_SCALE:
        sigma, params, pearson = steps.information(model)
    names = [f for f in cfg.data.features if f not in enc.columns]
    theta, absorbed = model.m, enc.columns
    if steps.two is not None:  # the smaller columns' levels have rows as the slopes do
        indicator = many_way.indicator_columns(enc)
        theta = many_way.dense_block(model, indicator)
        names += [f"{enc.columns[c]}[{enc.label(c, int(i))}]" for c, idx in indicator for i in idx]
        absorbed = steps.two.columns
    return {"available": True, **summarize_two_way_glm(loss, theta, sigma, names, absorbed, nobs,
                                                       len(theta) + params, steps.total, pearson)}


def certify(fit, model, new, groups, enc, xmax, eta_max: float, row_terms: int, lifted=None) -> tuple:
    """The relative bound on every coefficient of ``new``, the step from ``model``
    (module docstring), and each one's absolute bound (as ``TwoWayFit.errors``): (inf,
    None) where no box holds. ``lifted`` (``many_way.Lifted``): more than two columns,
    ``model`` and ``new`` in the solver's parameters; an indicator's |x̃| is 1 on its
    level's rows and 0 elsewhere, and a row has one level of each smaller column."""
    a, o = enc.absorbed, 1 - enc.absorbed
    d = groups.total.shape[1] - 3  # the pass's columns: [X, z, z_lo, e/h]
    la = np.searchsorted(enc.levels[a], groups.keys[:, a])
    lb = np.searchsorted(enc.levels[o], groups.keys[:, o])
    LA, LB = len(enc.levels[a]), len(enc.levels[o])
    err = (groups.total[:, d + 2] + groups.total_lo[:, d + 2]) * 1.01  # Σ e per group (e/h weighted by h)
    e_tot = float(err.sum())
    h = groups.n
    c_grad = [xmax * e_tot, np.bincount(la, err, LA), np.bincount(lb, err, LB)]
    s = [xmax * float(h.sum()), np.bincount(la, h, LA), np.bincount(lb, h, LB)]
    blocks = []
    if lifted is not None:
        ind = lifted.groups
        c_grad[0] = np.concatenate((c_grad[0], ind.indicator_sums(err)))
        s[0] = np.concatenate((s[0], ind.indicator_sums(h)))
        at = d
        for _, idx in lifted.indicator:
            blocks.append(np.arange(at, at + len(idx)))
            at += len(idx)
    # Ĥ against the exact Hessian at θ_c: η's rounding through ℓ'' (e^{|δη|}), ℓ'''s own,
    # its float64 rounding.
    tau0 = (row_terms + PSI_ROUNDINGS) * U_ROW * (1.0 + eta_max) + 2 * U
    step = [np.abs(x - y) for x, y in zip(_absorbed(new, a), _absorbed(model, a))]
    errors = fit.errors
    box = [2 * (st + e) + 1e-300 for st, e in zip(step, _box_errors(errors, a, o))]
    for _ in range(BOX_TRIES):
        tau = (float(xmax @ box[0][:d]) + sum(float(box[0][i].max(initial=0.0)) for i in blocks)
               + float(box[1].max(initial=0.0)) + float(box[2].max(initial=0.0)))
        if not tau + tau0 < 1.0:  # far from the minimum: nothing to certify from here
            return math.inf, None
        grow = math.expm1(tau + tau0) * tau * 1.01
        c = [cg + grow * si for cg, si in zip(c_grad, s)]
        _, bound, _, errors = fit.rejudge(*c)
        need = [st + e for st, e in zip(step, _box_errors(errors, a, o))]
        if all(bool(np.all(nd <= bx)) for nd, bx in zip(need, box)):
            return float(bound), errors
        box = [2 * nd + 1e-300 for nd in need]
    return math.inf, None


def working(groups, d: int):
    """The IRLS pass's groups over [X, z] (``kernels.irls``: [X, z, z_lo, e/h]), z's low
    part added in: its totals as double-doubles (what the solver's certificate reads),
    its means and co-moments in float64 (what its float64 solves read)."""
    hi, lo = d, d + 1
    g = groups.columns(np.arange(d + 1))
    total, total_lo = g.total.copy(), g.total_lo.copy()
    total[:, d], total_lo[:, d] = dd_add(groups.total[:, hi], groups.total_lo[:, hi], groups.total[:, lo],
                                         groups.total_lo[:, lo])
    mean = g.mean.copy()
    mean[:, d] += groups.mean[:, lo]
    within = g.within.copy()
    within[:d, d] += groups.within[:d, lo]
    within[d, :d] = within[:d, d]
    within[d, d] += 2 * groups.within[hi, lo] + groups.within[lo, lo]
    return g._replace(mean=mean, within=within, total=total, total_lo=total_lo)


def _absorbed(coef, a: int) -> list:
    """[m, α (b plus A's levels), B's levels] of a model with two columns (``_Model`` or
    ``Coefficients``): the parameters the box is over."""
    return [np.asarray(coef.m, dtype=np.float64), coef.b + np.asarray(coef.levels[a]), np.asarray(coef.levels[1 - a])]


def _box_errors(errors, a: int, o: int) -> list:
    """A ``TwoWayFit``'s absolute errors over the box's parameters [m, α, B's levels]:
    α_ℓ's is at most its reported level's (which adds the reference's) or b's."""
    return [np.asarray(errors.m, dtype=np.float64),
            np.maximum(np.asarray(errors.levels[a], dtype=np.float64), float(errors.b)),
            np.asarray(errors.levels[o], dtype=np.float64)]
