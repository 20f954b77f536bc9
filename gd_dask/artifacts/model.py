"""A trained model as a Python object: ``gd_dask.load_model(path).predict(X)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..kernels import losses
from ..config import ModelConfig
from ..errors import ArtifactError
from ..kernels.losses import Loss
from .store import load_document


@dataclass(frozen=True)
class Model:
    """y' = link⁻¹(X·m + b) in original units (the identity for regression losses).

    features : list of str, in the order of ``m``
    m : ndarray of shape (n_features,)
    b : float
    """

    features: list[str]
    target: str
    m: np.ndarray
    b: float
    document: dict
    path: str | None = None  # where it was loaded from, to name it in errors

    def predict(self, X, offset=None):
        """Predictions for a NumPy array (n, d), a pandas DataFrame (columns by name) or a
        dask array (lazy, blockwise). A model trained with ``data.offset`` or
        ``data.exposure`` takes that column from the DataFrame, or ``offset`` (its values:
        the offset, or the exposure whose log is added)."""
        column, kind = self.offset
        tables, levels = self.categorical, 0.0
        try:
            import pandas as pd

            if isinstance(X, pd.DataFrame):
                missing = [f for f in self.features + [t.name for t in tables] if f not in X.columns]
                if missing:
                    raise ArtifactError(f"DataFrame lacks the model's features: {', '.join(missing)}")
                if column is not None and offset is None and column in X.columns:
                    offset = X[column].to_numpy(dtype=np.float64)
                if tables:  # each row's levels' coefficients (unseen ones as model.unseen_levels says)
                    import pyarrow as pa

                    levels = sum(t.contribution(pa.array(X[t.name]), "the DataFrame") for t in tables)
                X = X[self.features].to_numpy(dtype=np.float64)
            elif tables:
                raise ArtifactError(f"the model has categorical features ({', '.join(t.name for t in tables)}): "
                                    "pass a pandas DataFrame holding them")
        except ImportError:  # pragma: no cover - pandas is a dependency
            pass
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ArtifactError(f"X has shape {X.shape}, the model has {len(self.features)} features "
                                f"({', '.join(self.features)})")
        eta = X @ self.m + self.b + levels
        if column is not None:
            if offset is None:
                raise ArtifactError(f"the model was trained with {'an exposure' if kind == 'log' else 'an offset'} "
                                    f"column '{column}': pass offset=its values (or a DataFrame holding it)")
            eta = eta + (np.log(offset) if kind == "log" else offset)
        return self.loss.predict(eta)

    @property
    def offset(self) -> tuple[str | None, str | None]:
        """(column, "add" | "log") of the offset or exposure it was trained with, else (None, None)."""
        data = (self.document.get("config") or {}).get("data") or {}
        if data.get("offset"):
            return data["offset"], "add"
        if data.get("exposure"):
            return data["exposure"], "log"
        return None, None

    @property
    def categorical(self) -> list:
        """Its categorical features as ``data.write.LevelTable``s (none for a numeric
        model), unseen levels handled as its config's ``model.unseen_levels`` says."""
        from ..data.write import LevelTable

        unseen = ((self.document.get("config") or {}).get("model") or {}).get("unseen_levels", "error")
        return [LevelTable.of_doc(c, unseen) for c in self.document.get("categorical") or ()]

    @property
    def offset_terms(self) -> list:
        """Its offset or exposure as a ``data.write.OffsetColumn`` for ``predict_file``
        (none without one)."""
        from ..data.write import OffsetColumn

        column, kind = self.offset
        return [OffsetColumn(column, kind == "log")] if column else []

    @property
    def loss(self) -> Loss:
        """The loss it was trained with (``model`` of its config): its inverse link
        makes predictions."""
        return losses.of(ModelConfig(**((self.document.get("config") or {}).get("model") or {})))


def load_model(path: str | Path, storage_options: dict | None = None) -> Model:
    """Read a model.json, local or URL (checked: format, features vs coefficients)."""
    doc = load_document(path, storage_options)
    return Model(features=list(doc["features"]), target=doc.get("target", "y"),
                 m=np.asarray(doc["m"], dtype=np.float64), b=float(doc["b"]), document=doc, path=str(path))
