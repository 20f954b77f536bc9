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
model, and is judged by one pass per model over the holdout. Categorical features:
``refit_levels`` (moments by level per file; new levels; the guard's level report).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import numpy as np

from .. import interrupt
from ..artifacts.registry import Registry, RegistryError
from ..artifacts.store import history_csv, model_document
from ..data import CHUNK_BYTES, ParquetSource, open_source
from ..data.listing import (
    Listing,
    deleted_positions,
    deletion_digest,
    file_stamp,
    list_data,
)
from ..errors import ArtifactError, ConfigError, DataError, TrainingError
from ..kernels import losses
from ..kernels.metrics import (
    add_errors,
    add_moments_and_errors,
    block_moments_and_errors,
    error_metrics,
)
from ..kernels.moments import Moments, merge_all
from ..runtime.executor import Executor, stream_above_for, worker_records
from . import guard as validate
from . import refit_levels as levels
from .prepare import pick_strategy
from .training import fit, fit_moments

log = logging.getLogger(__name__)

DATE_KEY = "date"
#: events.jsonl lines a refit reads for the staleness report (the newest).
RECENT_EVENTS = 50


@dataclass
class RefitOutcome:
    version: str | None
    promoted: bool
    verdict: dict
    files_read: int
    message: str
    status: str = "promoted"  # promoted | rejected | quarantined | backfilled (exit 0, 3, 3, 0)
    fingerprint: str | None = None  # of the inputs (config, the window's files): reruns compare it
    repeat: bool = False  # a rerun that repeated an earlier run's verdict and wrote nothing
    # What ``_commit`` writes: the version's files, current.json as it was when the refit
    # began (for the compare-and-swap), the nights to quarantine and those to lift.
    files: dict | None = field(default=None, repr=False)
    expect: tuple | None = field(default=None, repr=False)
    quarantine: list = field(default_factory=list)
    lift: list = field(default_factory=list)


def window_dates(cfg, as_of: date, skip=(), listing: Listing | None = None) -> list[str]:
    """The date partitions of the window, oldest first, without the nights in ``skip``
    (quarantined). ``listing``: ``list_data``'s (a table's partition values come from its
    log, a folder's from its ``date=…/`` paths)."""
    listing = listing or list_data(cfg.data)
    dates = sorted({d for full, rel in listing[2] for d in [_date(listing, full, rel)] if d is not None})
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
    listing = list_data(cfg.data)
    _, _, found, _, infos = listing
    dates = set(window_dates(cfg, as_of, listing=listing))
    files = [full for full, rel in found if _date(listing, full, rel) in dates]
    return WindowSize(files, sum(infos[f].get("size") or 0 for f in files), listing)


def _date(listing: Listing, full: str, rel: str) -> str | None:
    return listing.partition(full, rel).get(DATE_KEY)


def _with_dates(data_cfg, dates):
    return data_cfg.model_copy(update={"filters": [*data_cfg.filters, (DATE_KEY, "in", list(dates))]})


def _check_current(current: dict | None, cfg) -> tuple | None:
    """The current model's (m, b) for a warm start, if it reads what the config does."""
    if current is None:
        return None
    named = [c["name"] for c in current.get("categorical") or ()]
    if (current["features"] + named != [f for f in cfg.data.features if f not in named] + named
            or not set(named) <= set(cfg.data.features) or current.get("target") != cfg.data.target):
        raise ArtifactError(
            f"the current model has features {current['features'] + named} → {current.get('target')}, the config "
            f"{list(cfg.data.features)} → {cfg.data.target}: promote a compatible version or use another name")
    return np.asarray(current["m"], dtype=np.float64), float(current["b"])


def training_moments(src: ParquetSource, reg: Registry, client) -> tuple[Moments, int]:
    """Moments of the training files, cached per file; returns (moments, files read)."""
    per_file, read = reg.stats.of_files(src, reg.stats.moments,
                                        lambda sub: Executor(client, sub, cache=False).moments_by_file(),
                                        src.columns)
    # Merge in file order: the same total whichever files came from the cache.
    return merge_all(per_file), read


def judge(metric: str, max_regression: float, challenger: dict, current: dict | None) -> tuple[bool, str]:
    if current is None:
        return True, "first model"
    ch, cur = challenger[metric], current[metric]
    if metric in losses.LOWER_IS_BETTER:
        ok = ch <= cur * (1 + max_regression)
        return ok, f"{metric} {ch:.6g} vs current {cur:.6g} (allowed up to +{max_regression:.1%})"
    ok = ch >= cur - max_regression
    return ok, f"{metric} {ch:.6g} vs current {cur:.6g} (allowed down to -{max_regression:g})"


def refit(cfg, client, as_of: date, listing=None, allow_rollback: bool = False) -> RefitOutcome:
    """One night's refit (see module docstring), recorded as one line of the registry's
    events.jsonl. Idempotent: rerunning an as-of date with the same data and config
    repeats its verdict and exit status and writes nothing.

    The refit decides first and writes after (``_commit``): the version, current.json,
    the event and the night's record, with SIGINT/SIGTERM held until all are written. A
    SIGKILL among them is finished by the next refit (``recover``).
    ``listing``: ``list_files_detailed`` of ``data.path`` just made (``window_size``).
    ``allow_rollback``: a past as-of date may replace a newer current model."""
    if cfg.optimizer.validation_fraction:
        raise ConfigError("refit judges each challenger on its newest days (registry.holdout_days): "
                          "set optimizer.validation_fraction to 0")
    if not pick_strategy(cfg).gram and cfg.optimizer.method != "batch":
        raise ConfigError("refit trains with optimizer.method batch")
    t0 = time.perf_counter()
    reg = Registry(cfg.registry.dir, cfg.name, cfg.data.storage_options)
    with reg.lock():
        recover(reg)
        outcome = _refit(cfg, client, as_of, reg, listing, allow_rollback)
        if not outcome.repeat:
            with interrupt.deferred():
                _commit(reg, outcome, as_of.isoformat(), time.perf_counter() - t0)
    interrupt.raise_if_pending()
    return outcome


def _commit(reg: Registry, o: RefitOutcome, day: str, seconds: float) -> None:
    """Write what the refit decided, in an order a crash can be recovered from: the
    quarantine or the version, then current.json, then the event, then the night's record
    (which makes a rerun a repeat)."""
    v = o.verdict
    for night in o.quarantine:
        reg.quarantine(night, v["checks"], as_of=day)
    for night in o.lift:  # an earlier run of this as-of date quarantined it; the data changed since
        reg.lift(night)
    current = reg.current()
    v.setdefault("current_version", current)
    if o.files is not None:
        o.version = reg.new_version(day, o.files)
        if o.promoted:
            try:
                reg.promote(o.version, v["reason"], expect=o.expect)
            except RegistryError:
                reg.drop_version(o.version)  # lost a race on current.json: change nothing
                raise
    o.message = _message(o, current)
    _log(reg, o, day, seconds)


def _message(o: RefitOutcome, current: str | None) -> str:
    v, read = o.verdict, f"{o.files_read} file(s) read"
    if o.status == "quarantined":
        return f"{v['reason']}; current stays {current}; {read}"
    if o.status == "promoted":
        return f"promoted {o.version}: {v['reason']}; {read}" + _drift_note(v)
    return f"{o.status} {o.version}: {v['reason']}; current stays {current}; {read}" + _drift_note(v)


def _log(reg: Registry, o: RefitOutcome, day: str, seconds: float, **extra) -> None:
    """The event (events.jsonl) and the night's record (nights/DATE.json)."""
    v = o.verdict or {}
    reg.append_event({
        "as_of": day, "status": o.status, "version": o.version,
        "metric": v.get("metric"), "challenger": v.get("challenger"), "current": v.get("current"),
        "current_version": v.get("current_version"), "reason": v.get("reason"),
        "train_dates": v.get("train_dates"), "holdout_dates": v.get("holdout_dates"),
        "checks": v.get("checks", []), "quarantined": v.get("quarantined", []),
        "drift": v.get("drift", []), "staleness": v.get("staleness"), "night_fit": v.get("night_fit"),
        "waived": v.get("waived", []), "levels": v.get("levels", []), "table": v.get("table"),
        "files_read": o.files_read, "cache_objects_read": reg.stats.objects_read,
        "seconds": round(seconds, 3), "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra})
    reg.put_night_record(day, _record(o))


def _record(o: RefitOutcome) -> dict:
    """The night's record: what a rerun with the same fingerprint repeats."""
    return {"fingerprint": o.fingerprint, "status": o.status, "version": o.version, "message": o.message,
            "verdict": o.verdict or {}, "files_read": o.files_read}


def recover(reg: Registry) -> str | None:
    """Finish a refit a SIGKILL cut short after it wrote its version (``_commit``'s order:
    version, current.json, event, night's record). The newest version, if no event logs
    it, was never logged: a promoted one whose current.json was not yet replaced is
    promoted now if current.json is still the model it was judged against (else a person
    changed current since, and it is logged as not deployed). If logged but not in its
    date's record, the record is written (else a rerun trains again). Returns what it did."""
    newest = reg.newest_version()
    if newest is None:
        return None
    v = reg.verdict(newest) or {}
    current = reg.current()
    day = str(v.get("as_of") or newest[:10])
    logged = newest in {e.get("version") for e in reg.events(last=RECENT_EVENTS)}
    if logged and (reg.night_record(day) or {}).get("version") == newest:
        return None
    promoted = newest == current if logged else bool(v.get("promoted"))  # logged: current.json was replaced
    status = "promoted" if promoted else v.get("status", "rejected")
    note = None
    if not logged and v.get("promoted") and current != newest:
        if current == v.get("current_version"):
            reg.promote(newest, f"{v.get('reason')} (promotion completed after an interrupted refit)")
            note = f"completed the promotion of {newest}, interrupted before current.json was replaced"
        else:
            status = "not deployed"
            note = f"{newest} was promoted by an interrupted refit, but current.json has changed since: left as it is"
    o = RefitOutcome(newest, status == "promoted", v, int(v.get("files_read") or 0), "", status=status,
                     fingerprint=v.get("fingerprint"))
    o.message = note or _message(o, current)
    if logged:
        reg.put_night_record(day, _record(o))
    else:
        _log(reg, o, day, 0.0, recovered=True)
    log.warning("recovered an interrupted refit: %s", note or f"{'recorded' if logged else 'logged'} {newest}")
    return o.message


@dataclass
class Window:
    """An as-of date's date partitions: ``hold`` judges, ``train`` trains (``first``:
    no current model and too few dates to hold one out, so all of them train)."""

    dates: list[str]
    train: list[str]
    hold: list[str]
    first: bool


def plan_window(cfg, reg: Registry, as_of: date, listing: Listing) -> Window:
    """The window of ``as_of`` without the quarantined nights, except those its own
    earlier run quarantined (a rerun sees the window that run saw, so it can repeat it)."""
    day = as_of.isoformat()
    released = reg.released()  # a night in both is a release cut short: it writes released.json first
    skip = {d for d, e in reg.quarantined().items() if d not in released
            and not (isinstance(e, dict) and e.get("as_of") == day and e.get("by", "refit") == "refit")}
    dates = window_dates(cfg, as_of, skip=skip, listing=listing)
    need = cfg.registry.holdout_days + 1
    # The first night of a new pipeline: no current model to compare with, and maybe
    # too few days to hold some out. Train on all there is and promote it.
    first = len(dates) < need and reg.current() is None
    if len(dates) < need and not first:
        raise DataError(f"data.path '{cfg.data.path}': {len(dates)} date partitions (date=YYYY-MM-DD/) up to "
                        f"{day}; a refit needs at least {need} ({cfg.registry.holdout_days} held out)")
    if first:
        return Window(dates, dates, [], True)
    h = cfg.registry.holdout_days
    return Window(dates, dates[:-h], dates[-h:], False)


def _refit(cfg, client, as_of: date, reg: Registry, listing=None, allow_rollback: bool = False) -> RefitOutcome:
    """The night's decision; writes nothing but the statistics cache (``_commit`` does)."""
    day = as_of.isoformat()
    hand = reg.quarantined().get(day)
    if isinstance(hand, dict) and hand.get("by") == "hand":
        msg = f"{day} was quarantined by hand ({hand.get('at')}); current stays {reg.current()}; nothing to do"
        return RefitOutcome(None, False, {"quarantined": [day], "checks": hand.get("checks", [])}, 0, msg,
                            status="quarantined", repeat=True)
    done = reg.night_record(day)
    listing = _night_listing(cfg, done, listing)
    win = plan_window(cfg, reg, as_of, listing)
    released = reg.released()
    fingerprint = _fingerprint(cfg, win, listing, released, allow_rollback)
    if done and done.get("fingerprint") == fingerprint:
        return _repeat(done, day)
    try:
        window, train_src, hold_src = _open_window(cfg, client, reg, win, listing)
    except _SchemaFault as fault:
        return _quarantine(as_of, win.hold, [{"check": "schema", "message": fault.message}], fingerprint,
                           night={"table": getattr(listing, "table", None)})

    current_state = reg.current_state()  # what promote's compare-and-swap expects to find
    current = reg.current_model()
    init = _check_current(current, cfg)
    levels.check_current(current, window)
    result, files_read = _train(cfg, client, reg, win, train_src, init, current)
    night, challenger_score, current_score = {}, dict(result.metrics), None
    if not win.first:
        challenger_score, current_score, hold_mom, changes = _score_holdout(cfg, client, reg, hold_src, result,
                                                                            init, current)
        files_read += len(hold_src.files)
        own = None
        if pick_strategy(cfg).newton and hold_mom is not None and hold_mom.finite() and hold_mom.n:
            own = _own_fit(cfg, client, hold_src, result, hold_mom)
        night = _check_night(cfg, reg, train_src, win.hold, hold_mom, current_score, own)
        if changes:
            night["levels"] = changes
        waived = [d for d in win.hold if d in released]
        if night["checks"] and waived:  # released by hand: a false alarm, the checks are waived
            night["waived"], night["checks"] = night["checks"], []
        if night["checks"]:
            return _quarantine(as_of, win.hold, night["checks"], fingerprint, files_read,
                               {**night, "table": window.table})

    reg.stats.consolidate([window.file_key(f) for f in window.files])  # the cache's objects for the nights to come
    promote, status, why = _gate(cfg, win, challenger_score, current_score)
    newer = (current or {}).get("as_of")
    if promote and newer and newer > day and not allow_rollback:  # a backfill keeps production as it is
        promote, status = False, "backfilled"
        why = (f"{why}; not promoted: the current model {current_state[0]} is as of {newer}, newer than "
               f"{day} (--allow-rollback promotes a past night's model)")
    verdict = {"promoted": promote, "status": status, "reason": why, "as_of": day, "table": window.table,
               "metric": cfg.registry.promote.metric, "holdout_dates": win.hold,
               "train_dates": [win.train[0], win.train[-1]],
               "challenger": challenger_score, "current": current_score,
               "current_version": current_state[0], "files_read": files_read,
               "fingerprint": fingerprint, **night}
    result.source = train_src
    doc = model_document(cfg, result)
    doc.update({"as_of": day, "holdout_metrics": challenger_score, "warm_start": current_state[0]})
    files = {"model.json": json.dumps(doc, indent=2) + "\n", "history.csv": history_csv(result.history),
             "verdict.json": json.dumps(verdict, indent=2) + "\n"}
    lift = [d for d in win.hold if (reg.quarantined().get(d) or {}).get("as_of") == day]
    return RefitOutcome(None, promote, verdict, files_read, "", status=status, fingerprint=fingerprint,
                        files=files, expect=current_state, lift=lift)


def _night_listing(cfg, done: dict | None, listing):
    """One listing a night. A rerun reads the table snapshot its date's first run read,
    not the newest (unless ``data.version`` or ``data.as_of_time`` say otherwise)."""
    pinned = ((done or {}).get("verdict") or {}).get("table")
    if pinned and cfg.data.version is None and cfg.data.as_of_time is None and (
            listing is None or getattr(listing, "table", None) != pinned):
        return list_data(cfg.data, version=pinned["version"])
    return listing or list_data(cfg.data)


class _SchemaFault(Exception):
    """The held-out night does not open (its files' columns or types), the earlier ones do."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _open_window(cfg, client, reg: Registry, win: Window, listing):
    """(the window's source, its training nights', its held-out nights'): footers read
    for new files only. A night that does not open while the earlier ones do is the new
    night's fault (``_SchemaFault``)."""
    known = reg.stats.plan  # files in the statistics cache: no footer read
    try:
        window = open_source(_with_dates(cfg.data, win.dates), known=known, listing=listing)
    except DataError as e:
        if not win.hold:
            raise
        open_source(_with_dates(cfg.data, win.train), known=known, listing=listing)
        raise _SchemaFault(str(e)) from None
    # Small files packed; statistics still per file. The layout is the data's alone.
    window.layout(CHUNK_BYTES, stream_above=stream_above_for(worker_records(client), CHUNK_BYTES))
    train_src, hold_src = (window.subset([f["full_path"] for f in window.files
                                          if f["partition"].get(DATE_KEY) in part])
                           for part in (set(win.train), set(win.hold)))
    return window, train_src, hold_src


def _train(cfg, client, reg: Registry, win: Window, train_src: ParquetSource, init, current) -> tuple:
    """(the challenger's FitResult, files read): from per-file moments where the loss has
    them (gram), else epochs over the training window (``current``: the warm start's
    model.json, for its levels)."""
    if pick_strategy(cfg).gram and train_src.categorical and not cfg.model.l2:  # with l2: Newton passes
        groups, names, files_read = levels.training_groups(cfg, train_src, reg, client)
        return levels.fit_grouped(cfg, train_src, groups, names), files_read
    if pick_strategy(cfg).gram and not train_src.categorical:
        mom, files_read = training_moments(train_src, reg, client)
        if mom.n < len(cfg.data.features) + int(cfg.model.fit_intercept):
            raise DataError(f"only {mom.n} training rows in {win.train[0]}..{win.train[-1]}")
        # Refinement reads the training files only where the float64 gradient stalls above tol.
        return fit_moments(cfg, mom, init=init, refine_pass=Executor(client, train_src, cache=False).refine_sums), \
            files_read
    # No sufficient statistics (logistic, Huber, least squares with levels and l2): every
    # epoch or Newton pass reads the training window.
    run_cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"checkpoint_every": 0})})
    return fit(run_cfg, client, init=init, source=train_src,
               init_levels=(current or {}).get("categorical")), len(train_src.files)


def _score_holdout(cfg, client, reg: Registry, hold_src: ParquetSource, result, init, current) -> tuple:
    """(challenger's score, current model's score, the held-out night's moments, its
    levels' changes against the challenger's: ``refit_levels.level_changes``)."""
    if hold_src.categorical:
        groups, names = levels.holdout_groups(client, reg, hold_src)
        hold_mom = groups.to_moments()
        scores = (None, None)
        if hold_mom.finite() and hold_mom.n:
            scores = levels.judge_by_passes(cfg, client, hold_src, result, current)
        return (*scores, hold_mom, levels.level_changes(result.categorical, groups, names, hold_src.categorical))
    if pick_strategy(cfg).gram:
        return (*_judge_on_holdout(client, reg, hold_src, result, init), [])
    hold_mom = _holdout_moments(client, reg, hold_src)  # the night's moments for its checks
    challenger_score = current_score = None
    if hold_mom.finite() and hold_mom.n:  # then one pass per model
        challenger_score, current_score = _judge_by_passes(client, hold_src, result, init, cfg)
    return challenger_score, current_score, hold_mom, []


def _gate(cfg, win: Window, challenger_score, current_score) -> tuple[bool, str, str]:
    """(promote, status, reason): the first model is promoted, a later one by the gate
    (``registry.promote``)."""
    if win.first:
        return True, "promoted", (f"first model: trained on all {len(win.dates)} date partition(s), none held out "
                                  "(no current model to compare with)")
    promote, why = judge(cfg.registry.promote.metric, cfg.registry.promote.max_regression,
                         challenger_score, current_score)
    return promote, "promoted" if promote else "rejected", why


def _repeat(record: dict, day: str) -> RefitOutcome:
    """The outcome an earlier run of ``day`` recorded, repeated: same status, nothing written."""
    msg = f"already refit for {day} with the same data and config; nothing to do: {record.get('message')}"
    return RefitOutcome(record.get("version"), False, record.get("verdict") or {}, 0, msg,
                        status=record.get("status", "promoted"), fingerprint=record.get("fingerprint"),
                        repeat=True)


def _drift_note(verdict: dict) -> str:
    drift, changes = verdict.get("drift") or [], verdict.get("levels") or []
    note = "; drift: " + ", ".join(d["message"] for d in drift) if drift else ""
    return note + ("; levels: " + ", ".join(c["message"] for c in changes) if changes else "")


def _own_fit(cfg, client, hold_src: ParquetSource, result, hold_mom) -> dict:
    """The held-out night's own fit by the loss (Newton passes from the challenger): its
    D² = 1 − deviance / null deviance (``guard.deviance_checks``), or what stopped it."""
    run_cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"checkpoint_every": 0})})
    try:
        own = fit(run_cfg, client, init=(result.m, result.b), source=hold_src, init_levels=result.categorical)
    except (DataError, TrainingError) as e:
        return {"error": str(e)}
    d2 = own.metrics.get("d2")
    if d2 is None and own.metrics.get("log_loss") is not None:  # logistic: against the entropy of ȳ
        p = float(hold_mom.mean[-1])
        null = -(p * np.log(p) + (1 - p) * np.log1p(-p)) if 0 < p < 1 else 0.0
        d2 = 1 - own.metrics["log_loss"] / null if null > 0 else None
    return {"d2": d2, "deviance": own.final_loss, "converged": own.converged,
            "coef": [*map(float, own.m), float(own.b)]}


def _check_night(cfg, reg: Registry, train_src: ParquetSource, hold_dates, hold_mom, current_score,
                 own: dict | None = None) -> dict:
    """``validate.check_night`` for the new night(s), from the cache of the earlier nights'
    per-file moments and the holdout pass; non-finite values fail as ``nulls``; ``own``:
    the night's own fit by the loss (``_own_fit``), judged against the D² recent nights
    recorded. Returns the verdict's entries: checks failed, drift, the night's own fit,
    staleness."""
    metric = cfg.registry.promote.metric
    events = reg.events(last=RECENT_EVENTS)
    recent = [(e.get("current") or {}).get(metric) for e in events
              if e.get("status") in ("promoted", "rejected") and e.get("current")]
    stale = validate.staleness(metric, None if current_score is None else current_score.get(metric), recent,
                               cfg.registry.validate.error_ratio)
    if hold_mom is None or not hold_mom.finite() or hold_mom.n == 0:
        return {"checks": [{"check": "nulls", "message": f"the night {', '.join(hold_dates)} holds NaN/inf/null "
                                                         "values (or no rows)"}], "staleness": stale}
    by_date: dict[str, list] = {}
    for f in train_src.files:
        mom = reg.stats.moments(train_src.file_key(f))
        if mom is not None:
            by_date.setdefault(f["partition"].get(DATE_KEY), []).append(mom)
    earlier = [validate.NightStats.of(d, merge_all(m)) for d, m in sorted(by_date.items())]
    window = merge_all([m for d in sorted(by_date) for m in by_date[d]]) if by_date else None
    numeric = [f for f in cfg.data.features if f not in train_src.categorical]  # the moments' columns
    report = validate.check_night(validate.NightStats.of(",".join(hold_dates), hold_mom), earlier,
                                  numeric, cfg.registry.validate, window)
    failed, night_fit = report.failed, report.fit
    if own is not None:
        recent_d2 = [(e.get("night_fit") or {}).get("d2") for e in events
                     if e.get("status") in ("promoted", "rejected") and e.get("as_of") not in hold_dates]
        failed = failed + validate.deviance_checks(own, float(hold_mom.n), recent_d2, cfg.registry.validate)
        night_fit = {**(night_fit or {}), "d2": own.get("d2"), "deviance": own.get("deviance"),
                     "own_coef": own.get("coef")}
    return {"checks": failed, "drift": report.drift, "night_fit": night_fit, "staleness": stale}


def _quarantine(as_of: date, nights, failed: list[dict], fingerprint: str, files_read: int = 0,
                night: dict | None = None) -> RefitOutcome:
    """Leave the night(s) out of every later refit; current stays."""
    what = "; ".join(f.get("message", f["check"]) for f in failed)
    verdict = {**(night or {}), "promoted": False, "status": "quarantined", "quarantined": list(nights),
               "checks": failed, "as_of": as_of.isoformat(),
               "reason": f"quarantined {', '.join(nights)}: {what}", "fingerprint": fingerprint}
    return RefitOutcome(None, False, verdict, files_read, "", status="quarantined", fingerprint=fingerprint,
                        quarantine=list(nights))


def _judge_by_passes(client, hold_src: ParquetSource, result, init, cfg) -> tuple:
    """The challenger's (and the current model's) metrics on the holdout days, one pass
    each, for losses without cached statistics."""
    ex = Executor(client, hold_src, cache=False, loss=losses.of(cfg.model))
    scores = [ex.metrics(m, b) for m, b in [(result.m, result.b)] + ([init] if init is not None else [])]
    return scores[0], (scores[1] if init is not None else None)


def _holdout_moments(client, reg: Registry, hold_src: ParquetSource) -> Moments:
    """The holdout files' moments (one pass), cached for the nights to come: what a night
    is judged by when the loss has no sufficient statistics of its own."""
    per_file = Executor(client, hold_src, cache=False).moments_by_file()
    reg.stats.put_files(hold_src, per_file)
    return merge_all([per_file[f["full_path"]] for f in hold_src.files])


def _judge_on_holdout(client, reg: Registry, hold_src: ParquetSource, result, init) -> tuple:
    """The challenger's (and the current model's) metrics on the holdout days, in one
    pass that also caches the holdout files' moments for the nights to come."""
    models = [(result.m, result.b)] + ([init] if init is not None else [])
    ex = Executor(client, hold_src, cache=False)
    per_file = ex.rows_by_file(block_moments_and_errors, add_moments_and_errors, models, hold_src.weighted)
    reg.stats.put_files(hold_src, {k: v[0] for k, v in per_file.items()})
    errors = [per_file[f["full_path"]][1] for f in hold_src.files]
    merged = [errors[0][i] for i in range(len(models))]
    for errs in errors[1:]:
        merged = [add_errors(a, b) for a, b in zip(merged, errs)]
    scores = [error_metrics(e) for e in merged]
    hold_mom = merge_all([per_file[f["full_path"]][0] for f in hold_src.files])
    return scores[0], (scores[1] if init is not None else None), hold_mom


def _fingerprint(cfg, win: Window, listing, released: dict, allow_rollback: bool = False) -> str:
    """What a night's verdict depends on, from the listing alone: the config, the window's
    dates and each of their files (path, size, mtime or ETag), and the nights released."""
    _, _, found, _, infos = listing
    inside = set(win.dates)
    files = [[rel, infos[full].get("size"), file_stamp(infos[full]),
              *([deletion_digest(d)] if (d := deleted_positions(infos[full])) else [])]
             for full, rel in found if _date(listing, full, rel) in inside]
    doc = {"config": cfg.model_dump(mode="json", exclude={"cluster", "output"}),
           "train": win.train, "holdout": win.hold, "files": files,
           "released": sorted(d for d in released if d in inside), "allow_rollback": allow_rollback}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
