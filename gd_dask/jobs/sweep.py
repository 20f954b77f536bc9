"""The article's lesson made real: the same data at several learning rates.

With the gram strategy one pass over the data serves every rate (each run then costs
O(d²) per epoch on the client); otherwise each rate is a full training run.
"""

from __future__ import annotations

import logging
import time

from ..data import open_source
from ..errors import ConfigError, TrainingError
from .categorical import fit_categorical
from .prepare import pick_strategy, prepare
from .training import fit, fit_moments

log = logging.getLogger(__name__)


def sweep(cfg, client, rates: list, source=None) -> list[dict]:
    """One row per rate: rate, learning rate used, status, epochs, final loss, losses.
    ``source``: ``cfg.data``'s footers, if read already."""
    gram = pick_strategy(cfg).gram
    source = source or open_source(cfg.data)
    if source.categorical and (not gram or cfg.model.l2):
        what = "model.l2 > 0" if gram else f"model.loss {cfg.model.loss}"
        raise ConfigError(f"sweep with categorical features ({', '.join(source.categorical)}) takes model.loss "
                          f"squared without l2 (its rates descend on the grouped moments); {what} trains "
                          "them by Newton steps, which have no learning rate")
    prep = prepare(cfg, client, source) if gram else None  # one moments pass serves every rate
    rows = []
    for rate in rates:
        run_cfg = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(
            update={"learning_rate": rate}), "output": cfg.output.model_copy(update={"checkpoint_every": 0})})
        try:
            if prep is not None and prep.groups is not None:  # the reduced problem, at this rate
                res = fit_categorical(run_cfg, prep, time.perf_counter())
            elif gram:
                res = fit_moments(run_cfg, prep.mom, val_mom=prep.val_mom, refine_pass=prep.ex.refine_sums)
            else:
                res = fit(run_cfg, client, source=source)
            if res.validation and res.validation["stopped_early"]:
                status = "stopped early"
            else:
                status = "converged" if res.converged else "not converged"
            rows.append({"rate": str(rate), "learning_rate": res.learning_rate, "momentum": res.momentum,
                         "status": status, "epochs": res.epochs_run, "final_loss": res.final_loss,
                         "losses": [h["loss"] for h in res.history]})
        except TrainingError as e:
            hist = getattr(e, "history", [])
            rows.append({"rate": str(rate), "learning_rate": float(rate), "momentum": 0.0, "status": "diverged",
                         "epochs": len(hist), "final_loss": float("nan"),
                         "losses": [h["loss"] for h in hist], "message": str(e)})
    return rows
