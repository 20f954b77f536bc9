"""The epoch loop proper: evaluate, record, check, step. Pure: no dask, no I/O.

Everything that decides later epochs lives in ``LoopState``, so a checkpoint of it
resumes to the very same bits as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import interrupt
from .errors import ClusterError, TrainingError
from .optim import (Curvature, HeavyBallState, Rates, choose_rates, heavy_ball, schedule, soft_threshold,
                    stable_limit)

#: Epochs of consecutive loss growth (above the starting loss) that count as divergence.
GROWTH_EPOCHS = 5
#: Checkpoints are written at most this often (seconds): gram epochs take microseconds.
CHECKPOINT_MIN_SECONDS = 1.0
#: Epochs below 10 ** HISTORY_DIGITS keep every history row (``keep_row``).
HISTORY_DIGITS = 4
#: Consecutive epochs with the gradient inside its rounding error that count as a stall.
STALL_EPOCHS = 3
#: With momentum the loss oscillates and its change passes through zero at every turn,
#: so convergence needs the change below tol for several consecutive epochs (at most
#: this many; see ``calm_epochs``).
CALM_EPOCHS_MOMENTUM = 10


@dataclass(frozen=True)
class Rules:
    """Penalties on m (never on b) and the learning-rate schedule.

    The objective is ½·MSE + (l2/2)·‖m‖² + l1·‖m‖₁ in the training space; l2 enters the
    gradient, l1 a proximal step (soft thresholding) after each gradient step.
    """

    l2: float = 0.0
    l1: float = 0.0
    schedule: str = "constant"
    power_t: float = 0.25
    step_size: int = 100
    gamma: float = 0.5
    sampled: bool = False  # minibatch: losses are sample estimates, so no tol test
    patience: int = 5  # early stopping: epochs without a better validation loss

    @classmethod
    def of(cls, cfg) -> Rules:
        o = cfg.optimizer
        return cls(cfg.model.l2, cfg.model.l1, o.schedule, o.power_t, o.step_size, o.gamma,
                   o.method == "minibatch", o.n_iter_no_change)


@dataclass
class LoopState:
    """The loop's whole state after ``epoch`` completed epochs.

    params, velocity : ndarray of shape (n_features + 1,) — [m..., b] in training space
    prev_loss : objective (MSE + l2·‖m‖² + 2·l1·‖m‖₁; the MSE without penalties) at
        the previous epoch's parameters
    bound : the certified relative error of the coefficients at ``params`` (``certify``),
        None where the criterion gives none
    stalled : the gradient reached its rounding floor before the bound reached tol
        (refinement may go on from here)
    best_val, best_params, best_epoch, waiting : early stopping — the lowest validation
        loss so far, the parameters it was measured at, its epoch, and the epochs since
    """

    params: np.ndarray
    velocity: np.ndarray
    epoch: int = 0
    prev_loss: float | None = None
    start_loss: float | None = None
    growth: int = 0
    calm: int = 0
    converged: bool = False
    history: list[dict] = field(default_factory=list)
    bound: float | None = None
    stalled: bool = False
    refinements: int = 0
    point: tuple | None = None  # refinement's (m, b) in original units, long double
    best_val: float | None = None
    best_params: np.ndarray | None = None
    best_epoch: int = 0
    waiting: int = 0
    stopped_early: bool = False

    @classmethod
    def start(cls, params: np.ndarray) -> LoopState:
        return cls(params=params, velocity=np.zeros_like(params))


def criterion_name(certifier, rules: Rules) -> str:
    """What ``converged`` rests on (``certify``)."""
    if rules.sampled:
        return "none"
    return certifier.name if certifier is not None else "loss_change"


def descend(state: LoopState, oracle, rates: Rates, curv: Curvature, *, epochs: int, tol: float,
            fit_intercept: bool, certifier=None, on_epoch=None, checkpoint=None, checkpoint_every=0,
            rules: Rules | None = None, validate=None):
    """Run epochs until ``epochs`` in all, convergence, a stall at the rounding floor,
    divergence, or (with ``validate``) an early stop; returns the state.

    Parameters
    ----------
    oracle : callable(m, b) -> BlockSums
        The global gradient sums at (m, b).
    certifier : certify.CoefficientBound or certify.ProxBound, optional
        Bounds the coefficients' error each epoch; converged when the bound ≤ ``tol``
        (the parameters are then those the bound holds for: no step follows). Without
        one (Huber) the relative loss change must stay below ``tol`` for
        ``calm_epochs`` epochs. ``tol`` 0: run all ``epochs``.
    checkpoint : callable(LoopState), optional
        Called every ``checkpoint_every`` epochs, at most once per
        ``CHECKPOINT_MIN_SECONDS``.
    rules : Rules, optional
        Penalties and schedule; none and constant by default.
    validate : callable(m, b) -> float, optional
        The validation loss at (m, b). Each epoch measures it at the epoch's parameters;
        after ``rules.patience`` epochs without it falling below best·(1 − tol), the
        loop stops early (``stopped_early``). Either way the state ends at the
        parameters with the lowest validation loss.

    Raises
    ------
    TrainingError
        The loss is not finite, or grows where a stable rate cannot make it grow.
    """
    rules = rules or Rules()
    d = state.params.shape[0] - 1
    _, update = heavy_ball(rates)
    rate_at = schedule(rules.schedule, rates.learning_rate, power_t=rules.power_t,
                       step_size=rules.step_size, gamma=rules.gamma)
    needed_calm = calm_epochs(rates.momentum)
    coefficient_rule = certifier is not None and not rules.l1 and not rules.sampled
    last_row = last_eval = None
    t_last = t_saved = time.perf_counter()

    def stop() -> int | None:
        """On a signal, at an epoch boundary: save the state a rerun resumes from."""
        if checkpoint is None or not checkpoint_every or not state.epoch:
            return None
        checkpoint(state)
        return state.epoch

    with interrupt.deferred():  # Ctrl-C and SIGTERM wait for the epoch boundary
        while state.epoch < epochs and not state.converged and not state.stopped_early and not state.stalled:
            interrupt.raise_if_pending(stop)
            params = state.params
            m = params[:d]
            try:
                s = oracle(m, params[d])
            except ClusterError as e:  # the cluster is gone: leave a way back
                saved = stop()
                if saved is None:
                    raise
                raise ClusterError(f"{e}; rerun the same command to resume from the checkpoint at epoch "
                                   f"{saved}") from None
            loss = s.sq_err / s.n
            grads = _grads(s, m, rules.l2, fit_intercept)
            objective = loss
            if rules.l2 or rules.l1:
                objective = loss + rules.l2 * float(m @ m) + 2.0 * rules.l1 * float(np.abs(m).sum())
            epoch = state.epoch + 1
            last_eval = (params, grads)
            lr_t = rate_at(epoch)
            step, hb = update(grads, HeavyBallState(state.velocity), lr_t)
            new = params + step
            if rules.l1:
                new[:d] = soft_threshold(new[:d], lr_t * rules.l1)
            grad_norm = math.sqrt(float(grads @ grads))
            may_converge = stalled = False
            if coefficient_rule:
                may_converge, stalled = certifier.screen(params, grad_norm, tol)
                if may_converge and tol > 0:
                    state.bound = certifier.bound(params, grads, certifier.grad_error(params))
            elif certifier is not None and rules.l1 and not rules.sampled:
                state.bound = certifier.bound(params, new, lr_t, certifier.grad_error(params))
            now = time.perf_counter()
            row = {"epoch": epoch, "loss": loss, "grad_norm": grad_norm,
                   "learning_rate": lr_t, "seconds": now - t_last}
            if validate is not None:
                row["val_loss"] = _watch(state, validate, epoch, tol, rules.patience)
            t_last = now
            last_row = row
            if keep_row(epoch):
                state.history.append(row)
            if on_epoch is not None:
                on_epoch(row)

            prev = state.prev_loss
            if state.start_loss is None:
                state.start_loss = objective
            state.growth = state.growth + 1 if prev is not None and objective > prev else 0
            if not math.isfinite(loss) or (state.growth >= GROWTH_EPOCHS and objective > state.start_loss
                                           and _may_diverge(rates, curv)):
                err = TrainingError(divergence_message(rates, curv, epoch, loss))
                err.history = state.history  # the curve up to here, for sweeps and plots
                raise err
            state.epoch = epoch
            if state.stopped_early:
                break
            if coefficient_rule:
                state.converged = bool(may_converge and tol > 0 and state.bound <= tol)
            elif tol > 0 and state.bound is not None:
                state.converged = state.bound <= tol
            elif tol > 0 and certifier is None and prev is not None and not rules.sampled:
                change = objective - prev
                state.calm = state.calm + 1 if abs(change) <= tol * max(prev, np.finfo(float).tiny) else 0
                state.converged = state.calm >= needed_calm
            if state.converged:
                break  # the bound holds for these parameters: keep them
            if coefficient_rule and tol > 0:
                state.calm = state.calm + 1 if stalled else 0
                if state.calm >= STALL_EPOCHS:
                    state.stalled = True
                    break
            last_eval = None  # the parameters move on: the gradient below is not theirs
            state.params = new
            state.velocity = hb.velocity
            state.prev_loss = objective
            if (checkpoint is not None and checkpoint_every and epoch % checkpoint_every == 0
                    and now - t_saved >= CHECKPOINT_MIN_SECONDS):
                checkpoint(state)
                t_saved = time.perf_counter()
    if last_row is not None and (not state.history or state.history[-1] is not last_row):
        state.history.append(last_row)  # the last epoch's row, whatever keep_row says
    if validate is not None and state.best_params is not None:
        state.params = state.best_params  # the model is the best one on the validation rows
    if certifier is not None and not rules.sampled and not state.converged:
        # The bound reported is for the parameters kept: their own gradient where it was
        # the last one computed, else one more evaluation (an epoch bound reached after a
        # step, or early stopping's best epoch).
        params = state.params
        grads = last_eval[1] if last_eval is not None and last_eval[0] is params else \
            gradient_at(oracle, params, rules, fit_intercept)
        if rules.l1:
            lr_t = rate_at(max(state.epoch, 1))
            new = params - lr_t * grads
            new[:d] = soft_threshold(new[:d], lr_t * rules.l1)
            state.bound = certifier.bound(params, new, lr_t, certifier.grad_error(params))
        else:
            state.bound = certifier.bound(params, grads, certifier.grad_error(params))
        state.converged = bool(tol > 0 and state.bound <= tol)
    return state


def _grads(s, m, l2: float, fit_intercept: bool) -> np.ndarray:
    """∇J = [Σerr·x/n + l2·m, Σerr/n] (the intercept's 0 without one) from the sums."""
    gm = s.grad / s.n
    if l2:
        gm = gm + l2 * m
    return np.concatenate((gm, (s.err / s.n if fit_intercept else 0.0,)))


def gradient_at(oracle, params, rules: Rules, fit_intercept: bool) -> np.ndarray:
    """∇J at ``params`` (one more oracle call)."""
    d = params.shape[0] - 1
    return _grads(oracle(params[:d], params[d]), params[:d], rules.l2, fit_intercept)


def keep_row(epoch: int) -> bool:
    """Whether the history keeps this epoch's row: all below 10^HISTORY_DIGITS, then
    every 10th up to ten times that, every 100th … (long ill-conditioned runs take
    millions of O(d²) epochs; the curve needs no more)."""
    if epoch < 10 ** HISTORY_DIGITS:
        return True
    return epoch % 10 ** (len(str(epoch)) - HISTORY_DIGITS) == 0


def _watch(state: LoopState, validate, epoch: int, tol: float, patience: int) -> float:
    """Early stopping's bookkeeping for one epoch; returns the validation loss."""
    d = state.params.shape[0] - 1
    val = float(validate(state.params[:d], state.params[d]))
    if state.best_val is None or val < state.best_val - tol * abs(state.best_val):
        state.best_val, state.best_params, state.best_epoch, state.waiting = val, state.params.copy(), epoch, 0
    else:
        state.waiting += 1
        state.stopped_early = state.waiting >= patience
    return val


def calm_epochs(momentum: float) -> int:
    """Consecutive calm epochs that mean convergence: 1 for plain descent (its loss falls
    monotonically); with heavy ball about the decay time of its oscillation,
    √β/(1−√β) epochs, at most ``CALM_EPOCHS_MOMENTUM``."""
    if momentum == 0:
        return 1
    r = math.sqrt(momentum)
    return min(CALM_EPOCHS_MOMENTUM, 1 + math.ceil(r / (1 - r)))


def _may_diverge(rates: Rates, curv: Curvature) -> bool:
    """Whether sustained loss growth means divergence.

    Plain descent never raises the loss of a quadratic at a stable rate, so sustained
    growth is divergence. Heavy ball oscillates and may rise for many epochs before it
    falls; for squared loss its stable limit is exact, so growth counts only beyond it.
    """
    return rates.momentum == 0 or rates.learning_rate > stable_limit(curv, rates.momentum) * (1 + 1e-9)


def divergence_message(rates: Rates, curv: Curvature, epoch: int, loss: float) -> str:
    limit = stable_limit(curv, rates.momentum)
    auto = choose_rates(curv, "auto", rates.momentum).learning_rate
    what = "is not finite" if not math.isfinite(loss) else f"{loss:.3g} and growing"
    return (
        f"learning rate {rates.learning_rate:g} diverged at epoch {epoch} (loss {what}); "
        f"the largest stable rate for this data is {limit:.4g} — use a smaller "
        f"optimizer.learning_rate or 'auto' ({auto:.4g})"
    )


# --------------------------------------------------------------------------- serialization


def _pairs(a: np.ndarray) -> list[list[float]]:
    """Exact JSON form of a float64 or long double array: (hi, lo) float64 pairs."""
    hi = a.astype(np.float64)
    lo = (a - hi).astype(np.float64)
    return [[float(h), float(lw)] for h, lw in zip(hi, lo)]


def _unpairs(pairs, dtype) -> np.ndarray:
    arr = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0].astype(dtype) + arr[:, 1].astype(dtype)


def state_to_dict(state: LoopState) -> dict:
    return {
        "params": _pairs(state.params), "velocity": _pairs(state.velocity),
        "dtype": "longdouble" if state.params.dtype == np.longdouble else "float64",
        "epoch": state.epoch, "prev_loss": state.prev_loss, "bound": state.bound, "stalled": state.stalled,
        "start_loss": state.start_loss, "growth": state.growth, "calm": state.calm,
        "converged": state.converged, "history": state.history,
        "best_val": state.best_val, "best_epoch": state.best_epoch, "waiting": state.waiting,
        "best_params": None if state.best_params is None else _pairs(state.best_params),
        "stopped_early": state.stopped_early,
    }


def state_from_dict(doc: dict) -> LoopState:
    dtype = np.longdouble if doc["dtype"] == "longdouble" else np.float64
    return LoopState(
        params=_unpairs(doc["params"], dtype), velocity=_unpairs(doc["velocity"], dtype),
        epoch=int(doc["epoch"]), prev_loss=doc["prev_loss"], bound=doc.get("bound"),
        stalled=bool(doc.get("stalled", False)),
        start_loss=doc["start_loss"], growth=int(doc["growth"]), calm=int(doc["calm"]),
        converged=bool(doc["converged"]), history=list(doc["history"]),
        best_val=doc.get("best_val"), best_epoch=int(doc.get("best_epoch", 0)), waiting=int(doc.get("waiting", 0)),
        best_params=None if doc.get("best_params") is None else _unpairs(doc["best_params"], dtype),
        stopped_early=bool(doc.get("stopped_early", False)),
    )
