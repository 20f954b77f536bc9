"""The epoch loop proper: evaluate, record, check, step. Pure: no dask, no I/O.

Everything that decides later epochs lives in ``LoopState``, so a checkpoint of it
resumes to the very same bits as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .. import interrupt
from ..kernels import losses
from ..errors import ClusterError, TrainingError
from .rates import (Curvature, HeavyBallState, Rates, choose_rates, heavy_ball, schedule, soft_threshold,
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
#: With a certifier that offers Newton steps (``certify.LocalBound``): the screen's
#: estimate of the coefficients' relative error below which a curvature pass is made,
#: whatever tol, for a Newton step where its bound holds (x < ½). Each step then gains
#: digits quadratically; a pass too far out costs one pass and is retried once the
#: gradient has shrunk 4 ×.
NEWTON_FROM = 1.0


@dataclass(frozen=True)
class Rules:
    """The objective and its schedule: penalties on m (never on b), whether b is free,
    the loss's penalty scale, the learning-rate schedule, early stopping's patience.

    The objective is ℓ̄ + (l2/2)·‖m‖² + l1·‖m‖₁ in the training space, ℓ̄ the mean loss
    (½·MSE for squared loss); l2 enters the gradient, l1 a proximal step (soft
    thresholding) after each gradient step. The loop compares it in the units of the
    reported loss: ``penalty_scale`` times the objective (``losses.Loss``).
    """

    l2: float = 0.0
    l1: float = 0.0
    schedule: str = "constant"
    power_t: float = 0.25
    step_size: int = 100
    gamma: float = 0.5
    sampled: bool = False  # minibatch: losses are sample estimates, so no tol test
    patience: int = 5  # early stopping: epochs without a better validation loss
    fit_intercept: bool = True
    penalty_scale: float = 2.0
    newton: bool = True  # Newton steps where the certifier measures the Hessian (optimizer.refine ≠ 0)

    @classmethod
    def of(cls, model, optimizer) -> Rules:
        """From the ``model`` and ``optimizer`` sections of a run config."""
        o = optimizer
        return cls(model.l2, model.l1, o.schedule, o.power_t, o.step_size, o.gamma,
                   o.method == "minibatch", o.n_iter_no_change, model.fit_intercept,
                   losses.of(model).penalty_scale, o.refine != 0)

    def objective(self, loss: float, m) -> float:
        """The reported loss plus the penalties, in the reported loss's units."""
        if not (self.l2 or self.l1):
            return loss
        s = self.penalty_scale
        return loss + s * self.l2 / 2 * float(m @ m) + s * self.l1 * float(np.abs(m).sum())

    def grads(self, s, m) -> np.ndarray:
        """∇J = [Σψ·x/n + l2·m, Σψ/n] (the intercept's 0 without one) from the sums."""
        return _grads(s, m, self.l2, self.fit_intercept)


@dataclass
class LoopState:
    """The loop's whole state after ``epoch`` completed epochs.

    params : ndarray of shape (n_features + 1,) — [m..., b] in training space
    opt : the optimizer's state (``optim.heavy_ball``'s, from its ``init``)
    prev_loss : objective (``Rules.objective``) at the previous epoch's parameters
    bound : the certified relative error of the coefficients at ``params`` (``certify``),
        None where the criterion gives none
    stalled : the gradient reached its rounding floor before the bound reached tol
        (refinement may go on from here)
    best_val, best_params, best_epoch, waiting : early stopping — the lowest validation
        loss so far, the parameters it was measured at, its epoch, and the epochs since
    """

    params: np.ndarray
    opt: HeavyBallState
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
    def start(cls, params: np.ndarray, init=None) -> LoopState:
        """Epoch 0 at ``params``, the optimizer's state from its ``init``."""
        init = init or heavy_ball(Rates(0.0, 0.0))[0]
        return cls(params=params, opt=init(params))

    @property
    def running(self) -> bool:
        return not (self.converged or self.stopped_early or self.stalled)


def criterion_name(certifier, rules: Rules) -> str:
    """What ``converged`` rests on (``certify``)."""
    if rules.sampled:  # minibatch: certified by one full pass at the end (not with l1)
        return certifier.name if certifier is not None and not rules.l1 else "none"
    return certifier.name if certifier is not None else "loss_change"


@dataclass(frozen=True)
class Checkpoints:
    """``write(state)`` every ``every`` epochs, at most once per ``CHECKPOINT_MIN_SECONDS``."""

    write: object
    every: int

    def due(self, epoch: int, seconds_since: float) -> bool:
        return bool(self.every) and epoch % self.every == 0 and seconds_since >= CHECKPOINT_MIN_SECONDS


def evaluate(oracle, state: LoopState, params, checkpoints: Checkpoints | None, *args):
    """``oracle(m, b, *args)`` at ``params``; where the cluster is gone, the state is saved
    first and the error says how to resume from it."""
    d = params.shape[0] - 1
    try:
        return oracle(params[:d], params[d], *args)
    except ClusterError as e:  # the cluster is gone: leave a way back
        saved = save_now(checkpoints, state)
        if saved is None:
            raise
        raise ClusterError(f"{e}; rerun the same command to resume from the checkpoint at epoch "
                           f"{saved}") from None


def save_now(checkpoints: Checkpoints | None, state: LoopState) -> int | None:
    """On a signal or a lost cluster, at an epoch boundary: save the state a rerun resumes
    from; its epoch, or None where nothing is checkpointed."""
    if checkpoints is None or not checkpoints.every or not state.epoch:
        return None
    checkpoints.write(state)
    return state.epoch


class Descent:
    """Epochs of heavy ball on one objective, until ``epochs`` in all, convergence, a
    stall at the rounding floor, divergence, or (with ``validate``) an early stop.

    Parameters
    ----------
    oracle : callable(m, b) -> BlockSums
        The global gradient sums at (m, b).
    certifier : certify.CoefficientBound or certify.ProxBound, optional
        Bounds the coefficients' error each epoch; converged when the bound ≤ ``tol``
        (the parameters are then those the bound holds for: no step follows). Without
        one (Huber) the relative loss change must stay below ``tol`` for
        ``calm_epochs`` epochs. ``tol`` 0: run all ``epochs``.
    validate : callable(m, b) -> float, optional
        The validation loss at (m, b). Each epoch measures it at the epoch's parameters;
        after ``rules.patience`` epochs without it falling below best·(1 − tol), the
        loop stops early (``stopped_early``). Either way the state ends at the
        parameters with the lowest validation loss.
    """

    def __init__(self, oracle, rates: Rates, curv: Curvature, rules: Rules | None = None, *, certifier=None,
                 validate=None):
        self.oracle, self.rates, self.curv = oracle, rates, curv
        self.rules = rules = rules or Rules()
        self.init, self.update = heavy_ball(rates)
        self.rate_at = schedule(rules.schedule, rates.learning_rate, power_t=rules.power_t,
                                step_size=rules.step_size, gamma=rules.gamma, alpha=rules.l2)
        self.certifier = certifier
        self.validate = validate
        self.needed_calm = calm_epochs(rates.momentum)
        self.coefficient_rule = certifier is not None and not rules.l1 and not rules.sampled
        self.newton = self.coefficient_rule and rules.newton and hasattr(certifier, "newton_step")

    def start(self, params) -> LoopState:
        return LoopState.start(params, self.init)

    def run(self, state: LoopState, *, epochs: int, tol: float, on_epoch=None,
            checkpoints: Checkpoints | None = None) -> LoopState:
        """Run epochs from ``state`` (see the class); returns the state.

        Raises
        ------
        TrainingError
            The loss is not finite, or grows where a stable rate cannot make it grow.
        """
        self.tol, self.on_epoch, self.checkpoints = tol, on_epoch, checkpoints
        self.last_row = self.last_eval = None
        self.t_last = self.t_saved = time.perf_counter()
        with interrupt.deferred():  # Ctrl-C and SIGTERM wait for the epoch boundary
            while state.epoch < epochs and state.running:
                interrupt.raise_if_pending(lambda: self._save_now(state))
                if not self._epoch(state):
                    break
        if self.last_row is not None and (not state.history or state.history[-1] is not self.last_row):
            state.history.append(self.last_row)  # the last epoch's row, whatever keep_row says
        if self.validate is not None and state.best_params is not None:
            state.params = state.best_params  # the model is the best one on the validation rows
        if self.certifier is not None and not self.rules.sampled and not state.converged:
            self._final_bound(state)
        return state

    def _save_now(self, state: LoopState) -> int | None:
        return save_now(self.checkpoints, state)

    def _evaluate(self, state: LoopState, params):
        return evaluate(self.oracle, state, params, self.checkpoints)

    def _epoch(self, state: LoopState) -> bool:
        """One epoch: evaluate, step, record, judge. False: the loop ends here."""
        rules, tol = self.rules, self.tol
        params = state.params
        d = params.shape[0] - 1
        m = params[:d]
        s = self._evaluate(state, params)
        loss = s.loss / s.n
        grads = rules.grads(s, m)
        objective = rules.objective(loss, m)
        epoch = state.epoch + 1
        self.last_eval = (params, grads)
        lr_t = self.rate_at(epoch)
        step, opt = self.update(grads, state.opt, lr_t)
        new = params + step
        if rules.l1:
            new[:d] = soft_threshold(new[:d], lr_t * rules.l1)
        grad_norm = math.sqrt(float(grads @ grads))
        may_converge, stalled = self._bound(state, params, grads, new, lr_t, grad_norm)
        self._record(state, epoch, loss, grad_norm, lr_t)
        self._check_growth(state, objective, loss, epoch)
        state.epoch = epoch
        if state.stopped_early:
            return False
        if self._converged(state, may_converge, objective):
            return False  # the bound holds for these parameters: keep them
        if self.coefficient_rule and tol > 0:
            state.calm = state.calm + 1 if stalled else 0
            if state.calm >= STALL_EPOCHS:
                state.stalled = True
                return False
        if self.newton and tol > 0:
            newton = self.certifier.newton_step(params, grads)
            if newton is not None:  # the momentum of the descent before it does not carry over
                new, opt = params + newton, self.init(params)
        self.last_eval = None  # the parameters move on: the gradient computed is not theirs
        state.params, state.opt, state.prev_loss = new, opt, objective
        c = self.checkpoints
        if c is not None and c.due(epoch, self.t_last - self.t_saved):
            c.write(state)
            self.t_saved = time.perf_counter()
        return True

    def _bound(self, state, params, grads, new, lr_t, grad_norm) -> tuple[bool, bool]:
        """The certifier's bound at ``params`` where it is worth computing; returns
        (may converge, stalled at the rounding floor) for the coefficient rule."""
        c, tol = self.certifier, self.tol
        if self.coefficient_rule:
            may_converge, stalled = c.screen(params, grad_norm, max(tol, NEWTON_FROM) if self.newton else tol)
            if may_converge and tol > 0:
                state.bound = c.bound(params, grads, c.grad_error(params))
            return may_converge, stalled
        if c is not None and self.rules.l1 and not self.rules.sampled:
            state.bound = c.bound(params, new, lr_t, c.grad_error(params))
        return False, False

    def _record(self, state: LoopState, epoch: int, loss: float, grad_norm: float, lr_t: float) -> None:
        now = time.perf_counter()
        row = {"epoch": epoch, "loss": loss, "grad_norm": grad_norm, "learning_rate": lr_t,
               "seconds": now - self.t_last}
        if self.validate is not None:
            row["val_loss"] = _watch(state, self.validate, epoch, self.tol, self.rules.patience)
        self.t_last = now
        self.last_row = row
        if keep_row(epoch):
            state.history.append(row)
        if self.on_epoch is not None:
            self.on_epoch(row)

    def _check_growth(self, state: LoopState, objective: float, loss: float, epoch: int) -> None:
        """Raise ``TrainingError`` on a non-finite loss, or growth that means divergence."""
        prev = state.prev_loss
        if state.start_loss is None:
            state.start_loss = objective
        state.growth = state.growth + 1 if prev is not None and objective > prev else 0
        if not math.isfinite(loss) or (state.growth >= GROWTH_EPOCHS and objective > state.start_loss
                                       and _may_diverge(self.rates, self.curv)):
            err = TrainingError(divergence_message(self.rates, self.curv, epoch, loss))
            err.history = state.history  # the curve up to here, for sweeps and plots
            raise err

    def _converged(self, state: LoopState, may_converge: bool, objective: float) -> bool:
        tol, prev = self.tol, state.prev_loss
        if self.coefficient_rule:
            state.converged = bool(may_converge and tol > 0 and state.bound <= tol)
        elif tol > 0 and state.bound is not None:
            state.converged = state.bound <= tol
        elif tol > 0 and self.certifier is None and prev is not None and not self.rules.sampled:
            change = objective - prev
            state.calm = state.calm + 1 if abs(change) <= tol * max(prev, np.finfo(float).tiny) else 0
            state.converged = state.calm >= self.needed_calm
        return state.converged

    def _final_bound(self, state: LoopState) -> None:
        """The bound reported is for the parameters kept: their own gradient where it was
        the last one computed, else one more evaluation (an epoch bound reached after a
        step, or early stopping's best epoch)."""
        rules, c, params = self.rules, self.certifier, state.params
        d = params.shape[0] - 1
        last = self.last_eval
        grads = last[1] if last is not None and last[0] is params else gradient_at(self.oracle, params, rules)
        if rules.l1:
            lr_t = self.rate_at(max(state.epoch, 1))
            new = params - lr_t * grads
            new[:d] = soft_threshold(new[:d], lr_t * rules.l1)
            state.bound = c.bound(params, new, lr_t, c.grad_error(params))
        else:
            state.bound = c.bound(params, grads, c.grad_error(params))
        state.converged = bool(self.tol > 0 and state.bound <= self.tol)


def _grads(s, m, l2: float, fit_intercept: bool) -> np.ndarray:
    """∇J = [Σerr·x/n + l2·m, Σerr/n] (the intercept's 0 without one) from the sums."""
    gm = s.grad / s.n
    if l2:
        gm = gm + l2 * m
    return np.concatenate((gm, (s.err / s.n if fit_intercept else 0.0,)))


def gradient_at(oracle, params, rules: Rules) -> np.ndarray:
    """∇J at ``params`` (one more oracle call)."""
    d = params.shape[0] - 1
    return rules.grads(oracle(params[:d], params[d]), params[:d])


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
        "params": _pairs(state.params), "velocity": _pairs(state.opt.velocity),
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
        params=_unpairs(doc["params"], dtype), opt=HeavyBallState(_unpairs(doc["velocity"], dtype)),
        epoch=int(doc["epoch"]), prev_loss=doc["prev_loss"], bound=doc.get("bound"),
        stalled=bool(doc.get("stalled", False)),
        start_loss=doc["start_loss"], growth=int(doc["growth"]), calm=int(doc["calm"]),
        converged=bool(doc["converged"]), history=list(doc["history"]),
        best_val=doc.get("best_val"), best_epoch=int(doc.get("best_epoch", 0)), waiting=int(doc.get("waiting", 0)),
        best_params=None if doc.get("best_params") is None else _unpairs(doc["best_params"], dtype),
        stopped_early=bool(doc.get("stopped_early", False)),
    )
