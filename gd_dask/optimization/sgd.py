"""Minibatch SGD: an epoch is one pass over the training rows.

Each chunk task runs its own minibatch steps over its rows (``gradient.sgd_block``: batches
of ``batch_size`` consecutive rows, visited in an order drawn from the seed, the epoch and
the chunk), starting from the round's parameters; the chunk models are then averaged,
weighted by rows, in the fixed reduction tree — parameter mixing (Zinkevich et al. 2010;
McDonald et al. 2010) — and the round's move is scaled back up towards what sequential
SGD would have made (``Mixing``). A round is one epoch, or ``sync_every`` steps of every
chunk. Results depend on the seed and the data only.

The rate: ``learning_rate: auto`` is 1/λmax of the curvature bound (half the batch stable
limit: a minibatch gradient is noisy), decayed by ``schedule``. ``average: true`` (the
default) reports the average of each epoch's iterates (ASGD). l1 is a proximal step after every step.
With ``epochs: auto`` the run stops, as scikit-learn's SGD does, after
``n_iter_no_change`` epochs whose training loss is not below best·(1 − ``SGD_TOL``).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from .sgd_kernel import SGDPlan
from .. import interrupt
from ..errors import TrainingError
from .descent import LoopState, _watch, keep_row, save_now

#: Relative improvement of the epoch's training loss that counts, for ``epochs: auto``
#: (scikit-learn's SGD default tol).
SGD_TOL = 1e-3
#: Most epochs with ``epochs: auto``.
SGD_MAX_EPOCHS = 1000


def base_rate(optimizer, curv) -> float:
    lr = optimizer.learning_rate
    return 1.0 / curv.lmax if lr == "auto" else float(lr)


def plan_of(optimizer, model, eta0: float) -> SGDPlan:
    o, m = optimizer, model
    return SGDPlan(batch=o.batch_size, seed=o.seed, epoch=1, round=0, sync_every=o.sync_every,
                     rate=(o.schedule, eta0, o.power_t, o.step_size, o.gamma), l2=m.l2, l1=m.l1,
                     fit_intercept=m.fit_intercept, average=o.average)


#: Rounds an epoch may take so that ``sync_every: auto`` mixes often enough (each round
#: is a round trip over the cluster).
MAX_ROUNDS_PER_EPOCH = 16


@dataclasses.dataclass(frozen=True)
class Mixing:
    """How chunk models become one: after each round of ``sync_every`` steps (None: the
    epoch) the row-weighted mean θ̄ of the chunk models is taken, and the round's move is
    scaled: θ ← θ₀ + ``factor``·(θ̄ − θ₀).

    Averaging alone (``factor`` 1) makes on K equal chunks about 1/K of the progress of
    sequential SGD over the same rows at the same rate: each chunk's move is 1/K of the
    data's, and the mean keeps one. Summing the moves (``factor`` K) is sequential SGD to
    first order, but unstable once a chunk moves far within a round. For the quadratic
    model the round maps an error along curvature λ to 1 − c·x(λ), x = 1 − (1 − ηλ)^s
    for s steps at rate η; ``factor`` = min(K_eff, 1/x(λmax)) keeps that in [0, 1) —
    never past the minimum, as the rate 1/λmax does for one step — with
    K_eff = (Σn)²/Σn², the number of equal chunks with the same rows. ``sync_every:
    auto`` takes s ≈ 1/(K_eff·η·λmax) steps a round, so that the factor reaches K_eff,
    within ``MAX_ROUNDS_PER_EPOCH``."""

    sync_every: int | None
    factor: float = 1.0


def mixing(optimizer, source, eta0: float, lmax: float) -> Mixing:
    """``Mixing`` for these chunks, rate and curvature (the data's and the config's alone,
    so the bits stay the same on every cluster)."""
    o = optimizer
    rows = _chunk_rows(source)
    fixed = None if o.sync_every == "auto" else o.sync_every
    if o.mix == "average" or rows is None or len(rows) < 2:
        return Mixing(fixed)
    k_eff = sum(rows) ** 2 / sum(r * r for r in rows)
    steps = _steps(optimizer, source)
    q = min(max(eta0 * lmax, 0.0), 1.0)  # the stiffest direction's contraction per step
    sync = fixed
    if o.sync_every == "auto":
        s = math.floor(1.0 / (k_eff * q)) if q > 0 else steps
        s = max(s, math.ceil(steps / MAX_ROUNDS_PER_EPOCH), 1)
        sync = None if s >= steps else s
    x = 1.0 - (1.0 - q) ** (steps if sync is None else min(sync, steps))
    factor = k_eff if x <= 0 else min(k_eff, 1.0 / x)
    return Mixing(sync, max(1.0, factor))


def rounds_per_epoch(optimizer, source, sync_every: int | None) -> int | None:
    """Rounds in an epoch: 1, or enough rounds of ``sync_every`` steps for the largest
    chunk; None where chunk sizes are not known in advance (a dask DataFrame): rounds then
    go on until one takes no step."""
    if not sync_every:
        return 1
    if _chunk_rows(source) is None:
        return None
    return max(1, math.ceil(_steps(optimizer, source) / sync_every))


def descend(optimizer, ex, state: LoopState, plan: SGDPlan, epochs: int | None, validate=None, on_epoch=None,
            checkpoint=None, lmax: float = 0.0) -> LoopState:
    """Epochs of minibatch SGD from ``state`` (see the module docstring), with the steps
    ``plan`` says (``plan_of``); ``epochs`` None: ``epochs: auto``'s stopping rule.
    ``lmax``: the curvature bound (``Mixing``)."""
    mix = mixing(optimizer, ex.source, plan.rate[1], lmax)
    plan = dataclasses.replace(plan, sync_every=mix.sync_every)
    rounds = rounds_per_epoch(optimizer, ex.source, mix.sync_every)
    limit = epochs or SGD_MAX_EPOCHS
    patience = optimizer.n_iter_no_change
    best, calm = None, 0
    t_last = time.perf_counter()
    theta = np.asarray(start_theta(state), dtype=np.float64)
    steps = _steps(optimizer, ex.source)
    with interrupt.deferred():
        while state.epoch < limit and not state.stopped_early:
            interrupt.raise_if_pending(lambda: save_now(checkpoint, state))
            epoch = state.epoch + 1
            theta, average, loss = _epoch(ex, theta, dataclasses.replace(plan, epoch=epoch), mix.factor, rounds)
            if not math.isfinite(loss) or not np.isfinite(theta).all():
                err = TrainingError(f"minibatch SGD diverged at epoch {epoch} (loss {loss:.3g}); use a smaller "
                                    f"optimizer.learning_rate than {plan.rate[1]:g} or 'auto' (1/λmax)")
                err.history = state.history
                raise err
            state.params = average if plan.average else theta
            now = time.perf_counter()
            row = {"epoch": epoch, "loss": loss, "grad_norm": math.nan,
                   "learning_rate": _rate(plan, epoch * steps), "seconds": now - t_last}
            t_last = now
            if validate is not None:
                row["val_loss"] = _watch(state, validate, epoch, optimizer.tol, patience)
            if keep_row(epoch):
                state.history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            state.epoch = epoch
            state.opt = state.opt._replace(velocity=theta)  # the last iterate: where the next epoch starts
            if epochs is None:
                if best is None or loss < best * (1 - SGD_TOL):
                    best, calm = loss, 0
                else:
                    calm += 1
                    if calm >= patience:
                        break
            if checkpoint is not None and checkpoint.due(epoch, 1e9):
                checkpoint.write(state)
    if validate is not None and state.best_params is not None:
        state.params = state.best_params
    return state


def _epoch(ex, theta, plan: SGDPlan, factor: float, rounds: int | None) -> tuple:
    """One epoch's rounds from ``theta`` (``rounds`` None: until no chunk steps): (the last
    iterate, the average of the iterates, the mean loss over the rows stepped over)."""
    loss_sum = rows = 0.0
    average = 0.0
    done = 0
    while rounds is None or done < rounds:
        start = theta
        theta, avg, part, stepped = ex.sgd_round(theta, dataclasses.replace(plan, round=done))
        if not stepped:  # past every chunk's last step (sizes unknown in advance)
            theta = start
            break
        if factor != 1.0:  # the round's move, scaled (``Mixing``)
            theta = start + factor * (theta - start)
            avg = start + factor * (avg - start)
        # Each round's average of iterates, weighted by the rows it stepped over.
        loss_sum, rows, average, done = loss_sum + part, rows + stepped, average + avg * stepped, done + 1
    return theta, (average / rows if rows else theta), (loss_sum / rows if rows else math.nan)


def start_theta(state: LoopState) -> np.ndarray:
    """Where a resumed run continues: the last iterate (kept in ``opt``) once an epoch ran."""
    return state.opt.velocity if state.epoch else state.params


def _chunk_rows(source) -> list[int] | None:
    """Each chunk's rows from the footers; None for a dask DataFrame's partitions
    (delayed objects: their sizes are known only once read)."""
    rows = [getattr(c, "rows", None) for c in source.chunks]
    return rows if rows and all(isinstance(r, int) for r in rows) else None


def _steps(optimizer, source) -> int:
    """Steps per epoch of the largest chunk (1 where chunk sizes are unknown)."""
    rows = _chunk_rows(source)
    return max(1, math.ceil(max(rows) / optimizer.batch_size)) if rows else 1


def _rate(plan: SGDPlan, step: int) -> float:
    """The rate at ``step`` (history's learning_rate: the largest chunk's last step)."""
    from .rates import schedule

    name, eta0, power_t, step_size, gamma = plan.rate
    return float(schedule(name, eta0, power_t=power_t, step_size=step_size, gamma=gamma, alpha=plan.l2)(step))
