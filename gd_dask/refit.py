"""Nightly refit: window of date partitions, warm start, incremental statistics, gate.

For an as-of date D the window is the last ``data.window_days`` date partitions up to D.
Its newest ``registry.holdout_days`` dates are the holdout; the challenger trains on the
rest (forward chaining: both models are judged on days neither has seen, so a night of
corrupted labels is caught when it enters training, and a corrupted holdout cannot pass
a model that learnt from it). Squared loss trains with the ``gram`` strategy from per-file
moments cached in the registry (keyed by path, size, mtime/ETag; ``stats_cache``): only
files never seen are read, footers included, and the cache itself is a few objects. The
holdout pass also computes and caches the holdout files' moments, so on a regular night
only the newest day is read, once. A loss without sufficient statistics
(logistic, Huber) trains by stream epochs over the window, warm-started from the current
model, and is judged by one pass per model over the holdout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone

import numpy as np

from . import gradient as g
from . import losses, validate
from .data import CHUNK_BYTES, ParquetSource, hive_keys, list_files, open_source
from .data.source import list_files_detailed
from .errors import ArtifactError, ConfigError, DataError
from .executor import Executor, chunk_bytes_for
from .registry import Registry, RegistryError
from .store import history_csv, model_document
from .prepare import pick_strategy
from .training import fit, fit_moments

log = logging.getLogger(__name__)

DATE_KEY = "date"


@dataclass
class RefitOutcome:
    version: str | None
    promoted: bool
    verdict: dict
    files_read: int
    message: str
    status: str = "promoted"  # promoted | rejected | quarantined | nothing to do (exit 0, 3, 3, 0)


def window_dates(cfg, as_of: date, skip=(), found=None) -> list[str]:
    """The date partitions of the window, oldest first, without the nights in ``skip``
    (quarantined). ``found``: ``list_files``'s (full path, relative path) pairs."""
    if found is None:
        _, _, found, _ = list_files(cfg.data.path, cfg.data.storage_options)
    dates = sorted({k[DATE_KEY] for _, rel in found for k in [hive_keys(rel)] if DATE_KEY in k})
    dates = [d for d in dates if d <= as_of.isoformat() and d not in skip]
    if cfg.data.window_days:
        dates = dates[-cfg.data.window_days:]
    if not dates:
        raise DataError(f"data.path '{cfg.data.path}': no date partitions (date=YYYY-MM-DD/) up to "
                        f"{as_of.isoformat()}")
    return dates


@dataclass
class WindowSize:
    """What ``cluster.processes: auto`` weighs (``cluster.use_processes``): the window's
    files and their bytes on disk, from the listing alone (``listing``, which the refit
    then uses rather than listing again)."""

    files: list
    nbytes: int
    listing: tuple


def window_size(cfg, as_of: date) -> WindowSize:
    """The size of ``as_of``'s window before any footer is read or cluster started, so a
    small refit runs on threads of the command's process (quarantined nights counted)."""
    listing = list_files_detailed(cfg.data.path, cfg.data.storage_options)
    _, _, found, _, infos = listing
    dates = set(window_dates(cfg, as_of, found=found))
    files = [full for full, rel in found if hive_keys(rel).get(DATE_KEY) in dates]
    return WindowSize(files, sum(infos[f].get("size") or 0 for f in files), listing)


def _with_dates(data_cfg, dates):
    return data_cfg.model_copy(update={"filters": [*data_cfg.filters, (DATE_KEY, "in", list(dates))]})


def _check_current(current: dict | None, cfg) -> tuple | None:
    if current is None:
        return None
    if current["features"] != list(cfg.data.features) or current.get("target") != cfg.data.target:
        raise ArtifactError(
            f"the current model has features {current['features']} → {current.get('target')}, the config "
            f"{list(cfg.data.features)} → {cfg.data.target}: promote a compatible version or use another name")
    return np.asarray(current["m"], dtype=np.float64), float(current["b"])


def training_moments(src: ParquetSource, reg: Registry, client) -> tuple[g.Moments, int]:
    """Moments of the training files, cached per file; returns (moments, files read)."""
    cached, unseen = {}, []
    for f in src.files:
        mom = reg.stats.moments(src.file_key(f))
        if mom is None:
            unseen.append(f)
        else:
            cached[f["full_path"]] = mom
    if unseen:
        sub = src.subset([f["full_path"] for f in unseen])
        ex = Executor(client, sub, cache=False)
        fresh = ex.moments_by_file()
        for f in unseen:
            mom = fresh[f["full_path"]]
            _check_finite(mom, f, src)
            reg.stats.put(src.file_key(f), mom, src.footer_plan(f))
            cached[f["full_path"]] = mom
        reg.stats.flush()
    # Merge in file order: the same total whichever files came from the cache.
    return g.merge_all([cached[f["full_path"]] for f in src.files]), len(unseen)


def _check_finite(mom: g.Moments, f: dict, src: ParquetSource) -> None:
    if not mom.finite():
        j = int(np.flatnonzero(~np.isfinite(np.diag(mom.comoment)) | ~np.isfinite(mom.mean))[0])
        raise DataError(f"{f['path']}: column '{src.columns[j]}' has NaN/inf/null or overflowing values; "
                        "fix the file or set data.missing: drop")


def judge(metric: str, max_regression: float, challenger: dict, current: dict | None) -> tuple[bool, str]:
    if current is None:
        return True, "first model"
    ch, cur = challenger[metric], current[metric]
    if metric in losses.LOWER_IS_BETTER:
        ok = ch <= cur * (1 + max_regression)
        return ok, f"{metric} {ch:.6g} vs current {cur:.6g} (allowed up to +{max_regression:.1%})"
    ok = ch >= cur - max_regression
    return ok, f"{metric} {ch:.6g} vs current {cur:.6g} (allowed down to -{max_regression:g})"


def refit(cfg, client, as_of: date, listing=None) -> RefitOutcome:
    """One night's refit (see module docstring), recorded as one line of the registry's
    events.jsonl. Safe to rerun: the same as-of date and data give no second version.
    ``listing``: ``list_files_detailed`` of ``data.path`` just made (``window_size``)."""
    if cfg.optimizer.validation_fraction:
        raise ConfigError("refit judges each challenger on its newest days (registry.holdout_days): "
                          "set optimizer.validation_fraction to 0")
    if pick_strategy(cfg) != "gram" and cfg.optimizer.method != "batch":
        raise ConfigError("refit trains with optimizer.method batch")
    t0 = time.perf_counter()
    reg = Registry(cfg.registry.dir, cfg.name, cfg.data.storage_options)
    with reg.lock():
        outcome = _refit(cfg, client, as_of, reg, listing)
        v = outcome.verdict or {}
        reg.append_event({
            "as_of": as_of.isoformat(), "status": outcome.status, "version": outcome.version,
            "metric": v.get("metric"), "challenger": v.get("challenger"), "current": v.get("current"),
            "current_version": v.get("current_version"), "reason": v.get("reason"),
            "train_dates": v.get("train_dates"), "holdout_dates": v.get("holdout_dates"),
            "checks": v.get("checks", []), "quarantined": v.get("quarantined", []),
            "files_read": outcome.files_read, "cache_objects_read": reg.stats.objects_read,
            "seconds": round(time.perf_counter() - t0, 3),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return outcome


def _refit(cfg, client, as_of: date, reg: Registry, listing=None) -> RefitOutcome:
    gram = pick_strategy(cfg) == "gram"
    listing = listing or list_files_detailed(cfg.data.path, cfg.data.storage_options)  # one listing a night
    dates = window_dates(cfg, as_of, skip=reg.quarantined(), found=listing[2])
    need = cfg.registry.holdout_days + 1
    # The first night of a new pipeline: no current model to compare with, and maybe
    # too few days to hold some out. Train on all there is and promote it.
    first_night = len(dates) < need and reg.current() is None
    if len(dates) < need and not first_night:
        raise DataError(f"data.path '{cfg.data.path}': {len(dates)} date partitions (date=YYYY-MM-DD/) up to "
                        f"{as_of.isoformat()}; a refit needs at least {need} ({cfg.registry.holdout_days} "
                        "held out)")
    if first_night:
        hold_dates, train_dates = [], dates
    else:
        hold_dates, train_dates = dates[-cfg.registry.holdout_days:], dates[:-cfg.registry.holdout_days]
    known = reg.stats.plan if gram else None  # files in the statistics cache: no footer read
    try:
        window = open_source(_with_dates(cfg.data, dates), known=known, listing=listing)  # new files' footers
    except DataError as e:
        if not hold_dates or not gram:
            raise
        # The earlier nights open: the new one is at fault.
        open_source(_with_dates(cfg.data, train_dates), known=known, listing=listing)
        return _quarantine(reg, as_of, hold_dates, [{"check": "schema", "message": str(e)}])
    window.layout(chunk_bytes_for(client, CHUNK_BYTES))  # small files packed; statistics still per file
    train_src, hold_src = (window.subset([f["full_path"] for f in window.files
                                          if f["partition"].get(DATE_KEY) in part])
                           for part in (set(train_dates), set(hold_dates)))

    fingerprint = _fingerprint(cfg, train_src, hold_src)
    for v in reg.versions():
        if v.startswith(as_of.isoformat()) and reg.verdict(v).get("fingerprint") == fingerprint:
            promoted = reg.verdict(v)["promoted"]
            msg = f"already refit for {as_of.isoformat()} with the same data: version {v} " \
                  f"({'promoted' if promoted else 'rejected'}); nothing to do"
            return RefitOutcome(v, False, reg.verdict(v), 0, msg, status="nothing to do")

    current_state = reg.current_state()  # what promote's compare-and-swap expects to find
    current_version = current_state[0]
    current = reg.current_model()
    init = _check_current(current, cfg)
    if gram:
        mom, files_read = training_moments(train_src, reg, client)
        if mom.n < len(cfg.data.features) + int(cfg.model.fit_intercept):
            raise DataError(f"only {mom.n} training rows in {train_dates[0]}..{train_dates[-1]}")
        # Refinement reads the training files only where the float64 gradient stalls above tol.
        result = fit_moments(cfg, mom, init=init,
                             refine_pass=Executor(client, train_src, cache=False).refine_sums)
    else:  # no sufficient statistics (logistic, Huber): every epoch reads the training window
        run_cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"checkpoint_every": 0})})
        result = fit(run_cfg, client, init=init, source=train_src)
        files_read = len(train_src.files)

    if first_night:
        challenger_score, current_score = dict(result.metrics), None
    elif gram:
        challenger_score, current_score, hold_mom = _judge_on_holdout(client, reg, hold_src, hold_dates, result,
                                                                      init, cfg)
        files_read += len(hold_src.files)
        failed = _check_night(cfg, reg, train_src, hold_dates, hold_mom, current_score)
        if failed:
            return _quarantine(reg, as_of, hold_dates, failed, files_read)
    else:
        challenger_score, current_score = _judge_by_passes(client, reg, hold_src, hold_dates, result, init, cfg)
        files_read += len(hold_src.files)

    if gram:  # the cache's objects for the nights to come: the window's entries, consolidated
        reg.stats.consolidate([window.file_key(f) for f in window.files])

    if first_night:
        promote, why = True, (f"first model: trained on all {len(dates)} date partition(s), none held out "
                              "(no current model to compare with)")
    else:
        promote, why = judge(cfg.registry.promote.metric, cfg.registry.promote.max_regression,
                             challenger_score, current_score)
    verdict = {"promoted": promote, "reason": why, "as_of": as_of.isoformat(),
               "metric": cfg.registry.promote.metric, "holdout_dates": hold_dates,
               "train_dates": [train_dates[0], train_dates[-1]],
               "challenger": challenger_score, "current": current_score,
               "current_version": current_version, "files_read": files_read,
               "fingerprint": fingerprint}
    result.source = train_src
    doc = model_document(cfg, result)
    doc.update({"as_of": as_of.isoformat(), "holdout_metrics": challenger_score,
                "warm_start": current_version})
    version = reg.new_version(as_of.isoformat(), {
        "model.json": json.dumps(doc, indent=2) + "\n",
        "history.csv": history_csv(result.history),
        "verdict.json": json.dumps(verdict, indent=2) + "\n",
    })
    if promote:
        try:
            reg.promote(version, why, expect=current_state)
        except RegistryError:
            reg.drop_version(version)  # lost a race on current.json: change nothing
            raise
        msg = f"promoted {version}: {why}; {files_read} file(s) read"
    else:
        msg = f"rejected {version}: {why}; current stays {current_version}; {files_read} file(s) read"
    return RefitOutcome(version, promote, verdict, files_read, msg,
                        status="promoted" if promote else "rejected")


def _check_night(cfg, reg: Registry, train_src: ParquetSource, hold_dates, hold_mom, current_score) -> list[dict]:
    """``validate.check_night`` for the new night(s), from the cache of the earlier nights'
    per-file moments and the holdout pass; non-finite values fail as ``nulls``."""
    if not hold_mom.finite() or hold_mom.n == 0:
        return [{"check": "nulls", "message": f"the night {', '.join(hold_dates)} holds NaN/inf/null values "
                                              "(or no rows)"}]
    by_date: dict[str, list] = {}
    for f in train_src.files:
        mom = reg.stats.moments(train_src.file_key(f))
        if mom is not None:
            by_date.setdefault(f["partition"].get(DATE_KEY), []).append(mom)
    earlier = [validate.NightStats.of(d, g.merge_all(m)) for d, m in sorted(by_date.items())]
    metric = cfg.registry.promote.metric
    # The current model against its own error on earlier nights (each one night ahead of
    # its training, as now): steady drift keeps the ratio near 1.
    recent = [(e.get("current") or {}).get(metric) for e in reg.events()
              if e.get("status") in ("promoted", "rejected") and e.get("current")]
    current = None if current_score is None else current_score.get(metric)
    return validate.check_night(validate.NightStats.of(",".join(hold_dates), hold_mom), earlier,
                                [*cfg.data.features, cfg.data.target], cfg.registry.validate, metric, current,
                                recent)


def _quarantine(reg: Registry, as_of: date, nights, failed: list[dict], files_read: int = 0) -> RefitOutcome:
    """Leave the night(s) out of this and every later refit; current stays."""
    for night in nights:
        reg.quarantine(night, failed)
    what = "; ".join(f.get("message", f["check"]) for f in failed)
    verdict = {"promoted": False, "quarantined": list(nights), "checks": failed, "as_of": as_of.isoformat(),
               "current_version": reg.current(), "reason": f"quarantined {', '.join(nights)}: {what}"}
    msg = f"quarantined {', '.join(nights)}: {what}; current stays {reg.current()}; {files_read} file(s) read"
    return RefitOutcome(None, False, verdict, files_read, msg, status="quarantined")


def _judge_by_passes(client, reg: Registry, hold_src: ParquetSource, hold_dates, result, init, cfg) -> tuple:
    """The challenger's (and the current model's) metrics on the holdout days, one pass
    each, for losses without cached statistics."""
    ex = Executor(client, hold_src, cache=False, loss=losses.of(cfg.model))
    scores = [ex.metrics(m, b) for m, b in [(result.m, result.b)] + ([init] if init is not None else [])]
    if not all(np.isfinite(s[cfg.registry.promote.metric]) for s in scores):
        raise DataError(f"the holdout {hold_dates} holds NaN/inf/null values; fix the data or set data.missing: drop")
    return scores[0], (scores[1] if init is not None else None)


def _judge_on_holdout(client, reg: Registry, hold_src: ParquetSource, hold_dates, result, init, cfg) -> tuple:
    """The challenger's (and the current model's) metrics on the holdout days, in one
    pass that also caches the holdout files' moments for the nights to come."""
    models = [(result.m, result.b)] + ([init] if init is not None else [])
    ex = Executor(client, hold_src, cache=False)
    per_file = ex.rows_by_file(g.block_moments_and_errors, g.add_moments_and_errors, models, hold_src.weighted)
    for f in hold_src.files:
        hmom, _ = per_file[f["full_path"]]
        if hmom.finite():
            reg.stats.put(hold_src.file_key(f), hmom, hold_src.footer_plan(f))
    reg.stats.flush()
    errors = [per_file[f["full_path"]][1] for f in hold_src.files]
    merged = [errors[0][i] for i in range(len(models))]
    for errs in errors[1:]:
        merged = [g.add_errors(a, b) for a, b in zip(merged, errs)]
    scores = [g.metrics(e) for e in merged]
    hold_mom = g.merge_all([per_file[f["full_path"]][0] for f in hold_src.files])
    return scores[0], (scores[1] if init is not None else None), hold_mom


def _fingerprint(cfg, train_src, hold_src) -> str:
    doc = {"config": cfg.model_dump(mode="json", exclude={"cluster", "output"}),
           "train": [train_src.file_key(f) for f in train_src.files],
           "holdout": [hold_src.file_key(f) for f in hold_src.files]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
