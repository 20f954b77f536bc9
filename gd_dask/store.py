"""Artifacts: model.json (JSON only, never pickle) and history.csv, written atomically.

Each file is written to a temporary name in the same folder and moved into place with
``os.replace``, and model.json is written last: a run that fails at any point leaves no
file that claims to be a model and leaves earlier artifacts byte-identical.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ArtifactError

FORMAT = "gd_dask.model/1"
_UMASK = os.umask(0)
os.umask(_UMASK)
HISTORY_FIELDS = ["epoch", "loss", "grad_norm", "learning_rate", "seconds"]


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ArtifactError(f"{path.parent}: cannot write output ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are shared files
        os.replace(tmp, path)
    except OSError as e:
        with _quiet():
            os.unlink(tmp)
        raise ArtifactError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        with _quiet():
            os.unlink(tmp)
        raise


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def check_writable(out_dir: str | Path) -> None:
    """Fail before training, not after, when the output folder cannot take files."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ArtifactError(f"output.dir '{out}' is not writable ({e.strerror or e})") from None


def _finite(x: float):
    return float(x) if math.isfinite(x) else None


def model_document(cfg, result) -> dict:
    """The model.json document for a ``FitResult``."""
    return {
        "format": FORMAT,
        "name": cfg.name,
        "features": list(cfg.data.features),
        "target": cfg.data.target,
        "m": [float(v) for v in np.asarray(result.m)],
        "b": float(result.b),
        "fit_intercept": cfg.model.fit_intercept,
        "epochs_run": result.epochs_run,
        "converged": result.converged,
        "final_loss": _finite(result.final_loss),
        "metrics": result.metrics,
        "learning_rate": result.learning_rate,
        "momentum": result.momentum,
        "strategy": result.strategy,
        "curvature": None if result.curvature is None else {
            "lambda_min": result.curvature.lmin, "lambda_max": result.curvature.lmax},
        "config": cfg.model_dump(mode="json"),
        "data": result.source.fingerprint() if result.source is not None else None,
        "seconds": result.seconds,
        "resumed_from_epoch": result.resumed_from,
        "rows_dropped": result.rows_dropped,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
    }


def history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: repr(row[k]) if isinstance(row[k], float) else row[k] for k in HISTORY_FIELDS})
    return buf.getvalue()


def save_run(out_dir: str | Path, cfg, result, plot: bool = True) -> Path:
    """Write history.csv (and loss.png) then model.json into ``out_dir``; returns
    model.json's path. The checkpoint of the run is removed once model.json is in place.
    """
    out = Path(out_dir)
    atomic_write(out / "history.csv", history_csv(result.history))
    if plot:
        from .plots import loss_png

        title = (f"{cfg.name}: {result.strategy}, learning rate {result.learning_rate:.4g}"
                 f"{f', momentum {result.momentum:.4g}' if result.momentum else ''}")
        atomic_write(out / "loss.png", loss_png(result.history, title))
    path = out / "model.json"
    atomic_write(path, json.dumps(model_document(cfg, result), indent=2) + "\n")
    remove_checkpoint(out)
    return path


CHECKPOINT = "checkpoint.json"
CHECKPOINT_FORMAT = "gd_dask.checkpoint/1"


def write_checkpoint(out_dir: str | Path, key: str, state: dict) -> None:
    """Atomically replace ``out_dir/checkpoint.json`` (a loop state, not a model)."""
    doc = {"format": CHECKPOINT_FORMAT, "key": key, "state": state}
    atomic_write(Path(out_dir) / CHECKPOINT, json.dumps(doc))


def read_checkpoint(out_dir: str | Path, key: str) -> dict | None:
    """The saved loop state if there is one for this very run (same ``key``), else None."""
    path = Path(out_dir) / CHECKPOINT
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT or doc.get("key") != key:
        return None
    return doc.get("state")


def remove_checkpoint(out_dir: str | Path) -> None:
    try:
        (Path(out_dir) / CHECKPOINT).unlink()
    except FileNotFoundError:
        pass


def load_model(path: str | Path) -> dict:
    """Read and check a model.json document.

    Raises
    ------
    ArtifactError
        Unreadable, not JSON, another format version, or inconsistent fields.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read model ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not a valid model.json (truncated or not JSON: {e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ArtifactError(f"{path}: model format {got!r} is not supported (expected {FORMAT!r})")
    feats, m = doc.get("features"), doc.get("m")
    if not isinstance(feats, list) or not isinstance(m, list) or len(feats) != len(m):
        raise ArtifactError(
            f"{path}: model has {len(feats) if isinstance(feats, list) else '?'} features "
            f"but {len(m) if isinstance(m, list) else '?'} coefficients m")
    if not isinstance(doc.get("b"), (int, float)) or not all(isinstance(v, (int, float)) for v in m):
        raise ArtifactError(f"{path}: m and b must be numbers")
    return doc
