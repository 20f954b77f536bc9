"""Before the first epoch: what train, sweep and refit share.

``prepare`` opens the data, lays out its chunks for the cluster, splits off validation
rows, and makes one pass for the moments of [X, y], checked for what they reveal
(no rows, constant features, NaN/inf, overflow). ``optimization.setup.Setup`` then turns
the moments into what descent needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..kernels.moments import Moments
from ..kernels import losses
from ..data import CHUNK_BYTES, Pack, ParquetSource, open_source
from ..config import descent_asked
from ..errors import ConfigError, DataError
from ..kernels.groups import GroupMoments
from ..runtime.executor import Executor, decide_cache, stream_above_for, worker_records
from ..optimization.strategy import Strategy

log = logging.getLogger(__name__)



def pick_strategy(cfg) -> Strategy:
    """The run's ``Strategy``, ``optimizer.strategy: auto`` resolved."""
    o = cfg.optimizer
    return Strategy.of(o.strategy, losses.of(cfg.model), o.method, len(cfg.data.features), descent_asked(cfg))


@dataclass
class Prepared:
    """The data ready for descent: the training rows' executor and moments (checked),
    and the validation rows' where ``optimizer.validation_fraction`` holds some out."""

    source: ParquetSource
    strategy: Strategy
    ex: Executor
    mom: Moments
    val_ex: Executor | None = None
    val_mom: Moments | None = None
    rows_dropped: int | None = 0
    groups: GroupMoments | None = None  # with categorical features: moments by level
    level_names: dict | None = None  # their text levels' keys → text
    offset_mean: float = 0.0  # the offset's mean (an exposure's: the log of its mean), for Newton's start

    def release(self) -> None:
        for e in filter(None, (self.ex, self.val_ex)):
            e.release()


def prepare(cfg, client, source: ParquetSource | None = None) -> Prepared:
    """Open (unless ``source`` holds the footers already), lay out, split, one pass for
    the moments, checks."""
    source = source or open_source(cfg.data)
    # The layout is the data's alone (the bits must not depend on the cluster); the
    # workers' memory only sets which row groups are streamed.
    source.layout(CHUNK_BYTES, stream_above=stream_above_for(worker_records(client), CHUNK_BYTES))
    strategy = pick_strategy(cfg)
    cache = decide_cache(cfg.optimizer.cache, source, client, strategy)
    log.info("%s rows in %d files, %d chunks; strategy %s",
             "?" if source.n_rows is None else source.n_rows, len(source.files),
             len(source.chunks), strategy)
    loss = losses.of(cfg.model)
    val_ex = val_mom = None
    if cfg.optimizer.validation_fraction:
        source, val_source = source.split(cfg.optimizer.seed, cfg.optimizer.validation_fraction)
        val_ex = Executor(client, val_source, cache, loss)
    # Levels: grouped passes stream from the files; only Newton's caches its blocks.
    ex = Executor(client, source, cache, loss, lazy=strategy.newton or bool(getattr(source, "categorical", None)))
    if getattr(source, "categorical", None):  # Parquet sources; a dask DataFrame's has none yet
        check_categorical(cfg, source)
        groups, names = ex.group_moments([source.columns.index(c) for c in source.categorical])
        check_null_levels(groups, source.categorical, ex)
        numeric = [f for f in cfg.data.features if f not in source.categorical]
        offset_mean = 0.0
        if source.offset:  # the column after the numeric features: not a feature
            groups, offset_mean = _without_offset(groups, len(numeric), source.offset, ex)
        mom = groups.to_moments()
        check_moments(mom, cfg, ex, numeric)
        dropped = rows_dropped(cfg, source, mom.n)
        return Prepared(source, strategy, ex, mom, None, None, dropped, groups, names, offset_mean)
    mom = ex.moments()
    offset_mean = 0.0
    if source.offset:  # the offset's moments are not the features': its coefficient is 1
        if not mom.finite():
            _diagnose_nonfinite(mom, ex)
        d = len(cfg.data.features)
        offset_mean = _offset_mean(float(mom.mean[d]), source.offset)
        keep = np.delete(np.arange(mom.mean.shape[0]), d)
        mom = Moments(mom.n, mom.mean[keep], mom.comoment[np.ix_(keep, keep)])
    check_moments(mom, cfg, ex)
    if loss.target_rule and not strategy.newton:  # a Newton pass counts them itself
        check_targets(cfg, ex, val_ex)
    if val_ex is not None:
        val_mom = validation_moments(val_ex, cfg)
    dropped = rows_dropped(cfg, source, mom.n + (val_mom.n if val_mom else 0))
    return Prepared(source, strategy, ex, mom, val_ex, val_mom, dropped, offset_mean=offset_mean)


def _offset_mean(column_mean: float, kind: str) -> float:
    """What Newton's start subtracts from link(ȳ): the offset's mean, or the log of the
    exposure's mean."""
    return float(np.log(column_mean)) if kind == "log" and column_mean > 0 else column_mean


def _without_offset(groups: GroupMoments, j: int, kind: str, ex: Executor) -> tuple[GroupMoments, float]:
    """The grouped moments without the offset's column (``j`` among their columns), and
    ``_offset_mean``."""
    total = groups.to_moments()
    if not total.finite():
        _diagnose_nonfinite(total, ex)
    keep = np.delete(np.arange(groups.mean.shape[1]), j)
    return groups.columns(keep), _offset_mean(float(total.mean[j]), kind)


#: What categorical features are trained with so far (issue 33): the rest is refused by name.
CATEGORICAL_SUPPORT = ("squared or huber loss (grouped moments) or logistic, poisson, gamma, tweedie (newton, "
                       "offsets too), l2 but with huber, sample weights, no l1, no validation_fraction, method batch")


def streams_levels(cfg) -> bool:
    """``optimizer.strategy: stream`` with categorical features and a loss Newton's passes
    take (least squares, the GLM families): each pass streams the rows and sums the
    gradient and Hessian per level (``categorical_newton``), where ``auto`` trains least
    squares from the grouped moments; Huber's rounds stream their grouped passes as they
    are."""
    return cfg.optimizer.strategy == "stream" and cfg.model.loss != "huber"


def check_categorical(cfg, source: ParquetSource) -> None:
    """Categorical features with what supports them, or one line saying what does not."""
    o, m = cfg.optimizer, cfg.model
    # Logistic and the log-link families (``categorical_newton``); ``stream`` trains by the
    # same Newton passes over the rows (``streams_levels``).
    newton = pick_strategy(cfg).newton or streams_levels(cfg)
    bad = [what for what, wrong in (
        (f"model.loss: {m.loss}", m.loss not in ("squared", "huber") and not newton), ("model.l1 > 0", m.l1 > 0),
        ("model.fit_intercept: false", (newton or m.l2 > 0) and not m.fit_intercept),
        ("model.l2 with model.loss huber", m.loss == "huber" and m.l2 > 0),
        ("an optimizer.learning_rate with model.l2 (Newton steps have none)",
         m.l2 > 0 and o.learning_rate != "auto" and m.loss == "squared"),
        ("data.offset or data.exposure", bool(cfg.data.offset_column) and not newton),
        ("optimizer.validation_fraction > 0", o.validation_fraction > 0),
        (f"optimizer.method: {o.method}", o.method != "batch")) if wrong]
    if bad:
        raise ConfigError(f"categorical features ({', '.join(source.categorical)}) are trained with "
                          f"{CATEGORICAL_SUPPORT} so far; not with {', '.join(bad)}")


def check_null_levels(groups: GroupMoments, columns, ex: Executor | None = None) -> None:
    """A null level (a NaN key: ``data.missing: drop`` left none) is one line naming the
    column, with ``ex`` the count and the first file (a second pass), as a NaN number is."""
    if not len(groups.n):
        return
    null = np.isnan(groups.keys)
    if not null.any():
        return
    if ex is not None:
        _diagnose_nonfinite(groups.to_moments(), ex)
    c = int(np.flatnonzero(null.any(axis=0))[0])
    raise DataError(f"column '{columns[c]}' has {int(groups.count[null[:, c]].sum())} null levels; fix the data "
                    "or set data.missing: drop to skip such rows")


def check_moments(mom: Moments, cfg, ex: Executor, features=None) -> None:
    """Data problems that the moments reveal, each naming the column (``features``: the
    numeric ones, in the moments' order; default all)."""
    if not mom.finite():
        _diagnose_nonfinite(mom, ex)
    cols = list(features if features is not None else ex.source.columns)
    d = len(features if features is not None else cfg.data.features)
    if mom.n == 0:
        raise DataError(f"data.path '{cfg.data.path}': no rows left to train on")
    if mom.n < 2:
        raise DataError(f"only {mom.n} row: need at least 2")
    if cfg.model.standardize:
        var = np.diag(mom.comoment)[:-1]
        for j, f in enumerate(cols[:d]):
            rms = var[j] + (0 if cfg.model.fit_intercept else mom.n * mom.mean[j] ** 2)
            if rms <= 0:
                raise DataError(f"feature '{f}' is constant ({mom.mean[j]:g}): it cannot be standardized; "
                                "drop it from data.features")


def check_targets(cfg, *executors) -> None:
    """The target's values against the loss's rule (0/1 for logistic): one pass."""
    count, values = 0, ()
    for e in filter(None, executors):
        c, v = e.bad_targets()
        count, values = count + c, tuple(sorted(set(values) | set(v)))[:5]
    if count:
        raise target_error(cfg, count, values)


def target_error(cfg, count: int, values) -> DataError:
    """The one line for ``count`` target values (a few in ``values``) the loss refuses."""
    loss = losses.of(cfg.model)
    shown = ", ".join(f"{v:g}" for v in values)
    return DataError(f"target '{cfg.data.target}' holds {count} values that are not {loss.target_rule} "
                     f"(e.g. {shown}); model.loss {loss.name} needs {loss.target_rule} labels")


def exposure_error(cfg, count: int, values) -> DataError:
    """The one line for ``count`` exposures (a few in ``values``) that are not positive."""
    shown = ", ".join(f"{v:g}" for v in values)
    return DataError(f"exposure column '{cfg.data.exposure}' holds {count} values that are not positive "
                     f"(e.g. {shown}): its log is the offset")


def rows_dropped(cfg, source: ParquetSource, kept) -> int | None:
    """Rows skipped for NaN/inf/null values (``missing: drop``): the footers' row count
    minus the rows ``kept`` (training and validation); 0 where row filters or weights
    leave no count to compare with; None where files planned from the listing have no
    row count before they are read."""
    if cfg.data.missing != "drop" or source.row_filters or source.weighted:
        return 0
    if source.n_rows is None:
        log.info("rows dropped for NaN/inf/null values: not counted (small files planned from the listing)")
        return None
    dropped = source.n_rows - kept
    if dropped:
        log.warning("dropped %d of %d rows holding NaN/inf/null values (data.missing: drop)",
                    dropped, source.n_rows)
    return dropped


def _diagnose_nonfinite(mom: Moments, ex: Executor) -> None:
    """Non-finite moments: NaN/inf in the data (a second pass names column, count and
    first file, in file order), or values whose squares overflow float64."""
    cols = ex.source.columns
    if any(isinstance(c, Pack) for c in ex.source.chunks):  # packed files: name the very file
        ex = Executor(ex.client, ex.source.unpacked(), False, ex.loss)
    counts = np.asarray(ex.nonfinite_by_block())
    total = counts.sum(axis=0)
    if total.any():
        j = int(np.flatnonzero(total)[0])
        i = int(np.flatnonzero(counts[:, j])[0])
        first = getattr(ex.source.chunks[i], "path", None)
        if not isinstance(first, str):  # a DataFrame's partition (a Delayed: any attribute is one)
            first = f"partition {i}"
        raise DataError(f"column '{cols[j]}' has {int(total[j])} NaN/inf/null values (first in {first}); "
                        "fix the data or set data.missing: drop to skip such rows")
    bad = ~(np.isfinite(mom.mean) & np.isfinite(np.diag(mom.comoment)))
    j = int(np.flatnonzero(bad)[0]) if bad.any() else int(np.flatnonzero(~np.isfinite(mom.comoment).all(0))[0])
    raise DataError(f"column '{cols[j]}' has values too large for float64 (their squares overflow); "
                    "rescale the column")


def validation_moments(ex: Executor, cfg) -> Moments:
    """Moments of the held-out rows, checked: some rows, all values finite."""
    mom = ex.moments()
    if not mom.finite():
        _diagnose_nonfinite(mom, ex)
    if mom.n == 0:
        raise DataError(f"optimizer.validation_fraction {cfg.optimizer.validation_fraction:g} holds out "
                        f"no rows of {ex.source.n_rows}: raise it")
    return mom
