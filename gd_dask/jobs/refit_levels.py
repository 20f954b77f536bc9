"""The nightly refit of a model with categorical features (``refit`` calls these where
the window's source reads some columns as levels).

- Squared loss trains from per-file moments grouped by level (``kernels.groups``),
  cached in the registry beside the plain moments (``stats_cache``): a regular night
  reads only its new files, as a numeric refit does. The least-squares solution needs
  no start, so there is no warm start to map.
- Logistic and the log-link families train by Newton passes over the window
  (``categorical_newton``), warm-started from the current model: its levels' coefficients
  re-expressed against the window's reference levels, and a level the current model never
  saw starting at 0 (its reference's effect).
- Both models are judged on the held-out night by one pass each, a level neither saw
  scored as its reference. The held-out night's grouped moments are cached for the
  nights to come; their merged totals feed the night's checks (``guard``), and its levels
  against the challenger's give the guard's report of new and vanished levels.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from ..data import ParquetSource
from ..data.write import LevelTable, OffsetColumn
from ..errors import ArtifactError, DataError
from ..kernels import losses
from ..kernels.groups import GroupMoments
from ..optimization.categorical import key_value
from ..runtime.executor import Executor
from ..runtime.level_chunks import add_named_groups
from .categorical import fit_categorical
from .prepare import Prepared, check_categorical, check_null_levels, pick_strategy

#: Levels each of the guard's new and vanished lists names (the counts are whole).
LEVELS_SHOWN = 10


def numeric_columns(src: ParquetSource) -> list[str]:
    """The block's columns that are not levels (the numeric features, then the target):
    the columns of a file's grouped moments and of their totals."""
    return [c for c in src.columns if c not in src.categorical]


def check_current(current: dict | None, src: ParquetSource) -> None:
    """The current model reads the same columns as levels as the window does."""
    if current is None:
        return
    had = [c["name"] for c in current.get("categorical") or ()]
    if sorted(had) != sorted(src.categorical):
        raise ArtifactError(f"the current model reads {had or 'no columns'} as categorical, the window "
                            f"{list(src.categorical) or 'none'}: promote a compatible version or use another name")


def training_groups(cfg, src: ParquetSource, reg, client) -> tuple[GroupMoments, dict, int]:
    """The training files' moments by level and level names, cached per file; returns
    (groups, names, files read). Merged in file order: the same total whichever files
    came from the cache."""
    per_file, read = reg.stats.of_files(src, reg.stats.groups, lambda sub: _groups_by_file(client, sub),
                                        numeric_columns(src), _grouped_totals)
    groups, names = functools.reduce(add_named_groups, per_file)
    return groups, names, read


def fit_grouped(cfg, src: ParquetSource, groups: GroupMoments, names: dict):
    """The least-squares challenger from the window's grouped moments (no pass)."""
    t0 = time.perf_counter()
    check_categorical(cfg, src)
    check_null_levels(groups, src.categorical)
    mom = groups.to_moments()
    if mom.n <= len(cfg.data.features):
        raise DataError(f"only {mom.n} training rows in the window")
    prep = Prepared(src, pick_strategy(cfg), None, mom, groups=groups, level_names=names)
    return fit_categorical(cfg, prep, t0)


def holdout_groups(client, reg, hold_src: ParquetSource) -> tuple[GroupMoments, dict]:
    """The held-out files' moments by level (one pass), cached for the nights to come."""
    per_file = _groups_by_file(client, hold_src)
    reg.stats.put_files(hold_src, per_file, _grouped_totals)
    return functools.reduce(add_named_groups, [per_file[f["full_path"]] for f in hold_src.files])


def judge_by_passes(cfg, client, hold_src: ParquetSource, result, current: dict | None) -> tuple:
    """(the challenger's metrics, the current model's) on the held-out night, one pass
    each; a level a model never saw is scored as its reference."""
    ex = Executor(client, hold_src, cache=False, loss=losses.of(cfg.model))
    models = [(result.m, result.b, result.categorical)]
    if current is not None:
        models.append((current["m"], current["b"], current.get("categorical") or []))
    scores = []
    for m, b, docs in models:
        by_name = {doc["name"]: doc for doc in docs}
        tables = [LevelTable.of_doc(by_name[c], "reference") for c in hold_src.categorical]
        if hold_src.offset:
            tables.append(OffsetColumn(cfg.data.offset_column, hold_src.offset == "log"))
        scores.append(ex.level_metrics(np.asarray(m, dtype=np.float64), float(b), tables))
    return scores[0], (scores[1] if current is not None else None)


def level_changes(trained: list[dict], night: GroupMoments, names: dict, columns) -> list[dict]:
    """Per categorical column, the night's levels the challenger never trained on (scored
    as the reference until a later night trains them) and the trained levels absent from
    the night: information for the verdict, never a reason to quarantine."""
    out = []
    by_name = {doc["name"]: doc for doc in trained}
    for c, col in enumerate(columns):
        keys = night.keys[:, c] if len(night.n) else np.zeros(0)
        seen = {names[k] if k in names else key_value(k) for k in np.unique(keys[~np.isnan(keys)]).tolist()}
        levels = set(by_name[col]["levels"])
        new, gone = sorted(seen - levels, key=str), sorted(levels - seen, key=str)
        if not new and not gone:
            continue
        parts = []
        if new:
            parts.append(f"{len(new)} new level(s) ({_some(new)}), scored as the reference until trained on")
        if gone:
            parts.append(f"{len(gone)} trained level(s) absent from the night ({_some(gone)})")
        out.append({"check": "levels", "column": col, "new": new[:LEVELS_SHOWN], "new_count": len(new),
                    "vanished": gone[:LEVELS_SHOWN], "vanished_count": len(gone),
                    "message": f"'{col}': " + "; ".join(parts)})
    return out


def _some(levels: list) -> str:
    shown = ", ".join(repr(v) for v in levels[:LEVELS_SHOWN])
    return shown + (", …" if len(levels) > LEVELS_SHOWN else "")


def _grouped_totals(got: tuple):
    """A file's (grouped moments, names) as the plain moments the cache and checks keep."""
    return got[0].to_moments()


def _groups_by_file(client, src: ParquetSource) -> dict:
    cat_idx = [src.columns.index(c) for c in src.categorical]
    return Executor(client, src, cache=False).groups_by_file(cat_idx)
