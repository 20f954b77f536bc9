"""The model registry: immutable versions, an atomic ``current.json``, a lock, and the
per-file statistics cache of nightly refits.

Layout under ``registry.dir/NAME/``::

    versions/VERSION/     model.json, history.csv, verdict.json — never changed once made
    current.json          {"version": ...}: the promoted version, replaced atomically
    stats/                per-Parquet-file moments, keyed by path, size and mtime
    .lock                 held by a running refit (holder: host, pid, since)

VERSION is ``<as-of date>T<HHMMSS>Z`` (UTC), so versions sort by as-of date, then time.
A version is written into a hidden temporary folder and renamed into place, so a crash
leaves either a whole version or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import ArtifactError, GdDaskError
from .gradient import Moments
from .store import atomic_write, load_model


class RegistryError(GdDaskError):
    """The registry is locked, or a version asked for does not exist (exit status 1)."""


class Registry:
    """One model's folder in the registry."""

    def __init__(self, root: str | Path, name: str):
        self.root = Path(root) / name
        self.name = name
        self.versions_dir = self.root / "versions"
        self.stats_dir = self.root / "stats"

    # ------------------------------------------------------------------ versions

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def version_dir(self, version: str) -> Path:
        path = self.versions_dir / version
        if not path.is_dir() or version.startswith("."):
            raise RegistryError(f"{self.root}: no version {version!r} (have: {', '.join(self.versions()) or 'none'})")
        return path

    def verdict(self, version: str) -> dict:
        return json.loads((self.version_dir(version) / "verdict.json").read_text())

    def current(self) -> str | None:
        path = self.root / "current.json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{path}: unreadable ({e})") from None
        return doc.get("version")

    def current_model(self) -> dict | None:
        version = self.current()
        return None if version is None else load_model(self.version_dir(version) / "model.json")

    def new_version(self, as_of: str, files: dict[str, str | bytes]) -> str:
        """Write ``files`` as a new immutable version (folder renamed into place)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%H%M%S")
        version = f"{as_of}T{stamp}Z"
        n = 1
        while (self.versions_dir / version).exists():
            n += 1
            version = f"{as_of}T{stamp}Z-{n}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
        try:
            for name, data in files.items():
                atomic_write(tmp / name, data)
            os.replace(tmp, self.versions_dir / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def promote(self, version: str, reason: str = "") -> None:
        """Point current.json at ``version`` (atomic replace)."""
        self.version_dir(version)
        doc = {"version": version, "promoted_at": _now(), "reason": reason}
        atomic_write(self.root / "current.json", json.dumps(doc, indent=2) + "\n")

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self):
        """Exclusive lock for a refit; a second one fails naming the holder.

        A lock left by a dead process on this host is taken over.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                holder = _read_json(path)
                if holder and holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()  # stale: its process is gone
                    continue
                who = (f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('since')}"
                       if holder else "an unknown holder")
                raise RegistryError(f"{self.root}: another refit holds the lock ({who}); "
                                    f"remove {path} if that process is gone") from None
        else:
            raise RegistryError(f"{self.root}: could not take the lock {path}")
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # ------------------------------------------------------------------ statistics cache

    def cached_moments(self, key: dict) -> Moments | None:
        doc = _read_json(self._stats_path(key))
        if not doc or doc.get("key") != key:
            return None
        m = doc["moments"]
        return Moments(int(m["n"]), np.asarray(m["mean"], dtype=np.float64),
                       np.asarray(m["comoment"], dtype=np.float64))

    def cache_moments(self, key: dict, mom: Moments) -> None:
        doc = {"key": key, "moments": {"n": int(mom.n), "mean": mom.mean.tolist(),
                                       "comoment": mom.comoment.tolist()}}
        atomic_write(self._stats_path(key), json.dumps(doc))

    def _stats_path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps([key["path"], key["columns"]]).encode()).hexdigest()[:24]
        return self.stats_dir / f"{digest}.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
