"""Run configuration: YAML (safe loader only) → one typed, validated tree.

The tree mirrors the YAML file section by section. Every section rejects unknown keys,
and every constraint is declared once on its field, so pydantic generates the error text;
``load_config`` turns the first error into one line that names the key path, what is
allowed, and what was given. Checks that involve two fields live in ``model_validator``s
of their own.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    create_model,
    model_validator,
)

from .kernels import losses
from .errors import ConfigError

# Strict types: YAML ``true`` is not an epoch count and ``"10"`` is not a number.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # strict float still accepts ints, never bools
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0)]
# A name becomes a folder (runs/NAME, registry.dir/NAME): never '.', '..' or hidden.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")]
Column = Annotated[str, StringConstraints(min_length=1)]
FilterOp = Literal["=", "==", "!=", "<", "<=", ">", ">=", "in", "not in"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class CatalogConfig(_Section):
    """An Iceberg table found through a pyiceberg catalog."""

    name: str = Field(default="default", description="The catalog's name (pyiceberg's load_catalog).")
    table: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="The table's identifier, e.g. nightly.sales.")
    properties: dict[str, str] = Field(
        default_factory=dict, description="pyiceberg catalog properties, e.g. {type: sql, uri: sqlite:///c.db}.")


class DataConfig(_Section):
    path: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        default=None,
        description="Directory, glob or URL of Parquet files (hive partitions allowed), a Delta table's folder, "
                    "or an Iceberg table's folder or metadata file. Not needed with data.catalog."
    )
    features: Annotated[list[Column], Field(min_length=1)] = Field(
        description="Feature columns; one weight m per feature."
    )
    target: Column = Field(description="Target column y.")
    filters: list[tuple[str, FilterOp, Any]] = Field(
        default_factory=list,
        description='Row/partition filters, e.g. [[date, ">=", "2026-11-01"]].',
    )
    window_days: Annotated[int, Strict(), Field(ge=1)] | None = Field(
        default=None, description="refit: train on the last N date partitions."
    )
    missing: Literal["error", "drop"] = Field(
        default="error", description="What to do with NaN/inf rows."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="Passed to fsspec."
    )
    weight: Column | None = Field(default=None, description="Sample-weight column.")
    offset: Column | None = Field(default=None, description="GLMs: a column added to the linear predictor "
                                  "(coefficient 1, not fitted).")
    exposure: Column | None = Field(default=None, description="GLMs: a positive column whose log is the "
                                    "offset (the time or size each row's count or amount is over).")
    categorical: list[Column] = Field(
        default_factory=list,
        description="Features read as categories (a coefficient per level against the most frequent one): "
                    "integer columns listed here; string and dictionary columns are categorical whether "
                    "listed or not.")
    format: Literal["auto", "parquet", "delta", "iceberg"] = Field(
        default="auto", description="auto: a folder holding _delta_log/ is read as a Delta table, a metadata "
                                    "file or a folder holding metadata/*.metadata.json as an Iceberg table (their "
                                    "live files, as their logs say); parquet: every Parquet file, as listed.")
    version: Annotated[int, Strict(), Field(ge=0)] | None = Field(
        default=None, description="A Delta table's version or an Iceberg snapshot id to read (default: the "
                                  "newest, pinned at start).")
    as_of_time: str | None = Field(
        default=None, description="Read the table's version (snapshot) current at this ISO timestamp.")
    catalog: CatalogConfig | None = Field(
        default=None, description="Read an Iceberg table through a pyiceberg catalog (then data.path is "
                                  "only its display name).")

    @model_validator(mode="after")
    def _columns_distinct(self) -> DataConfig:
        if self.catalog is not None:
            if self.format not in ("auto", "iceberg"):
                raise ValueError(f"catalog: an Iceberg catalog's table, but format is {self.format}")
            self.path = self.path or f"{self.catalog.name}:{self.catalog.table}"
        elif self.path is None:
            raise ValueError("path: required (or catalog, for an Iceberg table in a catalog)")
        seen: set[str] = set()
        for f in self.features:
            if f in seen:
                raise ValueError(f"features: '{f}' is listed twice")
            seen.add(f)
        if self.target in seen:
            raise ValueError(f"target '{self.target}' is also listed among features")
        if self.weight is not None and self.weight in seen | {self.target}:
            raise ValueError(f"weight column '{self.weight}' is also a feature or the target")
        for c in self.categorical:
            if c not in seen:
                raise ValueError(f"categorical: '{c}' is not among data.features")
        if self.offset is not None and self.exposure is not None:
            raise ValueError("offset and exposure: give one (an exposure's log is the offset)")
        column = self.offset_column
        if column is not None and column in seen | {self.target, self.weight}:
            raise ValueError(f"{'offset' if self.offset else 'exposure'} column '{column}' is also a feature, "
                             "the target or the weight")
        return self

    @property
    def offset_column(self) -> str | None:
        """The offset's or the exposure's column."""
        return self.offset or self.exposure


class _Model(_Section):
    fit_intercept: Annotated[bool, Strict()] = True
    standardize: Annotated[bool, Strict()] = Field(
        default=True,
        description="Train on features scaled by mean and standard deviation; "
        "m and b are saved in original units.",
    )
    loss: Literal[tuple(losses.LOSSES)] = Field(default=next(iter(losses.LOSSES)), description=losses.describe())
    l2: NonNegFloat = Field(default=0.0, description="Ridge: adds (l2/2)·‖m‖² to ½·MSE (not on b).")
    l1: NonNegFloat = Field(default=0.0, description="Lasso: adds l1·‖m‖₁ to ½·MSE (not on b); "
                            "proximal steps (soft thresholding).")
    unseen_levels: Literal["error", "reference"] = Field(
        default="error", description="predict/evaluate: a level of a categorical feature that training never "
                                     "saw is an error naming it (error), or scored as the reference level.")


#: The ``model`` section: the keys above and each loss's own (``Loss.options``, e.g. huber_delta).
ModelConfig = create_model("ModelConfig", __base__=_Model, **losses.options())


class OptimizerConfig(_Section):
    method: Literal["batch", "minibatch"] = Field(
        default="batch", description="batch: one step per epoch from every row; minibatch: an epoch is one "
        "pass in which every chunk takes steps of batch_size of its rows, the chunk models averaged "
        "(weighted by rows) at each round.")
    learning_rate: Union[PositiveFloat, Literal["auto"]] = Field(
        default="auto",
        description="A positive number, or 'auto' (the fastest stable constant rate "
        "from the Hessian's eigenvalues).",
    )
    momentum: Union[Annotated[float, Strict(), Field(ge=0, lt=1)], Literal["auto"]] = Field(
        default="auto",
        description="Heavy-ball momentum in [0, 1), or 'auto': tuned from the curvature "
        "when learning_rate is auto, none (plain descent) with a fixed learning_rate.",
    )
    schedule: Literal["constant", "invscaling", "step", "optimal"] = Field(
        default="constant",
        description="constant: lr; invscaling: lr / t^power_t; step: lr · gamma^floor((t−1)/step_size); "
                    "optimal: 1/(l2·(t0 + t − 1)), starting at lr (scikit-learn's; needs l2 > 0).")
    power_t: Annotated[float, Strict(), Field(ge=0)] = 0.25
    step_size: Annotated[int, Strict(), Field(ge=1)] = 100
    gamma: Annotated[float, Strict(), Field(gt=0, le=1)] = 0.5
    epochs: Union[Annotated[int, Strict(), Field(ge=1)], Literal["auto"]] = Field(
        default="auto", description="Upper bound on the number of epochs. auto: enough for the defaults to "
        "converge — for gram about 4·√κ·ln(1e6/tol) + 1000 (κ: the Hessian's condition number), 1000 "
        "for stream.")
    tol: NonNegFloat = Field(
        default=1e-9, description="The coefficients' relative error you accept: converged when a certified "
        "bound on every coefficient's relative error is ≤ tol (squared loss; l1: the proximal gradient "
        "mapping's bound on the norm; huber: the relative loss change). 0: run exactly `epochs` epochs.")
    refine: Union[Annotated[int, Strict(), Field(ge=0)], Literal["auto"]] = Field(
        default="auto", description="Passes of iterative refinement (the gradient from the residuals in "
        "double-double) once the float64 gradient is at its rounding floor above tol. auto: until tol, "
        "at most 10, while each pass halves the bound; 0: none (logistic: also no Newton steps from the "
        "certificate's Hessian pass).")
    batch_size: Annotated[int, Strict(), Field(ge=1)] | None = Field(
        default=None, description="minibatch: rows per step, within each chunk.")
    sync_every: Union[Annotated[int, Strict(), Field(ge=1)], Literal["auto"], None] = Field(
        default="auto", description="minibatch: steps each chunk takes between two mixings (null: one "
                                    "round per epoch; auto: often enough that mix: auto recovers the progress "
                                    "of sequential SGD, at most 16 rounds an epoch).")
    mix: Literal["auto", "average"] = Field(
        default="auto", description="minibatch: how chunk models are mixed. average: their mean (parameter "
                                    "mixing, about 1/K of sequential SGD's progress per epoch on K chunks); "
                                    "auto: the round's mean move scaled up to K, as far as it stays stable.")
    average: Annotated[bool, Strict()] = Field(
        default=True, description="minibatch: report the average of each epoch's iterates (ASGD: far less "
                                  "noise at the same rate), not the last one.")
    seed: Annotated[int, Strict(), Field(ge=0)] = 0
    validation_fraction: Annotated[float, Strict(), Field(ge=0, lt=1)] = Field(
        default=0.0,
        description="Early stopping: hold out this fraction of rows (chosen by a hash of seed, file and row, "
        "so stable between runs) and stop when their loss has not improved by tol for n_iter_no_change "
        "epochs; the model is the one with the lowest validation loss. 0: off.")
    n_iter_no_change: Annotated[int, Strict(), Field(ge=1)] = 5
    strategy: Literal["auto", "stream", "gram", "newton"] = Field(
        default="auto", description="auto: gram for least squares, newton for logistic and the log-link "
        "families (full-batch, no l1, no early stopping, learning_rate auto), else stream.")
    cache: Literal["auto", "memory", "none"] = "auto"


def _check_l1_momentum(cfg: "RunConfig") -> None:
    m = cfg.optimizer.momentum
    if cfg.model.l1 and m != "auto" and m > 0:
        raise ValueError("model.l1 takes proximal steps without momentum: set optimizer.momentum to 0 or auto")


class TLSConfig(_Section):
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None


class ClusterConfig(_Section):
    address: Annotated[
        str, StringConstraints(pattern=r"^(tcp|tls|ucx|ws|wss|inproc)://.+")
    ] | None = Field(default=None, description="null → embedded LocalCluster.")
    scheduler_file: str | None = None
    n_workers: Annotated[int, Strict(), Field(ge=1)] = 2
    threads_per_worker: Annotated[int, Strict(), Field(ge=1)] = 1
    memory_limit: Union[Annotated[int, Strict(), Field(gt=0)], str] = "auto"
    processes: Union[Literal["auto"], Annotated[bool, Strict()]] = Field(
        default="auto", description="Embedded cluster: workers as processes (true) or as threads of this "
        "process (false: no spawn, no cold workers; Parquet decoding and BLAS release the GIL). auto: threads "
        "when the data fits comfortably in memory in at most 5,000 files and memory_limit is auto, else "
        "processes, whose limits the nannies enforce (and which read many small files in parallel).")
    timeout: Union[PositiveFloat, Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)?\s*(ms|s|m|h)?$")]] = Field(
        default="30s", description="Connecting to a remote scheduler, checking its workers, and waiting for "
        "workers when the cluster has none.")
    tls: TLSConfig = Field(default_factory=TLSConfig)
    dashboard_address: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        default="127.0.0.1:0", description="Embedded cluster's dashboard: host:port (port 0: any free one); "
        "'0.0.0.0:8787' exposes it on every interface; null: no dashboard.")

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> ClusterConfig:
        if self.address and self.scheduler_file:
            raise ValueError("give cluster.address or cluster.scheduler_file, not both")
        return self


class OutputConfig(_Section):
    dir: str | None = Field(default=None, description="Default: runs/<name>.")
    checkpoint_every: Annotated[int, Strict(), Field(ge=0)] = 50
    metrics: Literal["full", "moments"] = Field(
        default="moments",
        description="moments: mse, rmse, r2, n on the training data, exact from the moments, no pass (mae "
                    "null); full: also mae, for one more pass over the data. Classifiers always take the pass.")


class SummaryConfig(_Section):
    cov_type: Literal["nonrobust", "HC1"] = Field(
        default="nonrobust", description="Standard errors of the summary: classical, or heteroskedasticity-"
                                         "robust HC1 (one more pass over the data).")


class PromoteConfig(_Section):
    metric: Literal[tuple(m for ms in losses.TASK_METRICS.values() for m in ms)
                    + losses.DEVIANCE_METRICS] | None = Field(
        default=None, description="What the holdout compares; default rmse for regression (a family's mean "
                                  "deviance for poisson, gamma, tweedie), log_loss for "
                                  "classification.")
    max_regression: NonNegFloat = 0.02


OptionalPositive = Union[PositiveFloat, None]


class ValidateConfig(_Section):
    """Checks a new night must pass before a refit uses it (``gd_dask.jobs.guard``); null
    turns one off."""

    rows: OptionalPositive = Field(default=0.4, description="Rows within (1 ± rows) × the earlier nights' median.")
    mean_shift: OptionalPositive = Field(
        default=1.0, description="Each feature's mean within this many of the earlier nights' SDs.")
    sd_ratio: OptionalPositive = Field(default=2.0, description="Each feature's SD within [1/r, r] × the earlier nights'.")
    r2_drop: Union[Annotated[float, Field(gt=0, le=1)], None] = Field(
        default=0.5, description="The night's own fit's R² at least (1 − r2_drop) × the recent nights' median "
                                 "(labels that no longer follow their features).")
    resid_sd_ratio: OptionalPositive = Field(
        default=2.0, description="The night's own fit's residual SD within [1/r, r] × the recent nights' median.")
    drift_z: OptionalPositive = Field(
        default=5.0, description="Report (never quarantine) coefficients of the night's own fit this many "
                                 "standard errors from the window's as drift.")
    error_ratio: OptionalPositive = Field(
        default=1.5, description="Flag the current model as stale when its metric on the night exceeds r × its "
                                 "recent median (reported only: staleness never quarantines a night).")


with warnings.catch_warnings():  # the key is `validate`, which BaseModel also names (deprecated)
    warnings.simplefilter("ignore", UserWarning)

    class RegistryConfig(_Section):
        dir: str = Field(default="models", description="Registry root; versions go to DIR/<name>/.")
        promote: PromoteConfig = Field(default_factory=PromoteConfig)
        holdout_days: Annotated[int, Strict(), Field(ge=1)] = Field(
            default=1, description="refit: the newest N dates of the window judge the challenger.")
        validate: ValidateConfig = Field(default_factory=ValidateConfig)


class RunConfig(_Section):
    """The whole run configuration, one section per YAML mapping."""

    name: Name
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    summary: SummaryConfig = Field(default_factory=SummaryConfig)

    @model_validator(mode="after")
    def _across_sections(self) -> RunConfig:
        _check_l1_momentum(self)
        task = losses.LOSSES[self.model.loss].task
        allowed = losses.LOSSES[self.model.loss].metrics()
        if self.registry.promote.metric is None:
            self.registry.promote.metric = allowed[0]
        elif self.registry.promote.metric not in allowed:
            raise ValueError(f"registry.promote.metric {self.registry.promote.metric} does not apply to a "
                             f"{task} (model.loss {self.model.loss}); use one of {', '.join(allowed)}")
        if self.optimizer.method == "minibatch":
            if self.optimizer.batch_size is None:
                raise ValueError("optimizer.batch_size is required with optimizer.method minibatch")
            if self.optimizer.strategy == "gram":
                raise ValueError("optimizer.method minibatch needs strategy stream (or auto)")
        if self.optimizer.schedule == "optimal" and not self.model.l2:
            raise ValueError("optimizer.schedule optimal needs model.l2 > 0 (its rate is 1/(l2·t))")
        loss = losses.LOSSES[self.model.loss]
        if not loss.quadratic and self.optimizer.strategy == "gram":
            raise ValueError(f"model.loss {self.model.loss} needs optimizer.strategy stream (or auto): its "
                             "gradient is not a function of the moments")
        _check_newton(self, loss)
        if self.data.offset_column and not trains_by_newton(self):
            what = "offset" if self.data.offset else "exposure"
            raise ValueError(f"data.{what} needs a loss trained by Newton steps (logistic, poisson, gamma, "
                             f"tweedie; optimizer.strategy newton or auto), not model.loss {self.model.loss} "
                             f"with strategy {self.optimizer.strategy}")
        return self

    @property
    def output_dir(self) -> str:
        return self.output.dir or f"runs/{self.name}"


def descent_asked(cfg) -> bool:
    """The config asks for descent rather than Newton steps: a learning rate, l1 or early
    stopping (``optimization.strategy.Strategy.of``)."""
    o = cfg.optimizer
    return o.learning_rate != "auto" or bool(cfg.model.l1) or bool(o.validation_fraction)


def trains_by_newton(cfg) -> bool:
    """Whether the run trains by Newton steps (``Strategy.of``'s rule)."""
    loss, o = losses.LOSSES[cfg.model.loss], cfg.optimizer
    if o.strategy != "auto":
        return o.strategy == "newton"
    return bool(loss.self_concordant and o.method == "batch" and not descent_asked(cfg))


def _check_newton(cfg, loss) -> None:
    """Newton's strategy takes a self-concordant loss, full batches, no l1 and no early
    stopping; the log-link families train by it alone (no learning rate is stable for a
    curvature without bound)."""
    o, asked = cfg.optimizer, cfg.optimizer.strategy
    if asked == "newton" and not loss.self_concordant:
        raise ValueError(f"optimizer.strategy newton needs a loss whose curvature certifies Newton steps "
                         f"(logistic, poisson, gamma, tweedie), not {cfg.model.loss}")
    if asked != "newton" and (loss.bounded_curvature or asked != "auto"):
        if not loss.bounded_curvature:
            raise ValueError(f"model.loss {cfg.model.loss} trains by Newton steps: optimizer.strategy newton "
                             f"(or auto), not {asked}")
        return
    for wrong, what in ((o.method != "batch", f"optimizer.method {o.method}"),
                        (o.learning_rate != "auto", "an optimizer.learning_rate (Newton steps have none)"),
                        (bool(cfg.model.l1), "model.l1"),
                        (bool(o.validation_fraction), "optimizer.validation_fraction (early stopping)")):
        if wrong and (asked == "newton" or not loss.bounded_curvature):
            raise ValueError(f"model.loss {cfg.model.loss} with optimizer.strategy newton does not take {what}")


# --------------------------------------------------------------------------- loading


#: Bounds on a config file: its size, the nesting of its values, and the number of values
#: once aliases are expanded (a real config has a few dozen; a "billion laughs" alias
#: bomb of 1 KB expands to billions).
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 10_000


class YAMLBomb(yaml.YAMLError):
    """A config past one of the bounds above."""


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-9`` as a float, as YAML 1.2 does, and refuses
    documents nested deeper than ``MAX_DEPTH``.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-9``) and ``1e-9`` is a
    string — a trap for every ``tol:`` ever written.
    """

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YAMLBomb(f"values nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node, memo: dict) -> int:
    """Values in ``node`` with every alias expanded, counted without expanding them (each
    node once, memoized): an alias bomb is caught before anything is built from it."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a node inside itself (a recursive alias) counts once
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            size = 1
        memo[key] = size
        if size > MAX_NODES:
            raise YAMLBomb(f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)")
    return memo[key]


_SafeLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def safe_load(text: str):
    """YAML through the safe loader (no Python objects), with YAML 1.2 floats, bounded in
    size, depth and alias expansion (``YAMLBomb``)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise YAMLBomb(f"{len(text)} bytes; a config may have at most {MAX_CONFIG_BYTES} (1 MiB)")
    loader = _SafeLoader(text)  # a yaml.SafeLoader: plain data only
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {})
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key.path=value`` overrides, validate.

    Raises
    ------
    ConfigError
        One line naming the file and the key path at fault.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)  # never more than the bound into memory
        text = raw.decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: refused: larger than {MAX_CONFIG_BYTES} bytes (1 MiB), the limit for a config")
    return parse_config(text, overrides, source=str(path))


def parse_config(text: str, overrides=(), source: str = "<config>") -> RunConfig:
    """Validate YAML text (see ``load_config``)."""
    try:
        raw = safe_load(text)
    except YAMLBomb as e:
        raise ConfigError(f"{source}: refused: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{source}:{where} not valid YAML: {' '.join(str(what).split())}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a run config must be a mapping, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item, source)
    return validate_config(raw, source)


def validate_config(raw: dict, source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        first = _clean_loc(errors[0]["loc"])
        # A union (a number or 'auto') reports one error per alternative: list them all.
        alternatives = [x for x in errors if _clean_loc(x["loc"]) == first]
        raise ConfigError(f"{source}: {_describe(alternatives)}") from None


def apply_override(raw: dict, item: str, source: str = "<config>") -> None:
    """Apply one ``--set a.b.c=value``; the value is parsed as YAML (safe loader)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    parts = key.split(".")
    _check_key_path(parts, key)
    try:
        parsed = safe_load(value) if value != "" else None
    except yaml.YAMLError:
        parsed = value
    node = raw
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"{source}: {p}: must be a mapping to --set {key}")
        node = node[p]
    node[parts[-1]] = parsed


def _check_key_path(parts: list[str], key: str) -> None:
    model: type[BaseModel] | None = RunConfig
    for i, p in enumerate(parts):
        if model is None:
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:i])}' has no sub-keys")
        fields = model.model_fields
        if p not in fields:
            prefix = ".".join(parts[:i])
            raise ConfigError(f"--set {key}: unknown key{_suggest(p, fields, prefix)}")
        ann = fields[p].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _suggest(word: str, options, prefix: str = "") -> str:
    near = difflib.get_close_matches(word, list(options), n=1)
    if not near:
        return ""
    full = f"{prefix}.{near[0]}" if prefix else near[0]
    return f" (did you mean '{full}'?)"


def _clean_loc(loc) -> list[str]:
    """Key path of an error; union members add their type names to it, drop them."""
    return [str(p) for p in loc
            if not re.match(r"^(function-|literal\[|constrained-|json-or|lax-|strict-|int$|float$|str$|bool$)", str(p))]


def _describe(errs: list[dict]) -> str:
    """One line for the errors of one key: key path, what is allowed, what was given."""
    err = errs[0]
    loc = _clean_loc(err["loc"])
    path = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = loc[:-1]
        model: Any = RunConfig
        for p in parent:
            ann = model.model_fields[p].annotation if p in getattr(model, "model_fields", {}) else None
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                break
        hint = _suggest(loc[-1], model.model_fields, ".".join(parent)) if model else ""
        return f"unknown key '{path}'{hint}"
    if kind == "missing":
        return f"{path}: required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return f"{path}: {msg}" if path else msg
    allowed = " or ".join(dict.fromkeys(x["msg"][0].lower() + x["msg"][1:] for x in errs))
    return f"{path}: {allowed} (got {err.get('input')!r})"


def config_schema() -> dict:
    """JSON Schema of the run config, for editors."""
    return RunConfig.model_json_schema()
