"""Newton's method for the self-concordant families (logistic, Poisson, Gamma, Tweedie):
each pass over the data brings the gradient and the Hessian at θ together
(``kernels.newton.NewtonSums``), which is a step −H⁻¹∇J and, at the same θ, the certificate of
``certify.LocalBound`` — no pass is spent on curvature alone. Pure: no dask, no I/O.

From the intercept-only model (the link of the target's mean) Newton needs a handful of
passes on well-conditioned data, then gains digits quadratically. Far from the minimum a
full step may overshoot: a pass whose objective is above the last one's is not used, and
the step from the last point is halved (backtracking) until the objective falls.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .. import interrupt
from ..errors import TrainingError
from ..kernels.newton import with_data_terms
from .certify import LocalBound, newton_gradient_errors
from .descent import Checkpoints, LoopState, Rules, evaluate, keep_row, save_now
from .hessians import BlockHessian, DenseHessian, FoldedHessian

#: ``optimizer.epochs: auto`` for Newton: passes (separable classes or collinear features
#: never converge; well-conditioned data needs fewer than ten).
NEWTON_PASSES = 50
#: Halvings of one step before the point counts as stalled.
MAX_HALVINGS = 40
#: An objective above the last one by more than this (relative) sends the step back
#: (within it, rounding: near the minimum one step changes J by far less).
RISE_TOLERANCE = 1e-9
#: Consecutive final passes with the gradient inside its rounding error that count as a stall.
STALL_PASSES = 2
#: A pass is made final (``kernels.newton.FinalSums``: the metrics, Pearson's χ² and
#: Fisher's information at its coefficients) once the last bound is below this: Newton's
#: next step squares it, so the next pass may well be the last, and a certified model
#: then needs no pass after it.
FINAL_FROM = 1e-3


def start_params(d: int, fit_intercept: bool, intercept: float) -> np.ndarray:
    """θ of the intercept-only model: slopes 0 and b = link(ȳ) (b 0 without one)."""
    params = np.zeros(d + 1)
    if fit_intercept and math.isfinite(intercept):
        params[d] = intercept
    return params


class Newton:
    """Newton passes until the coefficients are certified within ``tol``, ``passes`` in
    all, or a stall at the rounding floor.

    Parameters
    ----------
    oracle : callable(m, b, final, data_terms) -> NewtonSums
        One pass at training-space (m, b); ``final``: with the metrics and Fisher's
        information too; ``data_terms``: with the data's own terms (the first pass).
    certifier : certify.LocalBound
        Bounds the coefficients' error from the pass's own gradient and Hessian.
    rules : descent.Rules
        l2 and whether b is free (the objective's other terms are not Newton's: no l1).
    """

    def __init__(self, oracle, certifier: LocalBound, rules: Rules, step_past: bool = True):
        self.oracle, self.certifier, self.rules = oracle, certifier, rules
        self.step_past_ok = step_past  # may end one certified step past the last pass
        self.kept = None  # the NewtonSums of the last accepted pass
        self.step_past = None  # the step from the kept pass's parameters to the state's, if any

    def start(self, params) -> LoopState:
        return LoopState.start(np.asarray(params, dtype=np.float64))

    def run(self, state: LoopState, *, passes: int, tol: float, on_epoch=None,
            checkpoints: Checkpoints | None = None) -> LoopState:
        """Passes from ``state`` (see the class); the state ends at the parameters the
        last bound holds for (those of the last pass whose objective did not rise)."""
        rules, cert = self.rules, self.certifier
        k = cert.k
        base = None  # (params, objective, sums) of the last accepted pass
        step, stalls, halvings, final = None, 0, 0, False
        stepped = False  # ended on a step certified from its pass (``LocalBound.after_step``)
        data = None  # (Σ the loss's constant terms, max ‖x̃‖², the sums of y alone) from the first pass
        t_last = t_saved = time.perf_counter()
        last_row = None
        with interrupt.deferred():
            while state.epoch < passes and state.running:
                interrupt.raise_if_pending(lambda: save_now(checkpoints, state))
                params = state.params
                d = params.shape[0] - 1
                s = evaluate(self.oracle, state, params, checkpoints, final, data is None)
                if data is None:
                    data = (s.constant, s.radius2, s.y_terms)  # the data's own terms: once
                elif not math.isfinite(s.constant):
                    s = with_data_terms(s, *data)
                state.epoch += 1
                loss = s.loss / s.n
                objective = rules.objective(loss, params[:d])
                grads = rules.grads(s, params[:d])
                now = time.perf_counter()
                last_row = {"epoch": state.epoch, "loss": loss, "grad_norm": float(np.linalg.norm(grads)),
                            "learning_rate": 0.5 ** halvings, "seconds": now - t_last}
                t_last = now
                if keep_row(state.epoch):
                    state.history.append(last_row)
                if on_epoch is not None:
                    on_epoch(last_row)
                if state.start_loss is None:
                    if not math.isfinite(objective):
                        raise TrainingError(f"the loss is not finite at the starting point (epoch {state.epoch})")
                    state.start_loss = objective
                rose = not math.isfinite(objective) or (
                    base is not None and objective > base[1] + RISE_TOLERANCE * abs(base[1]))
                if rose and step is not None:
                    halvings += 1
                    if halvings > MAX_HALVINGS:  # no descent along Newton's direction: rounding
                        state.params, state.stalled = base[0], True
                        break
                    step = step / 2
                    state.params = base[0] + step
                    continue
                halvings = 0
                base = (params, objective, s)
                hess = _hessian(s.hess, k).normalized(s.n, rules.l2, d)
                g = np.asarray(grads[:k], dtype=np.float64)
                terms = cert.row_terms or d  # of a row's η
                errors = newton_gradient_errors(s.scale[:k], g, s.n, terms, cert.sum_roundings, cert.row_unit)
                grad_error = float(np.linalg.norm(errors))
                bound, _ = cert.certify(params, g, grad_error, hess, s.radius2, errors)
                state.bound, state.prev_loss = bound, objective
                if tol > 0 and bound <= tol:
                    state.converged = True
                    break
                at_floor = float(np.linalg.norm(g)) <= grad_error
                stalls = stalls + 1 if at_floor else 0
                if stalls >= STALL_PASSES:
                    state.stalled = True
                    break
                final = bound <= FINAL_FROM
                step = np.zeros_like(params)
                step[:k] = hess.newton_step(g)
                if self.step_past_ok and tol > 0:
                    past = cert.after_step(params, step)
                    if past <= tol:  # the step's result, certified from this pass: no pass at it
                        state.params, state.bound, state.converged = params + step, past, True
                        self.step_past, stepped = step, True
                        break
                state.params = params + step
                if checkpoints is not None and checkpoints.due(state.epoch, t_last - t_saved):
                    checkpoints.write(state)
                    t_saved = time.perf_counter()
        if last_row is not None and (not state.history or state.history[-1] is not last_row):
            state.history.append(last_row)
        if base is not None:
            self.kept = base[2]
            if not stepped:
                state.params = base[0]  # the parameters the last bound holds for
        return state


def _hessian(hess, k: int):
    """A pass's Hessian sums (``kernels.newton.NewtonSums.hess``) as ``hessians`` have it:
    a ``BlockHessian`` as it came, a matrix over its first k parameters."""
    if isinstance(hess, (BlockHessian, FoldedHessian)):
        return hess
    return DenseHessian(np.asarray(hess, dtype=np.float64)[:k, :k])
