"""The YAML job from Python: ``gd_dask.train(config)`` does what ``gd-dask train`` does.

Same artifacts, same validation, same errors: the CLI's one-line messages are the
messages of the typed exceptions raised here (``gd_dask.errors``: ConfigError for a bad
config, DataError, ClusterError, TrainingError, ArtifactError at run time).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import ConfigError


def resolve_config(config, overrides=None):
    """A ``RunConfig`` from a path to YAML, a YAML string's mapping (dict) or a
    ``RunConfig``, with ``key.path=value`` overrides applied."""
    import copy

    from ..config import RunConfig, apply_override, load_config, validate_config

    overrides = list(overrides or [])
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, RunConfig):
        config = config.model_dump(mode="json")
    if isinstance(config, dict):
        raw = copy.deepcopy(config)
        for item in overrides:
            apply_override(raw, item)
        return validate_config(raw)
    raise ConfigError(f"config: expected a path, a mapping or a RunConfig, got {type(config).__name__}")


@contextlib.contextmanager
def session(cfg, scheduler: str | None = None, client=None):
    """The prologue of a job run from a config (train, sweep): the output folder is
    writable and the data's footers are read, so a bad path fails before a cluster
    starts; then a client: ``client`` if given, else ``scheduler`` or ``cfg.cluster``'s
    (an embedded cluster by default), connected for this job only. Yields
    ``(client, source)``."""
    from ..artifacts.store import check_writable
    from ..data import open_source
    from ..runtime.cluster import connect

    check_writable(cfg.output_dir, cfg.data.storage_options)
    source = open_source(cfg.data)
    if client is not None:
        yield client, source
        return
    with connect(cfg.cluster, scheduler, data=source) as c:
        yield c, source


def run(cfg, scheduler: str | None = None, on_epoch=None, plot: bool = True, client=None):
    """Train as ``cfg`` says and save the run; returns (FitResult, path of model.json).
    ``client``, ``scheduler``: as ``session``."""
    from ..artifacts.store import save_run
    from ..jobs.training import fit

    with session(cfg, scheduler, client) as (c, source):
        result = fit(cfg, c, on_epoch=on_epoch, source=source)
    return result, save_run(cfg.output_dir, cfg, result, plot=plot)


def train(config, overrides=None, scheduler: str | None = None):
    """Run the YAML job ``config`` (a path, a mapping or a ``RunConfig``) from Python, as
    ``gd-dask train`` would, and return the trained model (``gd_dask.artifacts.model.Model``).

    Parameters
    ----------
    overrides : list of "key.path=value", optional
        As ``--set`` on the command line.
    scheduler : str, optional
        Address of a running dask scheduler (as ``--scheduler``).
    """
    from ..artifacts.model import load_model

    cfg = resolve_config(config, overrides)
    _, path = run(cfg, scheduler)
    return load_model(path, cfg.data.storage_options)
