"""The ``gd-dask`` command.

Exit status: 0 success; 2 bad usage or bad config; 1 anything else. Errors are one line
on stderr naming the culprit; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback

import click

from ..version import __version__
from ..kernels import losses
from ..errors import ArtifactError, ConfigError, GdDaskError

log = logging.getLogger("gd_dask")
_state = {"debug": False}


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gd_dask").setLevel(level)
    for noisy in ("distributed", "tornado", "bokeh"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # asyncio's "Task exception was never retrieved" comes from distributed's tasks
    # cancelled at shutdown, never from gd-dask's own work.
    logging.getLogger("asyncio").setLevel(logging.DEBUG if verbose > 1 else logging.CRITICAL)


def _parse_storage_options(ctx, param, value):
    if not value:
        return {}
    from ..config import safe_load

    try:
        parsed = safe_load(value)
    except Exception:  # noqa: BLE001 - any parse failure is a usage error
        parsed = None
    if not isinstance(parsed, dict):
        raise click.BadParameter("expected a mapping, e.g. '{endpoint_url: http://host:9000}'")
    return parsed


_storage_option = click.option(
    "--storage-options", "storage_options", default="", callback=_parse_storage_options,
    metavar="YAML", help="fsspec options for s3:// and other URLs, e.g. '{endpoint_url: http://…}' "
    "(credentials also come from the environment).")


class _Group(click.Group):
    """click turns KeyboardInterrupt into Abort (and a blank line); a stop by signal is
    ours to report: one line and 130 or 143."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise _Stopped(e) from None


class _Stopped(GdDaskError):
    def __init__(self, e: KeyboardInterrupt):
        import signal

        signum = getattr(e, "signum", signal.SIGINT)
        self.exit_code = 128 + signum
        what = "interrupted (SIGINT)" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        epoch = getattr(e, "checkpoint_epoch", None)
        resume = f"; rerun the same command to resume from the checkpoint at epoch {epoch}" if epoch else ""
        super().__init__(what + resume)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gd-dask")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(debug: bool, verbose: int) -> None:
    """Linear regression by gradient descent on Dask, from partitioned Parquet data."""
    _state["debug"] = debug
    _setup_logging(verbose)


@cli.command("make-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--rows", default=100_000, show_default=True, type=click.IntRange(1))
@click.option("--features", default=1, show_default=True, type=click.IntRange(1),
              help="Number of feature columns (height_cm, then x1, x2, ...).")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1))
@click.option("--files-per-day", default=2, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
def make_data(out_dir, rows, features, days, files_per_day, seed):
    """Write the students' height → weight example as DIR/date=YYYY-MM-DD/part-NNNN.parquet."""
    from ..jobs.makedata import make_students

    truth = make_students(out_dir, rows=rows, features=features, days=days,
                          files_per_day=files_per_day, seed=seed)
    slopes = ", ".join(f"{f}={v:g}" for f, v in zip(truth["features"], truth["m"]))
    click.echo(f"wrote {rows} rows in {len(truth['files'])} files to {out_dir}; "
               f"true m: {slopes}; true b: {truth['b']:g}")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a config key (repeatable), e.g. optimizer.epochs=200.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Address of a running dask scheduler (wins over cluster.address).")
@click.option("--no-plot", is_flag=True, help="Do not write loss.png.")
def train(config, overrides, scheduler, no_plot):
    """Train m and b as CONFIG describes; write model.json and history.csv."""
    from .api import run
    from ..config import load_config

    cfg = load_config(config, overrides)
    result, path = run(cfg, scheduler, on_epoch=_Progress(cfg.optimizer.epochs), plot=not no_plot)
    levels = {c["name"]: c for c in result.categorical or ()}
    m = ", ".join(f"{f}={v:.6g}" for f, v in zip([f for f in cfg.data.features if f not in levels], result.m))
    if levels:  # their coefficients are in model.json; the line says how many
        m += "".join(f"; {name}: {len(c['levels'])} levels (reference {c['reference']!r})" for name, c in levels.items())
    v, metric = result.validation, losses.of(cfg.model).metric
    if v and v["stopped_early"]:
        status = f" (stopped early; kept epoch {v['best_epoch']}, validation {metric} {v['metrics'][metric]:.6g})"
    else:
        status = "" if result.converged else " (not converged)"
    click.echo(
        f"m: {m}; b: {result.b:.6g}; final loss ({metric}): {result.final_loss:.6g}; "
        f"epochs: {result.epochs_run}{status}; {_digits(result.convergence)}seconds: {result.seconds:.2f}; "
        f"model: {path}"
    )


def _digits(conv: dict | None) -> str:
    """'coefficients: 12.3 digits (2 refinements); ' — how right the model is."""
    if not conv or conv.get("digits") is None:
        return f"criterion: {conv['criterion']}; " if conv else ""
    refined = conv.get("refinements") or 0
    extra = f", {refined} refinement{'s' * (refined != 1)}" if refined else ""
    return f"coefficients: {conv['digits']:.1f} digits ({conv['criterion']}{extra}); "


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--learning-rates", "rates", required=True, metavar="R,R,...",
              help="Comma-separated rates; 'auto' for the rate from the Hessian, e.g. 0.01,0.1,1,auto.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Address of a running dask scheduler.")
def sweep(config, rates, overrides, scheduler):
    """Train once per learning rate; plot the curves (sweep.png) and print a table."""
    from pathlib import Path

    from ..artifacts.plots import sweep_png
    from ..artifacts.store import atomic_write
    from ..config import load_config
    from ..jobs.sweep import sweep as run_sweep
    from .api import session

    cfg = load_config(config, overrides)
    parsed = []
    for r in rates.split(","):
        r = r.strip()
        try:
            parsed.append("auto" if r == "auto" else float(r))
        except ValueError:
            raise ConfigError(f"--learning-rates: {r!r} is not a number or 'auto'") from None
        if parsed[-1] != "auto" and not parsed[-1] > 0:
            raise ConfigError(f"--learning-rates: {r} must be > 0")
    with session(cfg, scheduler) as (client, source):
        rows = run_sweep(cfg, client, parsed, source)
    out = Path(cfg.output_dir) / "sweep.png"
    curves = [(f"lr={r['rate']}" + (f" ({r['learning_rate']:.3g})" if r["rate"] == "auto" else ""),
               r["losses"], r["status"]) for r in rows]
    atomic_write(out, sweep_png(curves, f"{cfg.name}: loss per epoch by learning rate", losses.of(cfg.model).label))
    click.echo(f"{'rate':>10}  {'used':>10}  {'status':<14} {'epochs':>7}  final loss")
    for r in rows:
        loss = "-" if r["status"] == "diverged" else f"{r['final_loss']:.6g}"
        click.echo(f"{r['rate']:>10}  {r['learning_rate']:>10.4g}  {r['status']:<14} {r['epochs']:>7}  {loss}")
    click.echo(f"curves: {out}")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--as-of", "as_of", default=None, metavar="YYYY-MM-DD", help="Refit as of this date (default: today, UTC).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Address of a running dask scheduler.")
@click.option("--allow-rollback", is_flag=True,
              help="Let a past --as-of date's model replace a newer current one (a backfill keeps it otherwise).")
def refit(config, as_of, overrides, scheduler, allow_rollback):
    """Nightly refit: train on the window, judge on the newest day, promote or keep current.

    Exit 0: promoted (or backfilled: a past date's version kept beside a newer current
    model); 3: ran, but the challenger was rejected or the night quarantined (current
    untouched); 1 and 2 as for every command. A rerun of an as-of date with the
    same data and config repeats its verdict and exit status and writes nothing. Each
    refit appends a line to registry.dir/NAME/events.jsonl (``gd-dask models history``)."""
    from datetime import date, datetime, timezone

    from ..runtime.cluster import connect
    from ..config import load_config
    from ..jobs.refit import refit as run_refit, window_size

    cfg = load_config(config, overrides)
    try:
        day = date.fromisoformat(as_of) if as_of else datetime.now(timezone.utc).date()
    except ValueError:
        raise ConfigError(f"--as-of {as_of!r}: expected YYYY-MM-DD") from None
    embedded = not (scheduler or cfg.cluster.address or cfg.cluster.scheduler_file)
    size = window_size(cfg, day) if embedded and cfg.cluster.processes == "auto" else None
    with connect(cfg.cluster, scheduler, data=size) as client:
        outcome = run_refit(cfg, client, day, listing=size.listing if size else None, allow_rollback=allow_rollback)
    click.echo(outcome.message)
    if outcome.status in ("rejected", "quarantined"):  # ran, current untouched: monitoring sees exit 3
        raise click.exceptions.Exit(3)


@cli.group()
def models():
    """Inspect the model registry and roll back: MODEL is registry.dir/NAME."""


def _registry(model: str, storage_options: dict | None = None):
    import posixpath

    from ..artifacts.registry import Registry

    model = model.rstrip("/")
    reg = Registry(posixpath.dirname(model) or ".", posixpath.basename(model), storage_options)
    if not reg.fs.isdir(reg.versions_dir):
        raise ConfigError(f"{model}: not a model in a registry (no versions/ folder)")
    return reg


@models.command("list")
@click.argument("model")
@_storage_option
def models_list(model, storage_options):
    """One line per version: current marker, verdict, metric, as-of."""
    reg = _registry(model, storage_options)
    current = reg.current()
    for v in reg.versions():
        verdict = reg.verdict(v)
        metric = verdict.get("metric", "rmse")
        score = (verdict.get("challenger") or {}).get(metric)
        status = "promoted" if verdict.get("promoted") else "rejected"
        mark = "*" if v == current else " "
        shown = "-" if score is None else f"{score:.6g}"
        click.echo(f"{mark} {v}  {status:8s}  {metric}={shown}  as-of {verdict.get('as_of')}")


@models.command("show")
@click.argument("model")
@click.argument("version", required=False)
@_storage_option
def models_show(model, version, storage_options):
    """model.json and verdict of VERSION (default: the current one) as JSON."""
    from ..artifacts.store import load_document as read

    reg = _registry(model, storage_options)
    version = version or reg.current()
    if version is None:
        raise ConfigError(f"{model}: no current version; name one")
    doc = {"version": version, "current": version == reg.current(),
           "model": read(reg.url(f"{reg.version_dir(version)}/model.json"), storage_options),
           "verdict": reg.verdict(version)}
    click.echo(json.dumps(doc, indent=2))


@models.command("history")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON lines.")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Also draw the promotion metric over nights (challenger and current).")
@_storage_option
def models_history(model, as_json, plot_path, storage_options):
    """The refits of MODEL night by night (events.jsonl): verdict, metric, files read."""
    reg = _registry(model, storage_options)
    events = reg.events()
    if as_json:
        for e in events:
            click.echo(json.dumps(e, sort_keys=True))
        return
    click.echo(f"{'as of':<11} {'verdict':<14} {'metric':<9} {'challenger':>12} {'current':>12} "
               f"{'files':>6} {'seconds':>8}  version")
    for e in events:
        metric = e.get("metric") or ""
        ch = (e.get("challenger") or {}).get(metric)
        cur = (e.get("current") or {}).get(metric)
        status = e["status"] + (" (hand)" if e.get("by") == "hand" else "")
        click.echo(f"{e['as_of']:<11} {status:<14} {metric:<9} {_g(ch):>12} {_g(cur):>12} "
                   f"{e.get('files_read', 0):>6} {e.get('seconds', 0):>8.2f}  {e.get('version') or ''}")
    if plot_path:
        from ..artifacts.plots import history_png
        from ..artifacts.store import atomic_write

        atomic_write(plot_path, history_png(events, f"{reg.name}: promotion metric by night"), storage_options)
        click.echo(f"wrote {plot_path}")


@models.command("release")
@click.argument("model")
@click.argument("night")
@_storage_option
def models_release(model, night, storage_options):
    """Undo a false alarm: NIGHT (YYYY-MM-DD) leaves quarantine and its checks are waived;
    the next refit trains on it, and a rerun of its as-of date judges it again."""
    from ..artifacts.registry import utc_now

    reg, day = _registry(model, storage_options), _night(night)
    with reg.lock():
        entry = reg.release(day)
        reg.append_event({"as_of": day, "status": "released", "by": "hand", "was": entry, "at": utc_now()})
    click.echo(f"released {day}" + ("" if entry else " (it was not quarantined)") + "; its checks are waived")


@models.command("quarantine")
@click.argument("model")
@click.argument("night")
@click.option("--reason", default="quarantined by hand", help="Recorded with the night.")
@_storage_option
def models_quarantine(model, night, reason, storage_options):
    """Refuse NIGHT (YYYY-MM-DD) by hand: no refit trains on it or judges by it, and a
    refit as of NIGHT exits 3. The current model stays."""
    from ..artifacts.registry import utc_now

    reg, day = _registry(model, storage_options), _night(night)
    with reg.lock():
        reg.quarantine(day, [{"check": "hand", "message": reason}], by="hand")
        reg.append_event({"as_of": day, "status": "quarantined", "by": "hand", "reason": reason,
                          "quarantined": [day], "at": utc_now()})
    click.echo(f"quarantined {day} by hand: {reason}; current stays {reg.current()}")


def _night(night: str) -> str:
    from datetime import date

    try:
        return date.fromisoformat(night).isoformat()
    except ValueError:
        raise ConfigError(f"NIGHT {night!r}: expected YYYY-MM-DD") from None


def _g(x) -> str:
    return "-" if x is None else f"{x:.6g}"


@models.command("diff")
@click.argument("model")
@click.argument("v1")
@click.argument("v2")
@click.option("--json", "as_json", is_flag=True)
@_storage_option
def models_diff(model, v1, v2, as_json, storage_options):
    """Two versions of MODEL side by side: coefficients, metrics and data windows."""
    from ..artifacts.store import load_document as read

    reg = _registry(model, storage_options)
    docs = [read(reg.url(f"{reg.version_dir(v)}/model.json"), storage_options) for v in (v1, v2)]
    verdicts = [reg.verdict(v) for v in (v1, v2)]
    rows = [(f, a, b) for f, a, b in zip(docs[0]["features"], docs[0]["m"], docs[1]["m"])]
    rows.append(("(intercept)", docs[0]["b"], docs[1]["b"]))
    metrics = sorted(set(docs[0].get("holdout_metrics") or {}) | set(docs[1].get("holdout_metrics") or {}))
    if as_json:
        click.echo(json.dumps({"versions": [v1, v2],
                               "coefficients": [{"name": f, v1: a, v2: b} for f, a, b in rows],
                               "holdout_metrics": [d.get("holdout_metrics") for d in docs],
                               "windows": [{"train": vd.get("train_dates"), "holdout": vd.get("holdout_dates")}
                                           for vd in verdicts],
                               "promoted": [vd.get("promoted") for vd in verdicts]}, indent=2))
        return
    click.echo(f"{'':<16} {v1:>22} {v2:>22} {'change':>12}")
    for f, a, b in rows:
        rel = f"{(b - a) / abs(a):+.2%}" if a else "-"
        click.echo(f"{f[:16]:<16} {a:>22.10g} {b:>22.10g} {rel:>12}")
    for k in metrics:
        a, b = ((d.get("holdout_metrics") or {}).get(k) for d in docs)
        click.echo(f"{('holdout ' + k)[:16]:<16} {_g(a):>22} {_g(b):>22}")
    for label, key in (("train dates", "train_dates"), ("holdout dates", "holdout_dates")):
        a, b = (vd.get(key) for vd in verdicts)
        click.echo(f"{label:<16} {'..'.join(a or []) if a else '-':>22} {'..'.join(b or []) if b else '-':>22}")
    click.echo(f"{'promoted':<16} {str(verdicts[0].get('promoted')):>22} {str(verdicts[1].get('promoted')):>22}")


@models.command("promote")
@click.argument("model")
@click.argument("version")
@_storage_option
def models_promote(model, version, storage_options):
    """Make VERSION current (roll back or forward)."""
    reg = _registry(model, storage_options)
    before = reg.current()
    reg.promote(version, reason=f"promoted by hand (was {before})")
    click.echo(f"current: {version} (was {before})")


@cli.command()
@click.argument("model_json")
@click.argument("data_path")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Address of a running dask scheduler.")
@_storage_option
def evaluate(model_json, data_path, scheduler, storage_options):
    """Print the metrics of MODEL_JSON on DATA_PATH as JSON (one pass): n, mse, rmse, mae
    and r2; for a classifier log_loss, accuracy, precision, recall, roc_auc (with its
    histogram error bound roc_auc_error) and brier."""
    from ..runtime.cluster import connect
    from ..config import ClusterConfig
    from ..artifacts.model import load_model
    from ..jobs.score import evaluate as run_evaluate, open_for

    model = load_model(model_json, storage_options)
    source = open_for(model, data_path, storage_options)
    with connect(ClusterConfig(), scheduler, data=source) as client:
        click.echo(json.dumps(run_evaluate(model, data_path, client, storage_options, source=source)))


@cli.command()
@click.argument("model_json")
@click.argument("data_path")
@click.argument("out_dir")
@click.option("--keys", default="", metavar="COL,COL", help="Columns copied next to the prediction.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT_DIR whole (refused otherwise).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Classifiers: also write a 0/1 `label` column, 1 where the probability is at least this.")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Address of a running dask scheduler.")
@_storage_option
def predict(model_json, data_path, out_dir, keys, overwrite, threshold, scheduler, storage_options):
    """Score DATA_PATH with MODEL_JSON into Parquet files under OUT_DIR (same layout):
    the prediction, a classifier's probability of the label 1.

    OUT_DIR must be outside the data, and empty unless --overwrite; it is written whole
    (staged next to it, then moved into place)."""
    from ..runtime.cluster import connect
    from ..config import ClusterConfig
    from ..artifacts.model import load_model
    from ..jobs.score import open_for, predict as run_predict

    model = load_model(model_json, storage_options)
    if threshold is not None and model.loss.task != "classification":
        raise ConfigError(f"--threshold applies to classifiers; {model_json} is a {model.loss.name} regression")
    key_cols = [k for k in keys.split(",") if k]
    source = open_for(model, data_path, storage_options, key_cols)
    with connect(ClusterConfig(), scheduler, data=source) as client:
        res = run_predict(model, data_path, out_dir, client, keys=key_cols, storage_options=storage_options,
                          overwrite=overwrite, threshold=threshold, source=source)
    click.echo(f"wrote predictions for {res['rows']} rows in {res['files']} files to {out_dir}")


@cli.command()
@click.argument("model_json")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_storage_option
def summary(model_json, as_json, storage_options):
    """Print the statistical summary of MODEL_JSON: each coefficient's standard error, t,
    p value and 95% interval; R², adjusted R², F, log-likelihood, AIC, BIC (from the
    moments of training; no pass over the data)."""
    from ..artifacts.summary import table
    from ..artifacts.store import load_document

    doc = load_document(model_json, storage_options)
    s = doc.get("summary")
    if as_json:
        click.echo(json.dumps(s, indent=2))
    elif not s:
        raise ArtifactError(f"{model_json} has no summary (trained before gd_dask had one): retrain it")
    elif not s.get("available"):
        click.echo(f"no inference statistics: {s['reason']}")
    else:
        click.echo(table(s, doc["features"], doc.get("target", "y")))


@cli.command("config-check")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
def config_check(config, overrides):
    """Validate CONFIG without running anything; print the resolved config as JSON."""
    from ..config import load_config

    cfg = load_config(config, overrides)
    click.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


@cli.command("config-schema")
def config_schema():
    """Print the JSON Schema of run configs (for editors)."""
    from ..config import config_schema as schema

    click.echo(json.dumps(schema(), indent=2))


class _Progress:
    """Per-epoch progress: a live line on a terminal, periodic log lines otherwise."""

    def __init__(self, epochs):
        """``epochs``: the bound, or "auto" (resolved only once the data is seen)."""
        self.epochs = epochs if isinstance(epochs, int) else None
        self.tty = sys.stderr.isatty()
        self.every = max(1, self.epochs // 20) if self.epochs else 50
        self.last = 0.0
        self.of = f"/{self.epochs}" if self.epochs else ""

    def __call__(self, row: dict) -> None:
        e = row["epoch"]
        if self.tty:
            now = time.monotonic()
            if now - self.last > 0.1 or e == self.epochs:
                self.last = now
                sys.stderr.write(f"\repoch {e}{self.of} loss {row['loss']:.6g}   ")
                sys.stderr.flush()
        elif e == 1 or e % self.every == 0:
            if self.epochs is None and e >= 20 * self.every:
                self.every *= 10  # an open-ended run: log lines thin out as it goes
            log.info("epoch %d%s loss %.6g grad_norm %.3g", e, self.of, row["loss"], row["grad_norm"])


def main(argv=None) -> int:
    """Entry point: run the command and map failures to exit status and one line."""
    import contextlib
    import threading

    from ..interrupt import installed

    # Ctrl-C and SIGTERM: a clean stop at an epoch boundary (``interrupt``).
    guard = installed() if threading.current_thread() is threading.main_thread() else contextlib.nullcontext()
    with guard:
        return _main(argv)


def _main(argv) -> int:
    try:
        status = cli.main(args=argv, prog_name="gd-dask", standalone_mode=False)
        if isinstance(status, int) and status:  # a command's ctx.exit(N) comes back as N
            _clear_progress()
            return status
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except GdDaskError as e:
        _clear_progress()
        if isinstance(e, _Stopped):
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # shutdown noise after the stop
        if _state["debug"]:
            traceback.print_exc()
        click.echo(f"gd-dask: {e}" if isinstance(e, _Stopped) else f"gd-dask: error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt as e:  # outside a command (click's own parsing)
        _clear_progress()
        err = _Stopped(e)
        click.echo(f"gd-dask: {err}", err=True)
        return err.exit_code
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        _clear_progress()
        if _state["debug"]:
            traceback.print_exc()
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(f"gd-dask: error: {type(e).__name__}: {text} (--debug for the traceback)", err=True)
        return 1
    _clear_progress()
    return 0


def run() -> None:
    """Console entry point (``gd-dask``, ``python -m gd_dask``)."""
    code = main()
    # Leave at once: everything the command wrote is flushed and fsynced, its clusters
    # closed. The interpreter's teardown of dask, pyarrow, pydantic and matplotlib took 0.25 s
    # of every command; and after a failed connection distributed's half-built client
    # would spend its own timeout closing itself in a finalizer and print a traceback.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _clear_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\n")


__all__ = ["cli", "main", "run"]
