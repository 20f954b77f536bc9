"""The nightly refit's statistics cache: each data file's moments, and what its footer
said (row groups, column types), so a night reads only the files it has never seen, and
no footer of the others.

Layout under ``registry.dir/NAME/stats/``, per way of reading (columns, missing, row
filters: ``way``)::

    base-<way>.json     the window's nights, consolidated:
                        {"nights": [night, ...], "files": {path: entry}}
    <night>.json        one night written since the base was last consolidated:
                        {"files": {path: entry}}

An entry is ``{"key": {path, size, stamp, columns, …}, "moments": {n, mean, comoment},
"plan": {row_groups, row_group_bytes, types}}``, mean and comoment as base64 of their
float64 bytes (exact). With categorical features it also holds ``"groups"``: the file's
moments by level (``kernels.groups.GroupMoments``: keys, n, mean, within, m2, total, the same
base64) and the text of its text levels' keys. It counts only while its key matches the listing (a rewritten
file has another size, mtime or ETag). A night's entries live in the
base when the base lists the night, else in the night's own object.

Entries stay per file, whatever object holds them: the refit merges them in file order,
so the model's bits do not depend on what came from the cache or how it was grouped.

A regular night reads the base, the nights written since it (fewer than
``CONSOLIDATE_NIGHTS``) and the new night's object (absent): at most
``CONSOLIDATE_NIGHTS + 1`` objects, whatever the number of files. Once as many nights as
``CONSOLIDATE_NIGHTS`` stand outside the base, the base is rewritten with the window's
entries and those nights' objects are removed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math

import numpy as np

from ..errors import DataError
from ..kernels.groups import GroupMoments
from ..kernels.moments import Moments

log = logging.getLogger(__name__)

#: Nights outside the base that make a refit rewrite it. Each rewrite is the size of the
#: whole window's entries; each night outside it is one more object to read.
CONSOLIDATE_NIGHTS = 3


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:24]


def _text(values: np.ndarray) -> str:
    """float64 values as base64 of their little-endian bytes: exact, half the size of
    JSON numbers and ten times faster to read back (a 20-feature file's co-moments:
    4.7 KB, not 8.8)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f8").tobytes()).decode()


def _floats(value) -> np.ndarray:
    """``_text``'s values back, flat (or a JSON list of numbers, as earlier releases wrote)."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f8").astype(np.float64)
    return np.asarray(value, dtype=np.float64).ravel()


def _checksum(entry: dict) -> str:
    """What an entry's content must hash to: its moments and plan (its key is checked
    against the listing anyway). A flipped bit, a doubled n or a truncated mean fails it."""
    m = entry["moments"]
    text = f"{m['n']!r}|{m['mean']}|{m['comoment']}|{json.dumps(entry.get('plan'), sort_keys=True)}"
    if "groups" in entry:
        text += "|" + json.dumps(entry["groups"], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _checked_moments(entry: dict) -> Moments:
    """The entry's moments, or ValueError/TypeError/KeyError where it is not what ``put``
    wrote (its checksum, where it has one, or its shape)."""
    if "sum" in entry and entry["sum"] != _checksum(entry):
        raise ValueError("its checksum does not match its content")
    m = entry["moments"]
    n, mean, comoment = m["n"], _floats(m["mean"]), _floats(m["comoment"])
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n < 0:
        raise ValueError(f"n is {n!r}")
    if mean.size < 1 or comoment.size != mean.size * mean.size:
        raise ValueError(f"{mean.size} means and {comoment.size} co-moments")
    return Moments(n, mean, comoment.reshape(mean.size, mean.size))


def _group_doc(groups: GroupMoments, names: dict) -> dict:
    """A file's ``GroupMoments`` and its level names as an entry holds them."""
    q, k = groups.keys.shape[1], groups.mean.shape[1]
    return {"q": q, "k": k, **{f: _text(getattr(groups, f)) for f in GroupMoments._fields},
            "names": [[float(key), text] for key, text in sorted(names.items())]}


def _checked_groups(doc: dict) -> tuple[GroupMoments, dict]:
    """``_group_doc``'s values back, or ValueError where their shapes disagree."""
    q, k = int(doc["q"]), int(doc["k"])
    keys, n = _floats(doc["keys"]), _floats(doc["n"])
    g = n.size
    if keys.size != g * q or q < 1 or k < 1:
        raise ValueError(f"{keys.size} level keys for {g} groups of {q} columns")
    per_group = {f: _floats(doc[f]) for f in ("mean", "m2", "total", "total_lo")}
    within = _floats(doc["within"])
    if any(v.size != g * k for v in per_group.values()) or within.size != k * k:
        raise ValueError("group means, sums or co-moments of the wrong size")
    # Entries from before sample weights: n counted the rows, exactly.
    count = _floats(doc["count"]) if "count" in doc else n
    n_lo = _floats(doc["n_lo"]) if "n_lo" in doc else np.zeros(g)
    if count.size != g or n_lo.size != g:
        raise ValueError(f"{count.size} row counts, {n_lo.size} weight sums for {g} groups")
    names = {float(key): str(text) for key, text in doc["names"]}
    return GroupMoments(keys.reshape(g, q), n, within=within.reshape(k, k), count=count, n_lo=n_lo,
                        **{f: v.reshape(g, k) for f, v in per_group.items()}), names


def _night(key: dict) -> str:
    """A file's night: its hive partition values, as one string (``date=2026-01-05``)."""
    return "/".join(f"{k}={v}" for k, v in sorted((key.get("partition") or {}).items()))


class StatsCache:
    """The cache of one registry (``Registry.stats``); objects are read at most once per
    refit and written by ``flush``. Not safe for two writers: the refit lock orders them."""

    def __init__(self, registry):
        self.reg = registry
        self.dir = f"{registry.root}/stats"
        self._docs: dict[str, dict] = {}  # object path → document, read or made in this refit
        self._dirty: set[str] = set()
        self.objects_read = 0  # requests for cache objects (found or not) in this refit
        self._paths: dict[tuple, str] = {}  # (way of reading, night) → object path: 30,000 digests took 1.5 s
        self._base_sets: dict[str, set] = {}  # base path → the nights it holds
        self._seen: dict[str, tuple] = {}  # file path → (key, its entry or None, its moments), as looked up last

    # ------------------------------------------------------------------ lookups

    def moments(self, key: dict) -> Moments | None:
        """The file's moments if its key still matches."""
        return None if self._entry(key) is None else self._seen[key["path"]][2]

    def groups(self, key: dict) -> tuple[GroupMoments, dict] | None:
        """The file's moments by level and its level names if its key still matches and
        they were cached (by a refit with categorical features)."""
        entry = self._entry(key)
        if entry is None or "groups" not in entry:
            return None
        try:
            return _checked_groups(entry["groups"])
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("statistics cache: the grouped moments of %s are damaged (%s); they are recomputed "
                        "from the file", key["path"], e)
            return None

    def plan(self, key: dict) -> dict | None:
        """What the file's footer said ({row_groups, row_group_bytes, types}) if its key
        still matches and it was read with its footer; else None (read the footer)."""
        entry = self._entry(key)
        if entry is None:  # the file read with categorical columns: its footer said the same
            found = self._load(self._home(key))["files"].get(key["path"])
            grouped = found.get("key") if isinstance(found, dict) else None
            if isinstance(grouped, dict) and {k: v for k, v in grouped.items() if k != "categorical"} == key:
                entry = self._entry(grouped)
        return None if entry is None else entry.get("plan")

    def _entry(self, key: dict) -> dict | None:
        seen = self._seen.get(key["path"])  # a refit asks for each file 3 or 4 times
        if seen is not None and seen[0] == key:
            return seen[1]
        home = self._home(key)
        entry = self._load(home)["files"].get(key["path"])
        entry = entry if isinstance(entry, dict) and entry.get("key") == key else None
        mom = None
        if entry is not None:
            try:
                mom = _checked_moments(entry)
            except (ValueError, TypeError, KeyError, AttributeError) as e:  # binascii.Error is a ValueError
                log.warning("statistics cache: the entry of %s in %s is damaged (%s); it is dropped and "
                            "recomputed from the file", key["path"], self.reg.url(home), e)
                entry = None
        self._seen[key["path"]] = (key, entry, mom)
        return entry

    # ------------------------------------------------------------------ updates

    def put(self, key: dict, mom: Moments, plan: dict | None = None,
            groups: tuple[GroupMoments, dict] | None = None) -> None:
        """Note a file's moments (and its footer's plan; ``groups``: its moments by level
        and level names); ``flush`` writes them."""
        # n is a row count, or Σw (a float) with sample weights: JSON keeps either exactly.
        n = int(mom.n) if isinstance(mom.n, (int, np.integer)) else float(mom.n)
        entry = {"key": key, "moments": {"n": n, "mean": _text(mom.mean), "comoment": _text(mom.comoment)}}
        if plan is not None:
            entry["plan"] = plan
        if groups is not None:
            entry["groups"] = _group_doc(*groups)
        entry["sum"] = _checksum(entry)
        home = self._home(key)
        self._load(home)["files"][key["path"]] = entry
        self._seen[key["path"]] = (key, entry, Moments(n, np.array(mom.mean, dtype=np.float64),
                                                      np.array(mom.comoment, dtype=np.float64)))
        self._dirty.add(home)

    def of_files(self, src, lookup, compute, columns, moments_of=lambda mom: mom) -> tuple[list, int]:
        """Each of ``src``'s files' statistics in file order, and how many files were
        read: from the cache (``lookup(key)``: ``moments`` or ``groups``), else one pass
        over the files never seen (``compute(source) -> {path: statistics}``), each
        checked (``moments_of(statistics)`` finite; ``columns`` names theirs) and noted."""
        cached, unseen = {}, []
        for f in src.files:
            got = lookup(src.file_key(f))
            if got is None:
                unseen.append(f)
            else:
                cached[f["full_path"]] = got
        if unseen:
            fresh = compute(src.subset([f["full_path"] for f in unseen]))
            for f in unseen:
                got = fresh[f["full_path"]]
                mom = moments_of(got)
                if not mom.finite():
                    j = int(np.flatnonzero(~np.isfinite(np.diag(mom.comoment)) | ~np.isfinite(mom.mean))[0])
                    raise DataError(f"{f['path']}: column '{columns[j]}' has NaN/inf/null or overflowing values; "
                                    "fix the file or set data.missing: drop")
                self.put(src.file_key(f), mom, src.footer_plan(f), None if got is mom else got)
                cached[f["full_path"]] = got
            self.flush()
        return [cached[f["full_path"]] for f in src.files], len(unseen)

    def put_files(self, src, per_file: dict, moments_of=lambda mom: mom) -> None:
        """Note each of ``src``'s files' statistics (``per_file``: {path: statistics})
        whose moments are finite (a held-out night's, for the nights to come: a bad night
        is not cached), and write them."""
        for f in src.files:
            got = per_file[f["full_path"]]
            mom = moments_of(got)
            if mom.finite():
                self.put(src.file_key(f), mom, src.footer_plan(f), None if got is mom else got)
        self.flush()

    def flush(self) -> None:
        """Write the objects changed since the last flush, each whole (one PUT)."""
        for path in sorted(self._dirty):
            self.reg._write(path, json.dumps(self._docs[path]))
        self._dirty.clear()

    def consolidate(self, keys: list[dict]) -> bool:
        """Once ``CONSOLIDATE_NIGHTS`` of the window's nights stand outside the base,
        rewrite the base as the window's entries (``keys``: every file of the window) and
        remove those nights' objects. Returns whether it did. Call after ``flush``."""
        if not keys:
            return False
        base_path = self._base_path(keys[0])
        nights = sorted({_night(k) for k in keys})
        outside = {n for n in nights if n not in self._base_nights(base_path)}
        if len(outside) < CONSOLIDATE_NIGHTS:
            return False
        files = {k["path"]: e for k in keys for e in [self._entry(k)] if e is not None}
        old = [self._night_path(k) for k in {_night(k): k for k in keys if _night(k) in outside}.values()]
        self._docs[base_path] = {"nights": nights, "files": files}
        self._base_sets[base_path] = set(nights)
        self.reg._write(base_path, json.dumps(self._docs[base_path]))
        for path in old:  # now held by the base; a crash before this leaves them unread
            self._docs.pop(path, None)
            with contextlib.suppress(FileNotFoundError):
                self.reg.fs.rm_file(path)
        return True

    # ------------------------------------------------------------------ objects

    def _load(self, path: str) -> dict:
        if path not in self._docs:
            self.objects_read += 1
            doc = self.reg._read_json(path)
            ok = isinstance(doc, dict) and isinstance(doc.get("files"), dict)
            self._docs[path] = doc if ok else {"files": {}}
        return self._docs[path]

    def _home(self, key: dict) -> str:
        """The object that holds the key's entry: the base if it lists the key's night."""
        base, night = self._base_path(key), _night(key)
        return base if night in self._base_nights(base) else self._path(key, night)

    def _base_nights(self, base: str) -> set:
        if base not in self._base_sets:
            self._base_sets[base] = set(self._load(base).get("nights", ()))
        return self._base_sets[base]

    def _base_path(self, key: dict) -> str:
        return self._path(key, None)

    def _night_path(self, key: dict) -> str:
        return self._path(key, _night(key))

    def _path(self, key: dict, night: str | None) -> str:
        way = (tuple(key["columns"]), key["missing"], repr(key["row_filters"]))
        path = self._paths.get((way, night))
        if path is None:
            if night is None:
                path = f"{self.dir}/base-{_digest([key['columns'], key['missing'], key['row_filters']])}.json"
            else:  # the digest of earlier releases' per-night objects: registries they filled still count
                ident = [key.get("partition"), key["columns"], key["missing"], key["row_filters"]]
                path = f"{self.dir}/{_digest(ident)}.json"
            self._paths[(way, night)] = path
        return path
