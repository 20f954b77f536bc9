"""Writing rows, inside worker tasks: predictions, one output file per input file; and a
local dataset's ``_metadata`` summary (``write_summary``)."""

from __future__ import annotations

import posixpath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError, PredictionOverflow
from .read import as_float64, level_key, level_keys


def predict_file(src_path, dst_path, protocol, storage_options, out_protocol, features, keys, m, b, loss,
                 threshold=None, categorical=()):
    """Read one file row group by row group, write ``keys`` + ``prediction`` =
    ``loss.predict(X·m + b)`` (the inverse link), + ``label`` = prediction ≥ ``threshold``
    where one is given; ``categorical``: ``LevelTable``s whose coefficients join X·m + b.
    Returns the rows written.

    The output goes to a hidden temporary name first and is moved into place."""
    src_fs = fsspec.filesystem(protocol, **(storage_options or {}))
    fs = fsspec.filesystem(out_protocol, **(storage_options or {}))
    tmp = f"{posixpath.dirname(dst_path)}/.{posixpath.basename(dst_path)}.tmp"
    fs.makedirs(posixpath.dirname(dst_path), exist_ok=True)
    rows = 0
    with src_fs.open(src_path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        writer = None
        try:
            with fs.open(tmp, "wb") as out:
                for rg in range(pf.num_row_groups):
                    names = [*features, *(c.name for c in categorical)]
                    t = pf.read_row_group(rg, columns=list(dict.fromkeys([*keys, *names])))
                    X = np.column_stack([as_float64(t.column(f)) for f in features] or [np.zeros((t.num_rows, 0))])
                    cols = {k: t.column(k) for k in keys}
                    eta = X @ m + b
                    for table in categorical:
                        eta = eta + table.contribution(t.column(table.name), src_path)
                    with np.errstate(over="ignore", invalid="ignore"):
                        pred = loss.predict(eta)
                    _check_finite(pred, X, src_path, rg)
                    cols["prediction"] = pa.array(pred)
                    if threshold is not None:
                        cols["label"] = pa.array((pred >= threshold).astype(np.int8))
                    batch = pa.table(cols)
                    if writer is None:
                        writer = pq.ParquetWriter(out, batch.schema)
                    writer.write_table(batch)
                    rows += batch.num_rows
                if writer is not None:
                    writer.close()
        except BaseException:
            fs.rm(tmp)
            raise
    fs.mv(tmp, dst_path)
    return rows


class OffsetColumn:
    """A model's offset (``log``: exposure) column: what each row adds to X·m + b, as a
    ``LevelTable`` adds its levels' coefficients (``predict_file``)."""

    def __init__(self, name: str, log: bool):
        self.name, self.log = name, log

    def contribution(self, column, path: str) -> np.ndarray:
        return self.offsets(as_float64(column), path)

    def offsets(self, values, path: str, names: dict | None = None) -> np.ndarray:
        """Each row's offset from the column's float64 values (``LevelTable.offsets``'
        counterpart: a model's categorical metrics pass takes both)."""
        if not self.log:
            return values
        bad = ~(values > 0) & ~np.isnan(values)
        if bad.any():
            raise DataError(f"{path}: exposure column '{self.name}' holds {int(bad.sum())} values that are not "
                            f"positive (e.g. {float(values[bad][0]):g}): its log is the offset")
        return np.log(values)


#: |η| from this on: a row at a separated level (``separated_coefficient``).
SEPARATED_ETA = 2.0 ** 190


def separated_coefficient(target: float, round_: int) -> float:
    """A separated level's coefficient as rows are scored (model.json's ``separated``: a
    GLM's level whose rows' targets were all 0, or all 1 for logistic, once the levels of
    earlier rounds had been set aside): −∞ for 0, +∞ for 1 in principle, so its rows are
    predicted exactly; in arithmetic ±2^(1000 − 4·round), finite and far past any other
    term, so that a row at separated levels of two rounds takes the earlier round's sign
    (the limit the likelihood's supremum is approached along) rather than ∞ − ∞."""
    return float(np.copysign(2.0 ** (1000 - 4 * min(max(int(round_), 1), 200)), target - 0.5))


class LevelTable:
    """One categorical feature of a model: its levels' keys in order and their
    coefficients (0 at the reference), and what an unseen level does (``unseen``)."""

    def __init__(self, name: str, levels, coef, unseen: str = "error"):
        keys = np.array([level_key(v) for v in levels], dtype=np.float64)
        order = np.argsort(keys, kind="stable")
        self.name, self.keys, self.unseen = name, keys[order], unseen
        self.coef = np.asarray(coef, dtype=np.float64)[order]

    @classmethod
    def of_doc(cls, doc: dict, unseen: str = "error") -> LevelTable:
        """One column of model.json's ``categorical``: its levels and coefficients, and its
        ``separated`` levels (``separated_coefficient``)."""
        sep = doc.get("separated") or []
        return cls(doc["name"], list(doc["levels"]) + [s["level"] for s in sep],
                   list(doc["coef"]) + [separated_coefficient(s["target"], s["round"]) for s in sep], unseen)

    @classmethod
    def of_keys(cls, name: str, keys, coef, unseen: str = "error") -> LevelTable:
        """The table from level keys already in key order (``data.read.level_key``'s),
        as training holds them: no text to hash again."""
        table = cls.__new__(cls)
        table.name, table.unseen = name, unseen
        table.keys = np.asarray(keys, dtype=np.float64)
        table.coef = np.asarray(coef, dtype=np.float64)
        return table

    def contribution(self, column, path: str) -> np.ndarray:
        """Each row's coefficient for an Arrow column of levels (``offsets``)."""
        names: dict = {}
        return self.offsets(level_keys(column, names), path, names)

    def offsets(self, keys, path: str, names: dict) -> np.ndarray:
        """Each row's coefficient for its level key: NaN for a null level (``data.missing``
        rules), 0 for an unseen one with ``unseen: reference``, else one line naming it
        (``names``: the text of text keys)."""
        pos = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        seen = self.keys[pos] == keys if len(self.keys) else np.zeros(len(keys), dtype=bool)
        out = np.where(seen, self.coef[pos] if len(self.coef) else 0.0, 0.0)
        out[np.isnan(keys)] = np.nan
        unseen = ~seen & ~np.isnan(keys)
        if unseen.any() and self.unseen == "error":
            key = float(keys[np.flatnonzero(unseen)[0]])
            level = names.get(key, int(key) if key.is_integer() else key)
            raise DataError(f"{path}: column '{self.name}' has level {level!r}, which training never saw "
                            "(model.unseen_levels: reference scores such rows as the reference level)")
        return out


def _check_finite(pred, X, path, row_group: int) -> None:
    """Predictions that overflow on finite features are the model's fault: refuse them,
    naming the file and a row (NaN features are the data's: ``data.missing`` rules)."""
    bad = ~np.isfinite(pred) & np.isfinite(X).all(axis=1)
    if bad.any():
        raise PredictionOverflow(f"its predictions overflow to ±inf/NaN on {int(bad.sum())} row(s) of {path} "
                                 f"(row group {row_group}, row {int(np.flatnonzero(bad)[0])}): its coefficients are "
                                 "too large for these features; nothing was written")


def write_summary(root) -> str:
    """Write ``root/_metadata``: every Parquet file's row groups below the local folder
    ``root``, paths relative to it, as pyarrow, dask and Spark write it, so that planning
    reads one file instead of every footer (``source.summary_plan``). Returns its path."""
    from pathlib import Path

    root = Path(root)
    total = None
    for path in sorted(root.rglob("*.parquet")):
        meta = pq.read_metadata(path)
        meta.set_file_path(path.relative_to(root).as_posix())
        if total is None:
            total = meta
        else:
            total.append_row_groups(meta)
    if total is None:
        raise ValueError(f"{root}: no Parquet files")
    with open(root / "_metadata", "wb") as fh:
        total.write_metadata_file(fh)
    return str(root / "_metadata")
