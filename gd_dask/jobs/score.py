"""Using a trained model on data: distributed evaluation and prediction."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import socket
import uuid

import fsspec
import numpy as np

from ..config import DataConfig
from ..data import open_source
from ..data.read import is_local
from ..errors import ConfigError, DataError, PredictionOverflow
from ..runtime.executor import Executor
from ..artifacts.model import Model

log = logging.getLogger(__name__)


def data_for(model: Model, path: str, storage_options: dict | None = None) -> DataConfig:
    missing = (model.document.get("config") or {}).get("data", {}).get("missing", "error")
    levels = [c.name for c in model.categorical]
    column, kind = model.offset
    offset = {"exposure" if kind == "log" else "offset": column} if column else {}
    return DataConfig(path=path, features=list(model.features) + levels, target=model.target, missing=missing,
                      storage_options=storage_options or {}, categorical=levels, **offset)


def open_for(model: Model, path: str, storage_options: dict | None = None, keys=None):
    """The footers of the data at ``path`` as ``evaluate`` (``keys`` None) or ``predict``
    (the key columns, no target) read it: opened before a cluster starts, so bad paths
    fail first and the embedded cluster knows the data's size."""
    cfg = data_for(model, path, storage_options)
    if keys is None:
        return open_source(cfg)
    return open_source(cfg, extra_columns=list(keys), with_target=False)


def evaluate(model: Model, path: str, client, storage_options: dict | None = None, source=None) -> dict:
    """n, mse, rmse, mae, r2 of ``model`` on the Parquet data at ``path`` (a classifier:
    log_loss, accuracy, precision, recall, roc_auc, brier): one pass. ``source``: the
    data as ``open_for`` opened it."""
    source = source or open_for(model, path, storage_options)
    ex = Executor(client, source, cache=False, loss=model.loss)
    tables = model.categorical
    metrics = (ex.level_metrics(model.m, model.b, tables + model.offset_terms) if tables
               else ex.metrics(model.m, model.b))
    if not all(np.isfinite(v) for k, v in metrics.items() if k in ("mse", "mae", "log_loss", "brier")):
        counts = np.asarray(ex.nonfinite_by_block()).sum(axis=0)
        if not counts.any():  # finite data, infinite predictions: the model is at fault
            raise PredictionOverflow(f"model {model.path}: its predictions overflow to ±inf/NaN on {path} "
                                     f"(coefficients up to {np.abs(model.m).max():.3g}): it cannot score these rows")
        j = int(np.flatnonzero(counts)[0])
        raise DataError(f"column '{source.columns[j]}' has {int(counts[j])} NaN/inf/null values in {path}")
    return metrics


def _move_tree(fs, src: str, dst: str) -> None:
    """Move a folder: one rename on a local disk; object by object on an object store
    (which has no folders to rename)."""
    if is_local(fs):
        os.rename(src, dst)
        return
    for path in fs.find(src):
        fs.mv(path, f"{dst}/{path[len(src):].lstrip('/')}")
    with contextlib.suppress(Exception):
        fs.rm(src, recursive=True)
    fs.invalidate_cache()


_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Swap two local folders in one step (Linux renameat2 RENAME_EXCHANGE): a reader
    sees the old set or the new one, never none. False where the system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    ok = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0
    return ok


def _swap_in(fs, staging: str, out_root: str, old: str) -> None:
    """Put the staging folder at ``out_root``: atomically where the disk can exchange two
    folders (the old set then sits in ``staging`` for removal); else in two renames that
    ``recover_output`` completes if a crash falls between them."""
    if fs.exists(out_root) and is_local(fs) and _exchange(staging, out_root):
        _move_tree(fs, staging, old)
        return
    if fs.exists(out_root):
        _move_tree(fs, out_root, old)
    _move_tree(fs, staging, out_root)


def recover_output(fs, out_root: str) -> list[str]:
    """Finish or clean up what crashed predictions to ``out_root`` left beside it:
    a set moved aside with no set in place is a swap cut in two — its staging folder, if
    complete, takes the place, else the old set goes back; old sets whose swap finished,
    and staging folders of processes no longer alive, are removed. Returns what it did."""
    parent, name = posixpath.split(out_root)
    try:
        siblings = [posixpath.basename(p.rstrip("/")) for p in fs.ls(parent, detail=False)]
    except FileNotFoundError:
        return []
    done = []
    for sib in sorted(siblings):
        for kind in ("old", "staging"):
            prefix = f".{name}.{kind}-"
            if not sib.startswith(prefix):
                continue
            tag, path = sib[len(prefix):], f"{parent}/{sib}"
            staging = f"{parent}/.{name}.staging-{tag}"
            if kind == "old" and not fs.exists(out_root):
                if fs.exists(f"{staging}/{_COMPLETE}"):
                    _move_tree(fs, staging, out_root)
                    done.append(f"completed the swap of {out_root} (cut short by a crash)")
                else:
                    _move_tree(fs, path, out_root)
                    done.append(f"put the earlier predictions back in {out_root}")
                    continue
            if kind == "staging" and _owner_alive(tag):
                continue
            if fs.exists(path):
                with contextlib.suppress(Exception):
                    fs.rm(path, recursive=True)
                    done.append(f"removed {path}, left by a crashed run")
    fs.invalidate_cache()
    return done


#: Marks a complete set of predictions (as Spark marks its output): written into the
#: staging folder last, so it arrives with the set.
_COMPLETE = "_SUCCESS"


def _owner_alive(tag: str) -> bool:
    """Whether the process that named a staging folder ``<host>-<pid>-<random>`` runs on
    this host (another host's, or an unparsable tag: assumed alive, left alone)."""
    host, _, rest = tag.rpartition("-")[0].rpartition("-")
    pid = rest
    if host != socket.gethostname().replace("-", "_") or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output(source, out_fs, out_root: str, overwrite: bool, out_dir: str) -> None:
    """Refuse, before anything is written, an output that would replace or sit inside
    the input (the next training run would read predictions as data), and a non-empty
    output folder unless ``overwrite``."""
    def norm(p: str) -> str:
        p = p.rstrip("/")
        return os.path.realpath(p) if source.protocol in ("file", "local") else p

    out, root = norm(out_root), norm(source.root)
    inputs = [norm(f["full_path"]) for f in source.files]
    if out == root or out.startswith(root + "/") or any(i == out or i.startswith(out + "/") for i in inputs):
        raise ConfigError(f"OUT_DIR '{out_dir}' is or holds the input data '{source.root}': predictions would "
                          "replace or mix with the data; choose a folder outside it")
    if out_fs.exists(out_root) and not out_fs.isdir(out_root):
        raise ConfigError(f"OUT_DIR '{out_dir}' is a file, not a folder")
    if out_fs.exists(out_root) and out_fs.ls(out_root) and not overwrite:
        raise ConfigError(f"OUT_DIR '{out_dir}' is not empty: older predictions would mix with new ones; "
                          "choose an empty folder or pass --overwrite to replace it whole")


def predict(model: Model, path: str, out_dir: str, client, keys=(), storage_options: dict | None = None,
            overwrite: bool = False, threshold: float | None = None, source=None) -> dict:
    """Score every file under ``path`` into ``out_dir``, keeping the relative layout
    (hive partitions included); one worker task per file, row group by row group.

    The files are written into a hidden staging folder next to ``out_dir``, marked
    complete (``_SUCCESS``), which then takes its place whole (replacing the old one with
    ``overwrite``; on a local disk in one atomic exchange): a failed run leaves ``out_dir``
    as it was, a finished one leaves only this model's predictions, and the next run
    finishes or undoes what a crashed one left (``recover_output``).
    ``source``: the data as ``open_for(..., keys)`` opened it.
    """
    source = source or open_for(model, path, storage_options, keys)
    out_fs, out_root = fsspec.core.url_to_fs(out_dir, **source.storage_options)
    out_root = out_root.rstrip("/")
    check_output(source, out_fs, out_root, overwrite, out_dir)
    out_protocol = out_fs.protocol if isinstance(out_fs.protocol, str) else out_fs.protocol[0]
    for line in recover_output(out_fs, out_root):
        log.warning("%s", line)
    parent, name = posixpath.split(out_root)
    tag = f"{socket.gethostname().replace('-', '_')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging, old = f"{parent}/.{name}.staging-{tag}", f"{parent}/.{name}.old-{tag}"
    ex = Executor(client, source, cache=False, loss=model.loss)
    dest = {f["full_path"]: f"{staging}/{f['rel']}" for f in source.files}
    try:
        try:
            rows = ex.predict_files(dest, out_protocol, model.features, keys, model.m, model.b, threshold,
                                    model.categorical + model.offset_terms)
        except PredictionOverflow as e:
            raise PredictionOverflow(f"model {model.path}: {e}") from None
        out_fs.invalidate_cache()  # the workers wrote: listings cached here are stale
        out_fs.pipe_file(f"{staging}/{_COMPLETE}", b"")
        _swap_in(out_fs, staging, out_root, old)
    except BaseException:
        out_fs.invalidate_cache()
        with contextlib.suppress(Exception):
            out_fs.rm(staging, recursive=True)
        if out_fs.exists(old) and not out_fs.exists(out_root):
            _move_tree(out_fs, old, out_root)  # put the earlier predictions back
        raise
    with contextlib.suppress(Exception):
        out_fs.rm(old, recursive=True)
    return {"files": len(rows), "rows": int(sum(rows)), "out_dir": out_dir}
