"""Minibatch SGD's per-block kernel: the steps taken inside one chunk on a worker, from
the parameters it was sent, and the sums returned with them (``optimization.sgd``
mixes them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..kernels.blocks import aligned, scratch_vector, split_block, standardize_block
from ..kernels.losses import SQUARED, Loss


class SGDSums(NamedTuple):
    """One round of minibatch steps in one chunk (or several, once merged): the chunk
    models weighted by the chunk's rows, for parameter mixing.

    theta : Σ n_c·θ_c — each chunk's parameters after its steps
    average : Σ n_c·θ̄_c — each chunk's average of its iterates (ASGD), or zeros
    n : Σ n_c (Σw with weights)
    loss, rows : Σ of each batch's reported loss before its step, and its rows
    """

    theta: np.ndarray
    average: np.ndarray
    n: float
    loss: float
    rows: float


@dataclass(frozen=True)
class SGDPlan:
    """How a chunk runs its minibatch steps (``sgd_block``)."""

    batch: int  # rows per step
    seed: int
    epoch: int  # 1, 2, …
    round: int  # 0 … rounds − 1 within the epoch
    sync_every: int | None  # steps per round; None: the whole epoch
    rate: tuple  # (schedule name, eta0, power_t, step_size, gamma, l2 for "optimal")
    l2: float = 0.0
    l1: float = 0.0
    fit_intercept: bool = True
    average: bool = False


def sgd_block(zs, theta, index: int, plan: SGDPlan, loss: Loss = SQUARED, weighted: bool = False) -> SGDSums:
    """Minibatch steps over one *standardized* chunk from ``theta`` (training space).

    The chunk's rows are cut into consecutive batches of ``plan.batch`` rows (the last
    one shorter); each epoch visits them in an order drawn from (seed, epoch, chunk
    index), so the steps depend on the data and the seed only, never on the workers.
    A step at the batch's rows: θ ← θ − η_t·(Σ w·ψ·x̃ / Σw + l2·m), then soft
    thresholding by η_t·l1 (proximal SGD for lasso); t counts this chunk's steps from the
    first epoch.
    """
    from .rates import schedule, soft_threshold

    X, y, w = split_block(aligned(zs), weighted)
    n, d = X.shape
    steps = -(-n // plan.batch) if n else 0
    order = np.random.default_rng([plan.seed, plan.epoch, index]).permutation(steps)
    first = 0
    if plan.sync_every:
        first = plan.round * plan.sync_every
        order = order[first:first + plan.sync_every]
    name, eta0, power_t, step_size, gamma = plan.rate
    rate_at = schedule(name, eta0, power_t=power_t, step_size=step_size, gamma=gamma, alpha=plan.l2)
    m, b = np.array(theta[:d], dtype=np.float64), float(theta[d])
    total = np.zeros(d + 1) if plan.average else None
    loss_sum = rows = 0.0
    t = (plan.epoch - 1) * steps + first
    for j in order:
        lo, hi = j * plan.batch, min((j + 1) * plan.batch, n)
        xb, yb = X[lo:hi], y[lo:hi]
        wb = None if w is None else w[lo:hi]
        eta = np.matmul(xb, m, out=scratch_vector(hi - lo))
        eta += b
        psi, part = loss.terms(eta, yb, wb)
        nb = (hi - lo) if wb is None else float(wb.sum())
        if nb <= 0:
            continue
        t += 1
        lr = rate_at(t)
        gm = xb.T @ psi / nb
        if plan.l2:
            gm += plan.l2 * m
        m -= lr * gm
        if plan.fit_intercept:
            b -= lr * float(psi.sum()) / nb
        if plan.l1:
            m = soft_threshold(m, lr * plan.l1)
        loss_sum += part
        rows += nb
        if total is not None:
            total[:d] += m
            total[d] += b
    weight = float(n if w is None else w.sum())
    end = np.append(m, b)
    avg = total / max(len(order), 1) if total is not None else np.zeros(d + 1)
    return SGDSums(weight * end, weight * avg, weight, loss_sum, rows)


def sgd_raw(block, theta, index: int, plan: SGDPlan, center, scale, y_center, loss: Loss = SQUARED,
            weighted: bool = False) -> SGDSums:
    """``sgd_block`` on a raw chunk, standardized first, in place: ``block`` is a chunk
    just read from its file, used once (a second chunk-sized array to fault in cost as
    much as the steps)."""
    zs = standardize_block(block, center, scale, y_center, block, weighted)
    return sgd_block(zs, theta, index, plan, loss, weighted)


def add_sgd(a: SGDSums, b: SGDSums) -> SGDSums:
    return SGDSums(a.theta + b.theta, a.average + b.average, a.n + b.n, a.loss + b.loss, a.rows + b.rows)
