"""The model registry: immutable versions, an atomic ``current.json``, a lock, and the
per-file statistics cache of nightly refits.

Layout under ``registry.dir/NAME/``::

    versions/VERSION/     model.json, history.csv, verdict.json — never changed once made
    current.json          {"version": ...}: the promoted version, replaced atomically
    events.jsonl          one JSON line per refit: as-of, verdict, metrics, files read, seconds
    quarantine.json       {date: failed checks, as_of, by}: nights no refit trains on or judges by
    released.json         {date: ...}: nights released by hand (``gd-dask models release``)
    nights/AS_OF.json     each as-of date's verdict and the fingerprint of its inputs: a rerun
                          with the same data and config repeats it and writes nothing
    stats/                per-Parquet-file moments and footer plans, keyed by path, size and
                          mtime (or ETag): a consolidated base and the nights since
                          (``stats_cache``)
    .lock                 flock'd by a running refit (holder: host, pid, since)

VERSION is ``<as-of date>T<HHMMSS>Z`` (UTC), so versions sort by as-of date, then time.
A version is written into a hidden temporary folder and renamed into place, so a crash
leaves either a whole version or none.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import shutil
import socket
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ArtifactError, GdDaskError
from .stats_cache import StatsCache
from .store import atomic_write, is_url, load_document


class RegistryError(GdDaskError):
    """The registry is locked, or a version asked for does not exist (exit status 1)."""


class VersionError(RegistryError):
    """A version name that is not one of the registry's versions (exit status 2)."""

    exit_code = 2


class Registry:
    """One model's folder in the registry: a local folder or an object-store prefix."""

    def __init__(self, root: str | Path, name: str, storage_options: dict | None = None):
        import fsspec

        self.storage_options = dict(storage_options or {})
        self.remote = is_url(root)
        self.fs, base = fsspec.core.url_to_fs(str(root), **self.storage_options)
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.base = base.rstrip("/")
        self.root = f"{self.base}/{name}"
        self.name = name
        self.versions_dir = f"{self.root}/versions"
        self.stats = StatsCache(self)  # the refit's per-file statistics (stats/)

    def url(self, path: str) -> str:
        """``path`` as the user gave it: a local path, or protocol://path."""
        return f"{self.protocol}://{path}" if self.remote else path

    # ------------------------------------------------------------------ files

    def _read_json(self, path: str):
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            return None

    def _write(self, path: str, data: str | bytes) -> None:
        atomic_write(self.url(path), data, self.storage_options)

    # ------------------------------------------------------------------ conditional writes

    @property
    def conditional(self) -> bool:
        """Whether the store takes conditional writes here: S3's If-None-Match / If-Match
        (s3fs); other object stores keep the best-effort protocol."""
        return self.remote and self.protocol in ("s3", "s3a") and hasattr(self.fs, "call_s3")

    def _put_if(self, path: str, data: str | bytes, *, absent: bool = False, etag: str | None = None) -> bool:
        """PUT ``data`` only if the object is absent (``absent``) or still has ``etag``;
        False where another writer got there first (HTTP 412, or 409 for a racing
        conditional write)."""
        bucket, _, key = path.partition("/")
        cond = {"IfNoneMatch": "*"} if absent else {"IfMatch": etag}
        body = data.encode() if isinstance(data, str) else data
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **cond)
        except FileExistsError:  # s3fs's form of 412 PreconditionFailed
            return False
        except Exception as e:  # noqa: BLE001 - s3fs maps other S3 errors to OSError subclasses and others
            text = f"{type(e).__name__} {e}"
            if any(w in text for w in ("PreconditionFailed", "pre-conditions", "ConditionalRequestConflict")):
                return False
            raise
        self.fs.invalidate_cache(path)
        return True

    def etag(self, path: str) -> str | None:
        """The object's ETag now (None where it is absent)."""
        try:
            info = self.fs.info(path, refresh=True) if self.remote else None
        except FileNotFoundError:
            return None
        return (info or {}).get("ETag")

    # ------------------------------------------------------------------ events

    @property
    def events_path(self) -> str:
        return f"{self.root}/events.jsonl"

    def append_event(self, event: dict) -> None:
        """One JSON line per refit. Object stores cannot append: the file is rewritten
        whole (atomically), which the refit lock makes safe."""
        line = json.dumps(event, sort_keys=True, default=str) + "\n"
        if not self.remote:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            with open(self.events_path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            return
        try:
            old = self.fs.cat_file(self.events_path).decode()
        except FileNotFoundError:
            old = ""
        self._write(self.events_path, old + line)

    def events(self, last: int | None = None) -> list[dict]:
        """The refits so far, oldest first (a torn last line is skipped); ``last``: only
        the newest lines (a nightly refit reads a few, not a year's)."""
        try:
            text = self.fs.cat_file(self.events_path).decode()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines()[-last if last else 0:]:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    # ------------------------------------------------------------------ quarantine

    def quarantined(self) -> dict:
        """{date: entry} of the nights refits leave out; an entry holds the failed checks,
        when, and who: ``by`` "refit" (with the ``as_of`` whose refit found them) or "hand"."""
        return self._read_json(f"{self.root}/quarantine.json") or {}

    def quarantine(self, night: str, checks: list[dict], as_of: str | None = None, by: str = "refit") -> None:
        """Quarantine ``night``. By hand, its release (if any) goes first: a night in both
        files is read as a release cut short (``release`` writes released.json first)."""
        if by == "hand" and night in self.released():
            self._set_released(night, None)
        doc = self.quarantined()
        doc[night] = {"checks": checks, "at": utc_now(), "as_of": as_of, "by": by}
        self._write(f"{self.root}/quarantine.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def lift(self, night: str) -> None:
        """Take ``night`` out of quarantine (its refit ran again on other data and passed)."""
        doc = self.quarantined()
        if doc.pop(night, None) is not None:
            self._write(f"{self.root}/quarantine.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def released(self) -> dict:
        """{date: entry} of nights released by hand: their checks are waived."""
        return self._read_json(f"{self.root}/released.json") or {}

    def release(self, night: str) -> dict | None:
        """Undo a false alarm: ``night`` leaves quarantine and its checks are waived from
        now on. Returns the quarantine entry it had (None: it had none)."""
        entry = self.quarantined().get(night)
        self._set_released(night, {"at": utc_now(), "was": entry})
        self.lift(night)
        return entry

    def _set_released(self, night: str, entry: dict | None) -> None:
        doc = self.released()
        if entry is None:
            doc.pop(night, None)
        else:
            doc[night] = entry
        self._write(f"{self.root}/released.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ nights

    def night_record(self, as_of: str) -> dict | None:
        """The last refit's outcome for ``as_of`` with the fingerprint of its inputs: a
        rerun with the same fingerprint repeats it and writes nothing."""
        return self._read_json(f"{self.root}/nights/{as_of}.json")

    def put_night_record(self, as_of: str, record: dict) -> None:
        doc = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
        self._write(f"{self.root}/nights/{as_of}.json", doc)

    # ------------------------------------------------------------------ versions

    def versions(self) -> list[str]:
        """Complete versions, oldest first (a version counts once its verdict exists)."""
        try:
            entries = self.fs.ls(self.versions_dir, detail=False)
        except FileNotFoundError:
            return []
        names = sorted(posixpath.basename(e.rstrip("/")) for e in entries)
        return [v for v in names if not v.startswith(".")
                and self.fs.exists(f"{self.versions_dir}/{v}/verdict.json")]

    def newest_version(self) -> str | None:
        """The newest complete version: one listing and, usually, one existence check
        (``versions`` checks every version)."""
        try:
            entries = self.fs.ls(self.versions_dir, detail=False)
        except FileNotFoundError:
            return None
        names = sorted((posixpath.basename(e.rstrip("/")) for e in entries), reverse=True)
        return next((v for v in names if not v.startswith(".")
                     and self.fs.exists(f"{self.versions_dir}/{v}/verdict.json")), None)

    def version_dir(self, version: str) -> str:
        """The folder of ``version``: one path segment that is a complete version in
        versions/ (a name with a separator or ``..`` could point anywhere)."""
        if (not isinstance(version, str) or not version or version.startswith(".")
                or any(c in version for c in "/\\\0")
                or not self.fs.exists(f"{self.versions_dir}/{version}/verdict.json")):
            raise VersionError(f"{self.url(self.root)}: no version {version!r} "
                               f"(have: {', '.join(self.versions()[-5:]) or 'none'}; `gd-dask models list` "
                               "names them all)")
        return f"{self.versions_dir}/{version}"

    def verdict(self, version: str) -> dict:
        return self._read_json(f"{self.version_dir(version)}/verdict.json")

    def current(self) -> str | None:
        path = f"{self.root}/current.json"
        if not self.fs.exists(path):
            return None
        doc = self._read_json(path)
        if not isinstance(doc, dict):
            raise ArtifactError(f"{self.url(path)}: unreadable")
        version = doc.get("version")
        if version is not None and (not isinstance(version, str) or any(c in version for c in "/\\\0")
                                    or version.startswith(".")):
            raise ArtifactError(f"{self.url(path)}: names {version!r}, which is not a version of this registry")
        return version

    def current_model(self) -> dict | None:
        version = self.current()
        if version is None:
            return None
        return load_document(self.url(f"{self.version_dir(version)}/model.json"), self.storage_options)

    def new_version(self, as_of: str, files: dict[str, str | bytes]) -> str:
        """Write ``files`` as a new immutable version; ``verdict.json`` must be among them.

        Local: into a hidden folder renamed into place. Object store: one PUT per file,
        verdict.json last, so a version is complete when it is listed."""
        stamp = datetime.now(timezone.utc).strftime("%H%M%S")
        version = f"{as_of}T{stamp}Z"
        n = 1
        while self.fs.exists(f"{self.versions_dir}/{version}"):
            n += 1
            version = f"{as_of}T{stamp}Z-{n}"
        ordered = sorted(files, key=lambda k: k == "verdict.json")
        if self.remote:
            for name in ordered:
                self._write(f"{self.versions_dir}/{version}/{name}", files[name])
            return version
        Path(self.versions_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
        try:
            for name in ordered:
                atomic_write(tmp / name, files[name])
            os.replace(tmp, Path(self.versions_dir) / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def promote(self, version: str, reason: str = "", expect: tuple | None = None) -> None:
        """Point current.json at ``version`` (atomic replace, or one PUT).

        ``expect``: ``(seen, etag)`` from ``current_state()`` when the refit began. On S3
        the PUT then happens only if current.json is still that object (If-Match, or
        If-None-Match where there was none): a refit that lost a race raises and changes
        nothing."""
        self.version_dir(version)
        doc = json.dumps({"version": version, "promoted_at": utc_now(), "reason": reason}, indent=2) + "\n"
        path = f"{self.root}/current.json"
        if expect is not None and self.conditional:
            seen, etag = expect
            ok = self._put_if(path, doc, absent=True) if etag is None else self._put_if(path, doc, etag=etag)
            if not ok:
                raise RegistryError(f"{self.url(path)} changed since this refit began (it saw {seen or 'none'}): "
                                    "another refit promoted first; nothing changed")
            return
        self._write(path, doc)

    def current_state(self) -> tuple:
        """(current version, current.json's ETag) for ``promote(expect=...)``."""
        return self.current(), self.etag(f"{self.root}/current.json") if self.conditional else None

    def drop_version(self, version: str) -> None:
        """Remove a version this refit made but could not promote (a lost race)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(f"{self.versions_dir}/{version}", recursive=True)

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self):
        """Exclusive lock for a refit; a second one fails naming the holder.

        Local: an advisory ``flock`` on ``.lock``, which the kernel releases when its
        holder dies however it dies (SIGKILL included), so a crash never leaves a lock to
        take over and no two processes can both take one; the holder is written into the
        file for the message, and cleared on release.
        S3: a conditional create (If-None-Match: *), so exactly one of two refits starting
        together gets it. Other object stores: a lock object written and read back (best
        effort: two refits starting in the same instant could both pass).
        """
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": utc_now(),
              "token": uuid.uuid4().hex}
        path = f"{self.root}/.lock"
        if self.remote:
            self._take_remote_lock(path, me)
            try:
                yield
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)
            return
        Path(self.root).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RegistryError(_held(self.root, self._read_json(path), path)) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # the file stays: unlinking it would let a third process lock a new one
        finally:
            os.close(fd)  # releases the flock

    def _take_remote_lock(self, path: str, me: dict) -> None:
        """A conditional create where the store has one; else write and read back."""
        if self.conditional:
            taken = self._put_if(path, json.dumps(me), absent=True)
        else:
            taken = not self._read_json(path)
            if taken:
                self._write(path, json.dumps(me))
                taken = (self._read_json(path) or {}).get("token") == me["token"]
        if not taken:
            raise RegistryError(_held(self.url(self.root), self._read_json(path) or {}, self.url(path)))


def _held(root, holder: dict | None, path) -> str:
    who = (f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('since')}"
           if holder else "a holder that has not written its name yet")
    return f"{root}: another refit holds the lock ({who}) on {path}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
