"""Artifacts: model.json (JSON only, never pickle) and history.csv, written atomically.

Each file is written to a temporary name in the same folder and moved into place with
``os.replace``, and model.json is written last: a run that fails at any point leaves no
file that claims to be a model and leaves earlier artifacts byte-identical.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..version import __version__
from ..kernels import losses
from ..errors import ArtifactError, first_line as _first_line

FORMAT = "gd_dask.model/1"
#: Models with categorical features (``categorical``: levels and their coefficients).
FORMAT_CATEGORICAL = "gd_dask.model/2"
#: Format 2 where some level's coefficient is ±∞ (a column's ``separated``: a GLM's
#: levels whose rows are all of one class): a reader of format 2 alone would score them
#: as 0, so it is refused there by its version.
FORMAT_SEPARATED = "gd_dask.model/3"
FORMATS = (FORMAT, FORMAT_CATEGORICAL, FORMAT_SEPARATED)
_UMASK = os.umask(0)
os.umask(_UMASK)
HISTORY_FIELDS = ["epoch", "loss", "grad_norm", "learning_rate", "seconds"]


def is_url(path) -> bool:
    """An fsspec URL other than a local file (s3://, gs://, memory://, …)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def atomic_write(path: str | Path, data: str | bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old content or the new, whole.

    Local files: a temporary file in the same folder and a rename. Object stores
    (``s3://…``): one PUT, which makes an object visible whole or not at all.
    """
    if is_url(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
        try:
            fs.pipe_file(p, data.encode() if isinstance(data, str) else data)
        except Exception as e:  # noqa: BLE001 - object stores fail in many types
            raise ArtifactError(f"{path}: cannot write ({_first_line(e)})") from None
        return
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
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ArtifactError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_writable(out_dir: str | Path, storage_options: dict | None = None) -> None:
    """Fail before training, not after, when the output folder cannot take files."""
    if is_url(out_dir):
        probe = f"{str(out_dir).rstrip('/')}/.write-test"
        atomic_write(probe, b"", storage_options)
        import fsspec

        fs, p = fsspec.core.url_to_fs(probe, **(storage_options or {}))
        fs.rm_file(p)
        return
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
    categorical = getattr(result, "categorical", None)
    levels = {c["name"] for c in categorical or ()}
    doc = {
        "format": (FORMAT_SEPARATED if any(c.get("separated") for c in categorical)
                   else FORMAT_CATEGORICAL) if categorical else FORMAT,
        "name": cfg.name,
        "features": [f for f in cfg.data.features if f not in levels],
        "target": cfg.data.target,
        "m": [float(v) for v in np.asarray(result.m)],
        "b": float(result.b),
        "fit_intercept": cfg.model.fit_intercept,
        "epochs_run": result.epochs_run,
        "converged": result.converged,
        "convergence": result.convergence,
        "summary": result.summary,
        "final_loss": _finite(result.final_loss),
        "metrics": result.metrics,
        "learning_rate": result.learning_rate,
        "momentum": result.momentum,
        "schedule": {k: getattr(cfg.optimizer, k) for k in ("schedule", "power_t", "step_size", "gamma")},
        "penalty": {"l2": cfg.model.l2, "l1": cfg.model.l1},
        "strategy": result.strategy,
        "curvature": None if result.curvature is None else {
            "lambda_min": result.curvature.lmin, "lambda_max": result.curvature.lmax},
        "config": redact(cfg.model_dump(mode="json")),
        "data": result.source.fingerprint() if result.source is not None else None,
        "seconds": result.seconds,
        "resumed_from_epoch": result.resumed_from,
        "rows_dropped": result.rows_dropped,
        "validation": result.validation,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
    }
    if categorical:
        doc["categorical"] = categorical
    return doc


def _check_categorical(path, doc: dict) -> None:
    """A format-2 model's ``categorical``: per column a name, levels and as many finite
    coefficients, the reference among the levels."""
    cols = doc.get("categorical") if doc.get("format") in (FORMAT_CATEGORICAL, FORMAT_SEPARATED) else []
    if not isinstance(cols, list):
        raise ArtifactError(f"{path}: 'categorical' must be a list")
    for c in cols:
        sep = c.get("separated", []) if isinstance(c, dict) else None
        ok = (isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("levels"), list)
              and isinstance(c.get("coef"), list) and len(c["levels"]) == len(c["coef"])
              and all(isinstance(v, (int, float)) and math.isfinite(v) for v in c["coef"])
              and c.get("reference") in c["levels"]
              and isinstance(sep, list) and all(isinstance(e, dict) and e.get("target") in (0, 1)
                                                and isinstance(e.get("round"), int) and "level" in e for e in sep))
        if not ok:
            name = c.get("name") if isinstance(c, dict) else "?"
            raise ArtifactError(f"{path}: categorical feature {name!r}: needs levels, as many finite coef and a "
                                "reference among the levels (and separated levels as {level, target, round})")


_SECRET = ("key", "secret", "token", "password", "credential", "session")


def redact(doc):
    """The config as saved: values of credential-like keys (storage_options' key, secret,
    token, …) replaced by "***", at any depth."""
    if isinstance(doc, dict):
        return {k: "***" if any(w in str(k).lower() for w in _SECRET) and v is not None
                and not isinstance(v, (dict, list)) else redact(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [redact(v) for v in doc]
    return doc


def history_csv(history: list[dict]) -> str:
    """One row per epoch; a ``val_loss`` column when early stopping measured one."""
    fields = HISTORY_FIELDS + (["val_loss"] if history and "val_loss" in history[0] else [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: repr(row[k]) if isinstance(row[k], float) else row[k] for k in fields})
    return buf.getvalue()


def _join(out_dir, name: str):
    return f"{str(out_dir).rstrip('/')}/{name}" if is_url(out_dir) else Path(out_dir) / name


def save_run(out_dir: str | Path, cfg, result, plot: bool = True):
    """Write history.csv (and loss.png) then model.json into ``out_dir`` (a folder or an
    object-store prefix); returns model.json's path. model.json goes last, so it never
    points at missing files; the run's checkpoint is removed once it is in place."""
    so = cfg.data.storage_options
    atomic_write(_join(out_dir, "history.csv"), history_csv(result.history), so)
    if plot:
        from .lossplot import loss_png

        title = (f"{cfg.name}: {result.strategy}, learning rate {result.learning_rate:.4g}"
                 f"{f', momentum {result.momentum:.4g}' if result.momentum else ''}")
        atomic_write(_join(out_dir, "loss.png"), loss_png(result.history, title, losses.of(cfg.model).label), so)
    path = _join(out_dir, "model.json")
    atomic_write(path, json.dumps(model_document(cfg, result), indent=2) + "\n", so)
    if not is_url(out_dir):
        remove_checkpoint(out_dir)
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


#: Bounds on a model.json, as a config is bounded: a hostile file fails in one line, fast.
MAX_MODEL_BYTES = 64 << 20
MAX_MODEL_FEATURES = 1_000_000


def read_text(path, storage_options: dict | None = None, limit: int | None = None) -> str:
    """The file's text; with ``limit``, at most that many bytes are read (ValueError past it)."""
    if is_url(path):
        import fsspec

        opened = fsspec.open(str(path), "rb", **(storage_options or {}))
    else:
        opened = open(path, "rb")
    with opened as fh:
        data = fh.read() if limit is None else fh.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data.decode("utf-8")


def load_document(path: str | Path, storage_options: dict | None = None) -> dict:
    """Read and check a model.json document (a local path or a URL).

    Raises
    ------
    ArtifactError
        Unreadable, not JSON, too large or too deep, another format version, or
        inconsistent fields.
    """
    try:
        doc = json.loads(read_text(path, storage_options, limit=MAX_MODEL_BYTES))
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read model ({e.strerror or _first_line(e)})") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not a valid model.json (truncated or not JSON: {e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{path}: not a valid model.json (not UTF-8 text)") from None
    except ValueError as e:  # read_text's bound
        raise ArtifactError(f"{path}: refused: {e} ({MAX_MODEL_BYTES >> 20} MiB), the limit for a model.json") from None
    except RecursionError:
        raise ArtifactError(f"{path}: refused: not a model.json (values nested thousands of levels deep)") from None
    if not isinstance(doc, dict) or doc.get("format") not in FORMATS:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        expected = " or ".join(map(repr, FORMATS))
        raise ArtifactError(f"{path}: model format {got!r} is not supported (expected {expected})")
    _check_categorical(path, doc)
    feats, m = doc.get("features"), doc.get("m")
    if isinstance(feats, list) and len(feats) > MAX_MODEL_FEATURES:
        raise ArtifactError(f"{path}: refused: {len(feats)} features, more than {MAX_MODEL_FEATURES}")
    if not isinstance(feats, list) or not isinstance(m, list) or len(feats) != len(m):
        raise ArtifactError(
            f"{path}: model has {len(feats) if isinstance(feats, list) else '?'} features "
            f"but {len(m) if isinstance(m, list) else '?'} coefficients m")
    if not isinstance(doc.get("b"), (int, float)) or not all(isinstance(v, (int, float)) for v in m):
        raise ArtifactError(f"{path}: m and b must be numbers")
    bad = [f"m[{f}]" for f, v in zip(feats, m) if not math.isfinite(v)] + ([] if math.isfinite(doc["b"]) else ["b"])
    if bad:
        raise ArtifactError(f"{path}: the model holds NaN or infinite coefficients ({', '.join(bad[:3])}); "
                            "it cannot score anything: retrain it or restore a good copy")
    return doc
