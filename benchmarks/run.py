"""`make bench`: gd-dask side by side with its peers, in one run, on this machine.

1. speed — on the same generated data: one pyarrow scan (the floor), gd-dask gram,
   gd-dask stream with the memory cache, dask-ml LinearRegression(gradient_descent), and
   a plain in-memory NumPy loop; same epochs; final loss and time ratios.
2. logistic — a stream epoch vs a NumPy epoch, the default run to a certified model, and
   dask-ml LogisticRegression (lbfgs, gradient_descent) on the same data.
3. memory — a dataset ≥ 4 × the workers' total memory limit trained with both
   strategies; peak RSS of every worker against its limit.
4. scaling — gram training time at 1, 2, 4, 8 × a base size with 1 and 2 workers
   (bench.png).
5. refit_cost — a nightly refit after one new day of 30 vs training on that day alone.
6. accuracy — NIST StRD LRE, gd-dask vs numpy lstsq.
7. time_to_model — the 8M-row job with each peer (pyarrow scan, DuckDB, pandas +
   scikit-learn, polars, Spark where installed, gd-dask) in a fresh process, and
   `gd-dask train` as a whole command on it and on a 10,000-row job
   (``time_to_model.py``).
8. many_files — the same rows as 20,000 files of 100 rows (`--many-files N`) and as 8 files: planning
   (locally, behind 30 ms a request, with and without a ``_metadata`` summary) and
   training, the whole command and its peak RSS (``many_files.py``).
9. nightly_files — a nightly refit over a 30-day window of 1,000 files a night behind 30 ms
   a request: the first night and the next, with their requests and cache objects read.
10. table_planning — a Delta table of 100,000 files planned from its log, locally and
   behind 30 ms a request, next to delta-rs's own listing (``table_planning.py``).
12. categorical — 8M rows × (4 numeric + 50 and 5,000 levels) with gd-dask, scikit-learn's
   OneHotEncoder + LinearRegression and glum where installed (``categorical.py``).
13. glm — 8M rows × 8 features to Poisson (with an exposure), Gamma and logistic models
   with gd-dask, glum, scikit-learn, statsmodels, dask-ml and Spark where they apply and
   are installed (``glm.py``).
11. nightly_year — a year of nightly refits per scenario (drift, weekly seasonality, a
   step change) with bad nights injected: false quarantines, missed bad nights, nights
   behind an oracle (``nightly_year.py``).

Results: a table on stdout, benchmarks/results/bench.json and bench.png.
`--quick` shrinks every size (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import best_of, data_config, local_client, timed, write_days, WorkerRSS  # noqa: E402
import many_files as mf  # noqa: E402

MANY_FILES = 20_000  # --many-files
import time_to_model as ttm  # noqa: E402
import categorical as cat_bench  # noqa: E402
import glm as glm_bench  # noqa: E402

from gd_dask.config import validate_config  # noqa: E402
from gd_dask.jobs.training import fit  # noqa: E402

EPOCHS = 100


def pyarrow_scan(root: Path, columns) -> float:
    """One multi-threaded scan of the files into Arrow memory: the floor."""
    _, t = timed(lambda: pads.dataset(root, format="parquet", partitioning="hive").to_table(columns=columns))
    return t


def numpy_loop(root: Path, names, lr: float, epochs: int):
    """The article's loop on data already in memory; returns (seconds per epoch, final loss)."""
    table = pads.dataset(root, format="parquet", partitioning="hive").to_table(columns=[*names, "y"])
    X = np.column_stack([table.column(n).to_numpy() for n in names])
    y = table.column("y").to_numpy()
    Xs = (X - X.mean(0)) / X.std(0)
    m, b = np.zeros(X.shape[1]), 0.0
    t = time.perf_counter()
    for _ in range(epochs):
        err = Xs @ m + b - y
        m, b = m - lr * (Xs.T @ err) / len(y), b - lr * err.mean()
    per_epoch = (time.perf_counter() - t) / epochs
    return per_epoch, float(np.mean((Xs @ m + b - y) ** 2))


def dask_ml(client, root: Path, names, epochs: int):
    """dask-ml's LinearRegression with its gradient_descent solver, same data and epochs."""
    import dask.dataframe as dd
    from dask_ml.linear_model import LinearRegression

    df = dd.read_parquet(str(root), columns=[*names, "y"])
    arr = df.to_dask_array(lengths=True)  # whole frame: lengths of a column subset can mismatch
    X, y = arr[:, :-1], arr[:, -1]
    X, y = client.persist([X, y])  # like our memory cache: time the solver, not the reads
    model, t = timed(LinearRegression(solver="gradient_descent", max_iter=epochs, tol=1e-300,
                                      fit_intercept=True).fit, X, y)
    loss = float(((model.predict(X) - y) ** 2).mean().compute())
    return t, loss


def moving_epoch_seconds(history) -> float:
    """Median seconds of the epochs after the first whose parameters moved. Once descent
    reaches its fixed point (same bits epoch after epoch) the pass has the same dask keys
    and the scheduler hands back the result still in memory: such epochs cost no pass."""
    rows = [h for prev, h in zip(history, history[1:]) if h["loss"] != prev["loss"]][1:]
    return float(np.median([h["seconds"] for h in rows or history]))


def estimator_from_dask_dataframe(root: Path, names) -> float:
    """gd_dask.LinearRegression (defaults) fit from a dask DataFrame of the same files, on
    the current client: what a notebook user pays against the CLI's run."""
    import dask.dataframe as dd

    from gd_dask import LinearRegression

    ddf = dd.read_parquet(str(root), columns=[*names, "y"])
    _, t = timed(LinearRegression().fit, ddf[list(names)], ddf["y"])
    return t


def warm_up(client, root: Path, names) -> None:
    """One tiny fit so workers have imported pyarrow and friends before timing."""
    cfg = data_config(root, names, epochs=1)
    cfg["data"]["filters"] = [["date", "<=", "2026-01-01"]]
    fit(validate_config(cfg), client)


def speed(work: Path, quick: bool) -> dict:
    rows_per_day, days = (50_000, 4) if quick else (1_000_000, 8)
    root = work / "speed"
    names = write_days(root, days, rows_per_day)
    pyarrow_scan(root, [*names, "y"])  # warm the page cache for everyone
    scan = min(pyarrow_scan(root, [*names, "y"]) for _ in range(3))
    out = {"rows": rows_per_day * days, "features": len(names), "epochs": EPOCHS, "scan_s": scan}
    with local_client(2) as client:
        warm_up(client, root, names)
        # Best of 3, like the scan: same warm page cache for both.
        full = data_config(root, names, strategy="gram", epochs=EPOCHS, tol=0, momentum=0.0)
        full["output"]["metrics"] = "full"  # mae too: a second pass
        gram_cfg = validate_config(full)
        gram, t = best_of(3, fit, gram_cfg, client)
        out.update(gram_s=t, gram_loss=gram.final_loss, learning_rate=gram.learning_rate)
        # output.metrics: moments (the default) — the training alone: one pass, none for mae.
        one_pass = data_config(root, names, strategy="gram", epochs=EPOCHS, tol=0, momentum=0.0)
        _, out["gram_one_pass_s"] = best_of(3, fit, validate_config(one_pass), client)
        stream_cfg = validate_config(data_config(root, names, strategy="stream", cache="memory",
                                                 epochs=EPOCHS, tol=0, momentum=0.0))
        stream, t = timed(fit, stream_cfg, client)
        epoch_s = moving_epoch_seconds(stream.history)
        out.update(stream_s=t, stream_epoch_s=epoch_s, stream_loss=stream.final_loss)
        out["estimator_ddf_s"] = estimator_from_dask_dataframe(root, names)
        try:
            out["dask_ml_s"], out["dask_ml_loss"] = dask_ml(client, root, names, EPOCHS)
        except ImportError:
            out["dask_ml_s"] = out["dask_ml_loss"] = None
    out["numpy_epoch_s"], out["numpy_loss"] = numpy_loop(root, names, gram.learning_rate, EPOCHS)
    out["ratio_gram_vs_scan"] = out["gram_s"] / scan
    out["ratio_gram_one_pass_vs_scan"] = out["gram_one_pass_s"] / scan
    out["ratio_stream_epoch_vs_numpy_epoch"] = epoch_s / out["numpy_epoch_s"]
    if out["dask_ml_s"]:
        out["ratio_dask_ml_vs_gram"] = out["dask_ml_s"] / out["gram_s"]
    return out


LOGISTIC_EPOCHS = 30


def _in_memory(root: Path, names):
    table = pads.dataset(root, format="parquet", partitioning="hive").to_table(columns=[*names, "y"])
    X = np.column_stack([table.column(n).to_numpy() for n in names])
    return X, table.column("y").to_numpy()


def numpy_logistic(root: Path, names, lr: float, epochs: int):
    """Plain logistic gradient descent on standardized data in memory; (s per epoch, log-loss)."""
    X, y = _in_memory(root, names)
    Xs = (X - X.mean(0)) / X.std(0)
    m, b = np.zeros(X.shape[1]), 0.0
    t = time.perf_counter()
    for _ in range(epochs):
        z = Xs @ m + b
        r = (1.0 / (1.0 + np.exp(-z))) - y
        m, b = m - lr * (Xs.T @ r) / len(y), b - lr * r.mean()
    per_epoch = (time.perf_counter() - t) / epochs
    z = Xs @ m + b
    return per_epoch, float(np.mean(np.logaddexp(0, z) - y * z))


def dask_ml_logistic(client, root: Path, names, solver: str, max_iter: int):
    """dask-ml's LogisticRegression (no penalty to speak of: C = 1e10) on persisted arrays:
    (seconds, log-loss, iterations asked)."""
    import dask.array as da
    import dask.dataframe as dd
    from dask_ml.linear_model import LogisticRegression

    df = dd.read_parquet(str(root), columns=[*names, "y"])
    arr = df.to_dask_array(lengths=True)
    X, y = client.persist([arr[:, :-1], arr[:, -1]])
    model, t = timed(LogisticRegression(solver=solver, max_iter=max_iter, C=1e10, tol=1e-10,
                                        fit_intercept=True).fit, X, y)
    z = X @ da.from_array(np.asarray(model.coef_).ravel()) + model.intercept_
    loss = float((da.logaddexp(0, z) - y * z).mean().compute())
    return t, loss


def logistic(work: Path, quick: bool) -> dict:
    """Logistic regression: a stream epoch against a NumPy epoch, the default run to a
    certified model, and dask-ml's solvers on the same persisted data."""
    rows_per_day, days = (50_000, 4) if quick else (1_000_000, 8)
    root = work / "logistic"
    names = write_days(root, days, rows_per_day, seed=5, labels=True)
    out = {"rows": rows_per_day * days, "features": len(names), "epochs": LOGISTIC_EPOCHS}
    with local_client(2) as client:
        warm_up(client, root, names)
        fixed = data_config(root, names, strategy="stream", cache="memory", epochs=LOGISTIC_EPOCHS, tol=0)
        fixed["model"] = {"loss": "logistic"}
        res, t = timed(fit, validate_config(fixed), client)
        out.update(fixed_s=t, epoch_s=moving_epoch_seconds(res.history),
                   learning_rate=res.learning_rate)
        default = data_config(root, names)
        default["model"] = {"loss": "logistic"}
        res, t = timed(fit, validate_config(default), client)
        out.update(default_s=t, default_epochs=res.epochs_run, converged=res.converged,
                   digits=res.convergence["digits"], log_loss=res.final_loss)
        for solver, iters in (("lbfgs", 1000), ("gradient_descent", 300)):
            try:
                out[f"dask_ml_{solver}_s"], out[f"dask_ml_{solver}_loss"] = dask_ml_logistic(
                    client, root, names, solver, iters)
                out[f"dask_ml_{solver}_iters"] = iters
            except ImportError:
                out[f"dask_ml_{solver}_s"] = None
    out["numpy_epoch_s"], out["numpy_loss"] = numpy_logistic(root, names, 0.5, LOGISTIC_EPOCHS)
    out["ratio_epoch_vs_numpy"] = out["epoch_s"] / out["numpy_epoch_s"]
    return out


def report_logistic(s: dict) -> None:
    print(f"\n## Logistic regression: {s['rows']:,} rows × {s['features']} features, 2 workers, memory cache\n")
    print("| method | seconds | log-loss | ratio |")
    print("|---|---|---|---|")
    print(f"| gd-dask stream epoch ({s['epochs']} epochs, fixed rate) | {s['epoch_s'] * 1e3:.1f} ms/epoch | – | "
          f"{s['ratio_epoch_vs_numpy']:.2f} × NumPy epoch |")
    print(f"| NumPy in-memory epoch | {s['numpy_epoch_s'] * 1e3:.1f} ms/epoch | – | 1.00 |")
    print(f"| gd-dask defaults, to a certified model ({s['default_epochs']} epochs, "
          f"{s['digits']:.1f} digits) | {s['default_s']:.2f} | {s['log_loss']:.9g} | 1.00 |")
    for solver in ("lbfgs", "gradient_descent"):
        t = s.get(f"dask_ml_{solver}_s")
        if t:
            loss = s[f"dask_ml_{solver}_loss"]
            print(f"| dask-ml LogisticRegression({solver}, max_iter {s[f'dask_ml_{solver}_iters']}) | {t:.2f} | "
                  f"{loss:.9g} ({loss / s['log_loss'] - 1:+.1e}) | {t / s['default_s']:.1f} × gd-dask |")


def sgd(work: Path, quick: bool) -> dict:
    """Minibatch SGD on the speed data: an epoch against a stream batch epoch (cached and
    not), the loss after 2 epochs against the optimum and scikit-learn's SGDRegressor,
    and logistic after 3 epochs on the logistic data."""
    rows_per_day, days = (50_000, 4) if quick else (1_000_000, 8)
    root, lroot = work / "speed", work / "logistic"
    names = write_days(root, days, rows_per_day)
    write_days(lroot, days, rows_per_day, seed=5, labels=True)
    X, y = _in_memory(root, names)
    A = np.column_stack([X, np.ones(len(y))])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    opt = float(np.mean((A @ coef - y) ** 2))
    out = {"rows": len(y), "optimum_mse": opt, "batches": {}}
    with local_client(2) as client:
        warm_up(client, root, names)
        for cache in ("memory", "none"):
            batch_cfg = data_config(root, names, strategy="stream", cache=cache, epochs=5, tol=0, momentum=0.0)
            res = fit(validate_config(batch_cfg), client)
            out[f"batch_epoch_{cache}_s"] = moving_epoch_seconds(res.history)
            for batch in (1024, 8192):
                cfg = data_config(root, names, method="minibatch", batch_size=batch, epochs=2, cache=cache)
                res, t = timed(fit, validate_config(cfg), client)
                mse = float(np.mean((X @ res.m + res.b - y) ** 2))
                out["batches"][f"{batch}_{cache}"] = {
                    # The first epoch also fills the cache (memory): time the second.
                    "epoch_s": float(np.median([h["seconds"] for h in res.history[1:]])), "total_s": t,
                    "excess_loss": mse / opt - 1}
        cfg = data_config(lroot, names, method="minibatch", batch_size=1024, epochs=3, cache="memory")
        cfg["model"] = {"loss": "logistic"}
        res = fit(validate_config(cfg), client)
        full = data_config(lroot, names, cache="memory")
        full["model"] = {"loss": "logistic"}
        best = fit(validate_config(full), client)
    Xl, yl = _in_memory(lroot, names)

    def log_loss(m, b):
        z = Xl @ m + b
        return float(np.mean(np.logaddexp(0, z) - yl * z))

    out["logistic_excess"] = log_loss(res.m, res.b) / log_loss(best.m, best.b) - 1
    out["logistic_batch_epochs"] = best.epochs_run
    try:
        from sklearn.linear_model import SGDRegressor

        mu, sd = X.mean(0), X.std(0)
        sk, t = timed(SGDRegressor(max_iter=2, tol=None, random_state=0).fit, (X - mu) / sd, y)
        out["sklearn_s"] = t
        out["sklearn_excess"] = float(np.mean((sk.predict((X - mu) / sd) - y) ** 2)) / opt - 1
    except ImportError:
        out["sklearn_s"] = None
    return out


def report_sgd(s: dict) -> None:
    print(f"\n## Minibatch SGD: {s['rows']:,} rows × 8 features, 2 workers, 2 epochs\n")
    print("| run | epoch (s) | vs a stream batch epoch | loss after 2 epochs vs optimum |")
    print("|---|---|---|---|")
    for key, v in s["batches"].items():
        batch, cache = key.split("_")
        base = s[f"batch_epoch_{cache}_s"]
        print(f"| batch_size {batch}, cache {cache} | {v['epoch_s']:.3f} | {v['epoch_s'] / base:.2f} × "
              f"({base:.3f} s) | {v['excess_loss']:+.2e} |")
    if s.get("sklearn_s"):
        print(f"| scikit-learn SGDRegressor, 2 epochs, in memory | {s['sklearn_s'] / 2:.3f} | – | "
              f"{s['sklearn_excess']:+.2e} |")
    print(f"\nlogistic, batch_size 1024, 3 epochs: log-loss {s['logistic_excess']:+.2e} vs the certified optimum "
          f"({s['logistic_batch_epochs']} batch epochs)")


def memory(work: Path, quick: bool) -> dict:
    limit = 300 * 2**20
    n_workers = 2
    total = n_workers * limit
    d = 3
    rows_per_day = 2_000_000 if not quick else 200_000
    days = int(np.ceil(4 * total / (rows_per_day * (d + 1) * 8))) if not quick else 2
    root = work / "memory"
    names = write_days(root, days, rows_per_day, d=d, seed=1)
    out = {"worker_limit_mib": limit / 2**20, "workers": n_workers,
           "data_mib": days * rows_per_day * (d + 1) * 8 / 2**20}
    for strategy, epochs in (("gram", EPOCHS), ("stream", 2)):
        cfg = validate_config(data_config(root, names, strategy=strategy, epochs=epochs, tol=0))
        with local_client(n_workers, memory_limit=limit) as client, WorkerRSS(client) as rss:
            res, t = timed(fit, cfg, client)
        out[strategy] = {"seconds": t, "epochs": res.epochs_run, "loss": res.final_loss,
                         "peak_worker_rss_mib": [round(v / 2**20, 1) for v in rss.peak.values()]}
    return out


def scaling(work: Path, quick: bool) -> dict:
    base = 25_000 if quick else 500_000
    root = work / "scaling"
    names = write_days(root, 8, base, seed=2)
    out = {"base_rows": base, "points": []}
    for n_workers in (1, 2):
        with local_client(n_workers) as client:
            warm_up(client, root, names)
            for k in (1, 2, 4, 8):
                cfg = data_config(root, names, strategy="gram", epochs=EPOCHS, tol=0)
                cfg["data"]["filters"] = [["date", "<=", f"2026-01-{k:02d}"]]
                _, t = timed(fit, validate_config(cfg), client)
                out["points"].append({"workers": n_workers, "size": k, "rows": k * base, "seconds": t})
    return out


def refit_cost(work: Path, quick: bool) -> dict:
    """Refit after one new day of 30 vs training on that one day alone."""
    import shutil
    from datetime import date

    from gd_dask.jobs.refit import refit

    rows = 20_000 if quick else 300_000
    root = work / "refit"
    shutil.rmtree(root / "registry", ignore_errors=True)
    names = write_days(root / "data", 31, rows, seed=4)  # dates 2026-01-01 … 2026-02-03
    days = sorted(p.name.split("=")[1] for p in (root / "data").iterdir())
    cfg = data_config(root / "data", names, epochs="auto")
    cfg["data"]["window_days"] = 30
    cfg["registry"] = {"dir": str(root / "registry")}
    with local_client(2) as client:
        warm_up(client, root / "data", names)
        refit(validate_config(cfg), client, date.fromisoformat(days[-2]))  # the nights before: cache filled
        outcome, t_refit = timed(refit, validate_config(cfg), client, date.fromisoformat(days[-1]))
        one = data_config(root / "data", names, epochs="auto")
        one["data"]["filters"] = [["date", "==", days[-1]]]
        _, t_one = timed(fit, validate_config(one), client)
    return {"rows_per_day": rows, "window_days": 30, "files_read": outcome.files_read,
            "refit_s": t_refit, "train_one_day_s": t_one, "ratio": t_refit / t_one}


def plot(scale: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for w in (1, 2):
        pts = [p for p in scale["points"] if p["workers"] == w]
        ax.plot([p["rows"] for p in pts], [p["seconds"] for p in pts], "o-", label=f"{w} worker{'s' * (w > 1)}")
    ax.set_xlabel("rows (8 features)")
    ax.set_ylabel(f"gram training time, {EPOCHS} epochs (s)")
    ax.set_title("gd-dask: training time vs data size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def categorical(work: Path, quick: bool) -> dict:
    return cat_bench.categorical(work, quick)


def glm(work: Path, quick: bool) -> dict:
    return glm_bench.glm(work, quick)


def time_to_model(work: Path, quick: bool) -> dict:
    rows_per_day, days = (50_000, 4) if quick else (1_000_000, 8)
    root = work / "speed"
    write_days(root, days, rows_per_day)
    pyarrow_scan(root, [f"x{j}" for j in range(8)] + ["y"])  # warm the page cache for everyone
    return ttm.time_to_model(work, quick, root)


def many_files(work: Path, quick: bool) -> dict:
    return mf.many_files(work, quick, MANY_FILES)


def nightly_files(work: Path, quick: bool) -> dict:
    return mf.nightly_refit(work, quick)


def table_planning(work: Path, quick: bool) -> dict:
    """Issue 30: a Delta table of 100,000 files planned from its log (``table_planning.py``)."""
    import table_planning as tp

    return tp.run(work, 5_000 if quick else 100_000)


def nightly_year(work: Path, quick: bool) -> dict:
    """Issue 28: a year of nights per scenario (``nightly_year.py``), the issue's 40,000
    rows a night, the scenarios on every core."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    import nightly_year as ny

    run = partial(ny.run_year, nights=90 if quick else 365, rows=4_000 if quick else 40_000)
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return {"scenarios": list(pool.map(run, ny.SCENARIOS))}


def report(res: dict) -> None:
    if "time_to_model" in res:
        ttm.report(res["time_to_model"])
    if "categorical" in res:
        cat_bench.report(res["categorical"])
    if "glm" in res:
        glm_bench.report(res["glm"])
    if "many_files" in res:
        mf.report(res["many_files"])
    if "nightly_files" in res:
        mf.report_refit(res["nightly_files"])
    if "table_planning" in res:
        import table_planning as tp

        tp.report(res["table_planning"])
    if "nightly_year" in res:
        import nightly_year as ny

        rows = res["nightly_year"]["scenarios"]
        print(f"\n## A year of nights: {rows[0]['nights']} refits per scenario, window "
              f"{ny.WINDOW_DAYS} days, {rows[0]['bad_nights']} bad nights injected\n")
        print(ny.table(rows))
    if "speed" in res:
        report_speed(res["speed"])
    if "logistic" in res:
        report_logistic(res["logistic"])
    if "sgd" in res:
        report_sgd(res["sgd"])
    if "memory" in res:
        report_memory(res["memory"])
    if "scaling" in res:
        report_scaling(res["scaling"])
    if "refit_cost" in res:
        r = res["refit_cost"]
        print(f"\n## Nightly refit: one new day of {r['window_days']} ({r['rows_per_day']:,} rows a day)\n")
        print(f"refit {r['refit_s']:.2f} s ({r['files_read']} file read) vs training on that day alone "
              f"{r['train_one_day_s']:.2f} s: {r['ratio']:.2f} ×")


def report_speed(s: dict) -> None:
    print(f"\n## Speed: {s['rows']:,} rows × {s['features']} features, {s['epochs']} epochs, 2 workers\n")
    print("| method | seconds | final loss (mse) | ratio |")
    print("|---|---|---|---|")
    print(f"| pyarrow scan (floor) | {s['scan_s']:.2f} | – | 1.00 |")
    print(f"| gd-dask gram, output.metrics: full (mae: a second pass) | {s['gram_s']:.2f} | {s['gram_loss']:.6g} | "
          f"{s['ratio_gram_vs_scan']:.2f} × scan |")
    print(f"| gd-dask gram, defaults (output.metrics: moments, one pass) | {s['gram_one_pass_s']:.2f} | "
          f"{s['gram_loss']:.6g} | "
          f"{s['ratio_gram_one_pass_vs_scan']:.2f} × scan |")
    print(f"| gd-dask stream, memory cache | {s['stream_s']:.2f} ({s['stream_epoch_s'] * 1e3:.1f} ms/epoch) | "
          f"{s['stream_loss']:.6g} | {s['ratio_stream_epoch_vs_numpy_epoch']:.2f} × NumPy epoch |")
    print(f"| gd_dask.LinearRegression().fit(dask DataFrame) (defaults) | {s['estimator_ddf_s']:.2f} | – | "
          f"{s['estimator_ddf_s'] / s['gram_s']:.1f} × gram |")
    if s.get("dask_ml_s"):
        print(f"| dask-ml LinearRegression(gradient_descent) | {s['dask_ml_s']:.2f} | {s['dask_ml_loss']:.6g} | "
              f"{s['ratio_dask_ml_vs_gram']:.1f} × gram |")
    print(f"| NumPy in-memory loop | {s['numpy_epoch_s'] * EPOCHS:.2f} ({s['numpy_epoch_s'] * 1e3:.1f} ms/epoch) | "
          f"{s['numpy_loss']:.6g} | 1.00 |")


def report_memory(m: dict) -> None:
    print(f"\n## Memory: {m['data_mib']:.0f} MiB of float64 data, {m['workers']} workers × "
          f"{m['worker_limit_mib']:.0f} MiB limit\n")
    print("| strategy | seconds | epochs | peak worker RSS (MiB) |")
    print("|---|---|---|---|")
    for k in ("gram", "stream"):
        print(f"| {k} | {m[k]['seconds']:.1f} | {m[k]['epochs']} | {m[k]['peak_worker_rss_mib']} |")


def report_scaling(scale: dict) -> None:
    print("\n## Scaling (gram, 100 epochs)\n")
    print("| rows | 1 worker (s) | 2 workers (s) |")
    print("|---|---|---|")
    for k in (1, 2, 4, 8):
        row = {p["workers"]: p["seconds"] for p in scale["points"] if p["size"] == k}
        print(f"| {k * scale['base_rows']:,} | {row[1]:.2f} | {row[2]:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--only", nargs="*", default=["time_to_model", "categorical", "glm", "many_files", "nightly_files", "table_planning",
                                                   "nightly_year",
                                                   "speed", "logistic",
                                                   "sgd", "memory", "scaling", "refit_cost", "accuracy"])
    ap.add_argument("--many-files", type=int, default=20_000,
                    help="files of 100 rows in the many_files section (the issue's target: 100000)")
    args = ap.parse_args()
    global MANY_FILES
    MANY_FILES = args.many_files
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("gd_dask").setLevel(logging.ERROR)  # fixed-epoch runs warn by design
    out = Path(args.out)
    work = out / "data"
    work.mkdir(parents=True, exist_ok=True)
    res = {}
    for name in args.only:
        if name == "accuracy":
            import nist_accuracy

            print("\n## Accuracy: NIST StRD, LRE of the worst coefficient\n")
            res["accuracy"] = nist_accuracy.main()
        else:
            res[name] = globals()[name](work, args.quick)
            print(f"{name}: done", file=sys.stderr)
        (out / "bench.json").write_text(json.dumps(res, indent=2))  # keep what is done
    report(res)
    if "scaling" in res:
        plot(res["scaling"], out / "bench.png")


if __name__ == "__main__":
    main()
