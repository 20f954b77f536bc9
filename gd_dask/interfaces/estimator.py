"""scikit-learn estimators on gd_dask's own machinery.

``LinearRegression`` and ``LogisticRegression`` take as parameters the run config's
``model`` and ``optimizer`` keys, with the config's defaults (read from ``config``: no
second list). ``fit`` trains with the very code of ``gd-dask train`` on a dask DataFrame
source (``data.frame``) whose partitions are the chunks: NumPy and pandas data are
spread over the workers once in partitions of up to ``PARTITION_ROWS`` rows (so rows
that the CLI reads as one chunk give the CLI's bits); a dask DataFrame or array is read
partition by partition where it lives, never gathered and never written. It runs on the
current dask client where there is one (as dask-ml does), otherwise on an embedded
cluster started once per process.
"""

from __future__ import annotations

import atexit
import inspect
import math
import threading

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ..artifacts import summary as inference
from ..config import ModelConfig, OptimizerConfig, validate_config
from ..data.frame import FrameSource, parquet_data
from ..data.write import separated_coefficient
from ..errors import GdDaskError
from ..kernels import losses

#: Rows per partition of in-memory data: the chunk size for 8 features (128 MiB).
PARTITION_ROWS = 2_000_000


def _defaults(section, skip=()) -> dict:
    return {name: f.get_default(call_default_factory=True) for name, f in section.model_fields.items()
            if name not in skip}


def _with_params(cls, model_skip=(), fixed: dict | None = None):
    """Give ``cls`` an ``__init__`` whose keyword-only parameters are the config's model
    and optimizer keys with the config's defaults (what ``get_params`` reads)."""
    params = {**_defaults(ModelConfig, model_skip), **_defaults(OptimizerConfig)}
    sig = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
        inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in params.items()])

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(params)
        if unknown:
            raise TypeError(f"{cls.__name__}() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        for k, v in params.items():
            setattr(self, k, kwargs.get(k, v))

    __init__.__signature__ = sig
    __init__.__doc__ = f"Parameters: the run config's model and optimizer keys ({', '.join(params)})."
    cls.__init__ = __init__
    cls._model_keys = [k for k in _defaults(ModelConfig, model_skip)]
    cls._optimizer_keys = list(_defaults(OptimizerConfig))
    cls._fixed = fixed or {}
    return cls


_embedded = {"cluster": None, "client": None}
_lock = threading.Lock()


def _client():
    """The current dask client, else one embedded cluster for this process."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        pass
    with _lock:
        if _embedded["client"] is None:
            from distributed import Client

            from ..runtime.cluster import local_cluster, quiet_distributed

            quiet_distributed()
            cluster = local_cluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0")
            _embedded.update(cluster=cluster, client=Client(cluster, set_as_default=False))
            atexit.register(_close_embedded)
        return _embedded["client"]


def _close_embedded() -> None:
    for k in ("client", "cluster"):
        if _embedded[k] is not None:
            _embedded[k].close()
            _embedded[k] = None


def _weights(w, X) -> np.ndarray:
    """scikit-learn's checks of ``sample_weight`` (its keyword for refusing negative ones
    changed name across versions), negative weights refused as its LinearRegression
    does."""
    w = _check_sample_weight(w, X, dtype=np.float64)
    if (w < 0).any():
        raise ValueError("Negative values in data passed to `sample_weight`.")
    return w


def _text_columns(X) -> list:
    """The text, string and category columns of a pandas DataFrame (none otherwise)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        return []
    if not isinstance(X, pd.DataFrame):
        try:
            import dask.dataframe as dd
        except ImportError:  # pragma: no cover - dask is a dependency
            return []
        if not isinstance(X, dd.DataFrame):
            return []
    return [c for c, t in X.dtypes.items() if pd.api.types.is_object_dtype(t)
            or isinstance(t, (pd.StringDtype, pd.CategoricalDtype))]


def _internal_names(cols: list) -> list:
    """The names a DataFrame's columns train under: their own, so that every warning,
    error and summary row names them as the user does; x0, x1, … where they cannot be
    (not distinct as text, empty, the target's y, the weights' w, or the summary's b)."""
    if len(set(cols)) == len(cols) and all(cols) and not {"y", "w", "b"} & set(cols):
        return list(cols)
    return [f"x{j}" for j in range(len(cols))]


def _renamed(summary, original: dict):
    """A summary whose rows name the internal columns (x0, x1[level]) by the user's."""
    if not summary or not summary.get("available"):
        return summary
    rows = []
    for r in summary["coefficients"]:
        name, _, level = r["name"].partition("[")
        rows.append(dict(r, name=original.get(name, name) + (f"[{level}" if level else "")))
    renamed = dict(summary, coefficients=rows)
    if summary.get("absorbed"):  # two columns of many levels (``summary.summarize_two_way``)
        renamed["absorbed"] = [original.get(c, c) for c in summary["absorbed"]]
    return renamed


def _is_dask(x) -> bool:
    return hasattr(x, "dask") and hasattr(x, "compute")


class _Base(BaseEstimator):
    _task = "regression"

    def _config(self, data: dict):
        model = {k: getattr(self, k) for k in self._model_keys}
        model.update(self._fixed)
        optimizer = {k: getattr(self, k) for k in self._optimizer_keys}
        try:
            return validate_config({"name": "estimator", "data": data, "model": model, "optimizer": optimizer,
                                    "output": {"checkpoint_every": 0, "metrics": "moments"}})
        except GdDaskError as e:
            raise ValueError(str(e).removeprefix("<config>: ")) from None

    def _frame(self, X, y, w, client):
        """The rows as a dask DataFrame of columns x0…, y (and w): in-memory data is
        spread over the workers once (persisted); a dask collection stays lazy and is
        read partition by partition by every pass."""
        import dask.array as da
        import dask.dataframe as dd
        import pandas as pd

        if not _is_dask(X):
            named = getattr(self, "feature_names_in_", None)  # a pandas DataFrame's (``validate_data``)
            names = _internal_names([str(c) for c in named]) if named is not None else \
                [f"x{j}" for j in range(X.shape[1])]
            cols = {n: X[:, j] for j, n in enumerate(names)}
            cols["y"] = y
            if w is not None:
                cols["w"] = w
            parts = max(1, -(-X.shape[0] // PARTITION_ROWS))
            return client.persist(dd.from_pandas(pd.DataFrame(cols), npartitions=parts, sort=False)), names
        d = len(X.columns) if isinstance(X, dd.DataFrame) else X.shape[1]
        names = [f"x{j}" for j in range(d)]
        if isinstance(X, dd.DataFrame):
            if not isinstance(y, (dd.Series, dd.DataFrame)):
                raise ValueError("with X a dask DataFrame, y must be a dask Series of the same partitions")
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
            frame = X.astype("float64").rename(columns=dict(zip(X.columns, names)))
            y = y.iloc[:, 0] if isinstance(y, dd.DataFrame) else y
            frame = frame.assign(y=self._encode_dask(y).astype("float64"))
            if w is not None:
                frame = frame.assign(w=w.astype("float64"))
        else:
            y = self._encode_dask(da.asarray(y).ravel())
            parts = [X.astype(np.float64), y.astype(np.float64)[:, None]]
            if w is not None:
                parts.append(da.asarray(w).astype(np.float64)[:, None])
            columns = names + ["y"] + (["w"] if w is not None else [])
            frame = dd.from_dask_array(da.concatenate(parts, axis=1), columns=columns)
        self.n_features_in_ = d
        return frame, names

    def _encode_dask(self, y):
        return y

    def _learn_target(self, y) -> None:
        """What the target says of the model before training (a classifier's classes),
        for dask data: one pass."""

    def _reads_as_is(self) -> bool:
        """Whether the target column can be trained on as it is stored."""
        return True

    def fit(self, X, y, sample_weight=None):
        """Train on X (n, d) and y (n,): NumPy, pandas, a dask array or DataFrame."""
        from ..jobs.training import fit

        client = _client()
        w = sample_weight
        text = _text_columns(X)
        if text:
            return self._fit_levels(X, y, w, client, text)
        if not _is_dask(X):
            X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=self._task == "regression")
            y = self._encode(y)
            w = None if w is None else _weights(w, X)
            if X.shape[0] < 2:
                raise ValueError(f"n_samples={X.shape[0]}: need at least 2")
        if _is_dask(X):
            self._learn_target(y)
        files = parquet_data(X, y, w)
        files = files if files is not None and self._reads_as_is() else None
        if files is not None:  # columns of one dd.read_parquet: read the files as the CLI does
            self.feature_names_in_ = np.asarray(files["features"], dtype=object)
            self.n_features_in_ = len(files["features"])
            cfg, frame, source = self._config(files), None, None
        else:
            frame, names = self._frame(X, y, w, client)
            cfg, source = self._frame_job("<dask DataFrame>", frame, names, w is not None)
        try:
            res = fit(cfg, client, source=source)
        except GdDaskError as e:
            raise ValueError(str(e)) from None
        finally:
            del frame, source  # persisted rows leave the workers
        return self._fitted(res, res.summary)

    def _frame_job(self, path: str, frame, names: list, weighted: bool, categorical=()) -> tuple:
        """(config, source) to train on a dask DataFrame of columns ``names``, ``y`` (then
        ``w``): its rows as they are, no files."""
        data = {"path": path, "features": names, "target": "y"} | ({"weight": "w"} if weighted else {})
        columns = [*names, "y"] + (["w"] if weighted else [])
        return self._config(data), FrameSource(frame, columns, data.get("weight"), categorical=list(categorical))

    def _fitted(self, res, summary):
        """The fitted attributes every fit sets from training's result."""
        self.coef_ = np.asarray(res.m, dtype=np.float64)
        self.intercept_ = float(res.b)
        self.n_iter_ = res.epochs_run
        self.loss_curve_ = [h["loss"] for h in res.history]
        self.converged_ = res.converged
        self.convergence_ = res.convergence
        self.metrics_ = res.metrics
        self.summary_ = summary
        return self

    def _fit_levels(self, X, y, w, client, text: list):
        """``fit`` for a pandas DataFrame with text or category columns: those train as
        categorical features (``gd-dask train``'s path from a dask DataFrame). Fitted:
        ``coef_`` for the numeric columns (``numeric_features_``), ``intercept_`` at every
        column's reference level, ``categorical_``: {column: {level: coefficient}}."""
        import dask.dataframe as dd
        import pandas as pd

        from ..jobs.training import fit

        cols = [str(c) for c in X.columns]
        names = _internal_names(cols)
        types = {c: ("string" if c in text else "float64") for c in X.columns}
        if isinstance(X, dd.DataFrame):  # read partition by partition where it lives
            if not isinstance(y, (dd.Series, dd.DataFrame)):
                raise ValueError("with X a dask DataFrame, y must be a dask Series of the same partitions")
            y = y.iloc[:, 0] if isinstance(y, dd.DataFrame) else y
            self._learn_target(y)
            frame = X.astype(types).rename(columns=dict(zip(X.columns, names)))
            frame = frame.assign(y=self._encode_dask(y).astype("float64"))
            if w is not None:
                if not isinstance(w, (dd.Series, dd.DataFrame)):
                    raise ValueError("with X a dask DataFrame, sample_weight must be a dask Series of the same "
                                     "partitions")
                frame = frame.assign(w=(w.iloc[:, 0] if isinstance(w, dd.DataFrame) else w).astype("float64"))
        else:
            y = np.asarray(self._encode(np.asarray(y).ravel()), dtype=np.float64)
            if len(y) != len(X):
                raise ValueError(f"X has {len(X)} rows, y has {len(y)}")
            df = pd.DataFrame({n: (X[c].astype("string") if c in text else pd.to_numeric(X[c]).astype("float64"))
                               for n, c in zip(names, X.columns)})
            df["y"] = y
            if w is not None:
                df["w"] = _weights(w, np.empty((len(df), 0)))
            parts = max(1, -(-len(df) // PARTITION_ROWS))
            frame = client.persist(dd.from_pandas(df, npartitions=parts, sort=False))
        cfg, source = self._frame_job("<pandas DataFrame>", frame, names, w is not None,
                                      [n for n, c in zip(names, X.columns) if c in text])
        try:
            res = fit(cfg, client, source=source)
        except GdDaskError as e:
            raise ValueError(str(e)) from None
        finally:
            del frame, source
        original = dict(zip(names, cols))
        self.feature_names_in_ = np.asarray(cols, dtype=object)
        self.n_features_in_ = len(cols)
        self.numeric_features_ = [str(c) for c in X.columns if c not in text]
        self.categorical_ = {original[doc["name"]]: {**dict(zip(doc["levels"], doc["coef"])),
                                                     **{s["level"]: math.copysign(math.inf, s["target"] - 0.5)
                                                        for s in doc.get("separated", ())}}
                             for doc in res.categorical or []}
        # Levels whose rows were all of one class: ±inf above; scored as model.json's are.
        self.separated_ = {original[doc["name"]]: {s["level"]: (s["target"], s["round"]) for s in doc["separated"]}
                           for doc in res.categorical or [] if doc.get("separated")}
        return self._fitted(res, _renamed(res.summary, original))

    def _levels_eta(self, X):
        """x·coef_ + intercept_ + each row's levels' coefficients, for a pandas (or dask,
        partition by partition) DataFrame holding the columns it was fitted on."""
        missing = [c for c in self.feature_names_in_ if c not in X.columns]
        if missing:
            raise ValueError(f"X lacks the fitted columns: {', '.join(missing)}")
        if _is_dask(X):
            import pandas as pd

            return X.map_partitions(lambda part: pd.Series(self._levels_eta(part), index=part.index),
                                    meta=(None, "f8")).to_dask_array(lengths=True)
        eta = np.asarray(X[self.numeric_features_], dtype=np.float64) @ self.coef_ + self.intercept_
        for col, table in self.categorical_.items():
            separated = getattr(self, "separated_", {}).get(col)
            if separated:
                table = {**table, **{lv: separated_coefficient(*tr) for lv, tr in separated.items()}}
            values = X[col].astype("string")
            if values.isna().any():
                raise ValueError(f"column '{col}' holds null levels")
            coef = values.map(table).to_numpy(dtype=np.float64, na_value=np.nan)
            unseen = np.isnan(coef)
            if unseen.any():
                if self.unseen_levels == "error":
                    raise ValueError(f"column '{col}' has level {values[unseen].iloc[0]!r}, which fit never saw "
                                     "(unseen_levels='reference' scores such rows as the reference level)")
                coef[unseen] = 0.0
            eta = eta + coef
        return eta

    def _loss(self) -> losses.Loss:
        """The loss these parameters train (its options read from them)."""
        return losses.LOSSES[self._fixed.get("loss") or self.loss].of(self)

    def _eta(self, X):
        check_is_fitted(self)
        if getattr(self, "categorical_", None):
            return self._levels_eta(X)
        if _is_dask(X):
            import dask.dataframe as dd

            if isinstance(X, dd.DataFrame):
                X = X.to_dask_array(lengths=True)
            return X.astype(np.float64) @ self.coef_ + self.intercept_
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_

    def summary(self):
        """The statistical summary (``gd-dask summary``): a dict that prints as a table."""
        check_is_fitted(self)
        return Summary(self.summary_, list(getattr(self, "feature_names_in_", [])) or
                       [f"x{j}" for j in range(self.n_features_in_)])


class Summary(dict):
    """``summary_`` with a readable ``str``: statsmodels' table, or why there is none."""

    def __init__(self, doc: dict, features: list[str]):
        super().__init__(doc or {})
        self._features = features

    def __str__(self) -> str:
        if not self.get("available"):
            return f"no inference statistics: {self.get('reason')}"
        return inference.table(self, self._features, "y")


@_with_params
class LinearRegression(RegressorMixin, _Base):
    """Linear regression by gradient descent on dask (squared or Huber loss), with
    ``converged_`` meaning the coefficients are within ``tol`` of the minimizer.

    Fitted attributes: ``coef_``, ``intercept_``, ``n_iter_``, ``loss_curve_``,
    ``converged_``, ``convergence_``, ``metrics_``, ``summary_``, ``n_features_in_``,
    ``feature_names_in_`` (from pandas columns).
    """

    def _encode(self, y):
        return y

    def predict(self, X):
        """The mean: the loss's link's inverse of x·coef_ + intercept_ (identity for
        squared and Huber loss)."""
        return self._loss().predict(self._eta(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.target_tags.positive_only = self._loss().link is losses.LOG  # counts and amounts
        return tags


class LogisticRegression(ClassifierMixin, _Base):
    """Binary logistic regression by gradient descent on dask; ``predict_proba`` gives the
    probabilities of ``classes_``. Same fitted attributes as ``LinearRegression``."""

    _task = "classification"

    def _encode(self, y):
        from sklearn.utils.multiclass import type_of_target

        kind = type_of_target(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"LogisticRegression needs samples of 2 classes; the data has 1 class: "
                             f"{self.classes_[0]!r}")
        if kind not in ("binary",) or len(self.classes_) > 2:
            raise ValueError(f"LogisticRegression here is binary: y has {len(self.classes_)} classes ({kind})")
        return (y == self.classes_[1]).astype(np.float64)

    def _encode_dask(self, y):
        return (y == self.classes_[1]).astype(np.float64)

    def _learn_target(self, y) -> None:
        """``classes_`` from the distinct values: only they come to the client."""
        import dask.array as da

        values = y.drop_duplicates() if hasattr(y, "drop_duplicates") else da.unique(da.asarray(y))
        self.classes_ = np.unique(np.asarray(values.compute()))
        if len(self.classes_) != 2:
            raise ValueError(f"LogisticRegression here is binary: y has {len(self.classes_)} classes")

    def _reads_as_is(self) -> bool:
        """A stored target of 0 and 1 (or False and True) is trained on as it is."""
        return set(self.classes_.tolist()) <= {0, 1}

    def decision_function(self, X):
        return self._eta(X)

    def predict_proba(self, X):
        p = self._loss().predict(self._eta(X))
        if _is_dask(p):
            import dask.array as da

            return da.stack([1 - p, p], axis=1)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        eta = self._eta(X)
        return self.classes_[(eta >= 0).astype(int)] if not _is_dask(eta) else (eta >= 0).map_blocks(
            lambda b: self.classes_[b.astype(int)], dtype=self.classes_.dtype)


def _fixed_loss(cls, loss: str):
    """``_with_params`` for an estimator of one loss: it takes that loss's own options
    (``Loss.options``) and not the others'."""
    others = tuple(key for name, c in losses.LOSSES.items() if name != loss for key in c.options)
    return _with_params(cls, model_skip=("loss", *others), fixed={"loss": loss})


LogisticRegression = _fixed_loss(LogisticRegression, "logistic")


def _d2_score(self, X, y, sample_weight=None) -> float:
    """D²: the fraction of the deviance explained, 1 − D(y, ŷ)/D(y, ȳ), as scikit-learn's
    GLM regressors score (``d2_tweedie_score``)."""
    loss = self._loss()
    pred = self.predict(X)
    pred, y = (np.asarray(v.compute() if _is_dask(v) else v, dtype=np.float64) for v in (pred, y))
    w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = float(w @ loss.unit_deviance(y, pred))
        null = float(w @ loss.unit_deviance(y, np.full_like(y, np.average(y, weights=w))))
    return 1.0 - dev / null if null > 0 else (1.0 if dev == 0 else 0.0)


def _regressor(loss: type[losses.Loss]):
    """The estimator a loss names (``Loss.estimator``, e.g. a PoissonRegressor):
    ``LinearRegression`` fixed to that loss, predicting through its link; a family with a
    deviance scores by D², as scikit-learn's PoissonRegressor does."""
    doc = (f"Regression with model.loss {loss.name} ({loss.summary}) by gd_dask's machinery; "
           "the fitted attributes of ``LinearRegression``.")
    body = {"__doc__": doc, "__module__": __name__}
    if getattr(loss, "deviance_metric", None):
        body["score"] = _d2_score
    return _fixed_loss(type(loss.estimator, (LinearRegression,), body), loss.name)


#: Every estimator by name: the two above, and one per loss that names its own.
ESTIMATORS = {"LinearRegression": LinearRegression, "LogisticRegression": LogisticRegression}
ESTIMATORS.update({cls.estimator: _regressor(cls) for cls in losses.LOSSES.values()
                   if cls.estimator and cls.estimator not in ESTIMATORS})
globals().update(ESTIMATORS)
