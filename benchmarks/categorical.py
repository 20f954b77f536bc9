"""`make bench` section ``categorical``: 8M rows × (4 numeric + `region`, 50 text levels,
+ `store`, 5,000 integer levels) to a least-squares model, each tool in a fresh process:

- gd-dask train, defaults (the whole command and its training seconds);
- pandas + scikit-learn OneHotEncoder(drop="first", sparse) + LinearRegression;
- statsmodels' formula ``C()`` and glum where they fit / are installed (a dense
  8M × 5,053 design is 320 GB: statsmodels is skipped at this size and said so);
- Spark's StringIndexer + OneHotEncoder + LinearRegression where pyspark is installed
  (its normal-equation solver takes at most 4,096 features, so ``auto`` picks L-BFGS
  here; asked for tol 1e-10).

Each peer's slopes are compared with gd-dask's.

A second job, ``two_way``: 1M rows × (4 numeric + `user`, 20,000 text levels, + `item`,
20,000 integer levels of Zipf-like popularity), two columns neither of which a dense level
block can hold (20,000² × 8 bytes = 3.2 GB), with gd-dask, scikit-learn's sparse
OneHotEncoder + LinearRegression (scipy's LSQR) and pyfixest's ``feols(y ~ x | user +
item)`` (alternating projections) where installed; glum is skipped (its Hessian is dense
over the 40,000 levels).

A third, ``two_way_logistic``: the same shape with a 0/1 target (logistic), against
pyfixest's ``feglm(..., family="logit")`` (IRLS with demeaning; iid standard errors) and
scikit-learn's sparse OneHotEncoder + LogisticRegression (C=inf: no penalty; lbfgs at its default
tol, newton-cg at 1e-10).

A fourth, ``one_column_logistic``: the logistic job's rows with the users alone (the
items' effects left as noise), against pyfixest's ``feglm(... | user)`` and scikit-learn's
lbfgs on the sparse one-hot design (at its default tol and at 1e-10).

A fifth, ``many_way``: 1M rows × (4 numeric + `region`, 50 text levels, + `store`, 3,000
integers of Zipf-like popularity, + `device`, 5 integers, + `product`, 8,000 text levels),
least squares: gd-dask's two-column solver with region's and device's levels as indicator
columns (``optimization.many_way``), against scikit-learn's sparse OneHotEncoder +
LinearRegression and pyfixest's ``feols(y ~ x + C(region) + C(device) | store +
product)`` where installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import train_command

HERE = Path(__file__).parent
ROWS, FILES, STORES, REGIONS = 8_000_000, 8, 5_000, 50


def write(root: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if root.exists():
        return
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    store_effect, region_effect = rng.normal(0, 1, STORES), np.linspace(-1, 1, REGIONS)
    for f in range(FILES):
        n = rows // FILES
        X = rng.normal(0, 1, (n, 4))
        store, region = rng.integers(0, STORES, n), rng.integers(0, REGIONS, n)
        y = X @ [1.0, -2.0, 0.5, 3.0] + store_effect[store] + region_effect[region] + rng.normal(0, 1, n)
        pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(4)}, "store": store,
                                 "region": [f"r{r:02d}" for r in region], "y": y}), root / f"part-{f}.parquet")


TWO_ROWS, USERS, ITEMS = 1_000_000, 20_000, 20_000


def write_two_way(root: Path, rows: int) -> None:
    """y linear in x, the user's and the item's effects, and noise."""
    _write_users_items(root, rows, lambda rng, X, user, item: (
        2 + X @ [1.0, 2.0, 3.0, 4.0] + rng.normal(0, 1, USERS)[user] + rng.normal(0, 0.5, ITEMS)[item]
        + rng.normal(0, 1, rows)))


def write_two_way_logistic(root: Path, rows: int) -> None:
    """``write_two_way``'s shape with y ~ Bernoulli(σ(η)): rare items whose few rows are
    all 0 make some levels separated (set aside, as pyfixest does)."""
    def target(rng, X, user, item):
        eta = -0.5 + X @ [0.3, -0.2, 0.1, 0.25] + rng.normal(0, 0.5, USERS)[user] + rng.normal(0, 0.3, ITEMS)[item]
        return (rng.random(rows) < 1 / (1 + np.exp(-eta))).astype(float)

    _write_users_items(root, rows, target)


def _write_users_items(root: Path, rows: int, target) -> None:
    """``rows`` rows of 4 numeric features, ``user`` (text, uniform) and ``item``
    (integers, Zipf-like popularity), y = ``target(rng, X, user, item)``, in ``FILES``
    files (none written if ``root`` exists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if root.exists():
        return
    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    user = rng.integers(0, USERS, rows)
    p = 1 / np.arange(1, ITEMS + 1) ** 0.8
    item = rng.choice(ITEMS, size=rows, p=p / p.sum())
    X = rng.normal(0, 1, (rows, 4)) + rng.normal(0, 0.3, USERS)[user][:, None]
    y = target(rng, X, user, item)
    names = np.array([f"user-{u:06d}" for u in range(USERS)])
    for f, idx in enumerate(np.array_split(np.arange(rows), FILES)):
        pq.write_table(pa.table({**{f"x{j}": X[idx, j] for j in range(4)}, "user": names[user[idx]].tolist(),
                                 "item": item[idx], "y": y[idx]}), root / f"part-{f}.parquet")


MANY_STORES, MANY_PRODUCTS = 3_000, 8_000


def write_many_way(root: Path, rows: int) -> None:
    """y linear in x and the four columns' effects, and noise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if root.exists():
        return
    root.mkdir(parents=True)
    rng = np.random.default_rng(11)
    region, device = rng.integers(0, REGIONS, rows), rng.integers(0, 5, rows)
    store, product = rng.zipf(1.3, rows) % MANY_STORES, rng.integers(0, MANY_PRODUCTS, rows)
    X = rng.normal(0, 1, (rows, 4))
    y = (X @ [1.0, -2.0, 0.5, 3.0] + rng.normal(0, 1, REGIONS)[region] + rng.normal(0, 0.5, MANY_STORES)[store]
         + np.array([0.0, 0.4, -0.3, 0.8, 0.1])[device] + rng.normal(0, 0.3, MANY_PRODUCTS)[product]
         + rng.normal(0, 1, rows))
    regions = np.array([f"r{r:02d}" for r in range(REGIONS)])
    products = np.array([f"p{p:05d}" for p in range(MANY_PRODUCTS)])
    for f, idx in enumerate(np.array_split(np.arange(rows), FILES)):
        pq.write_table(pa.table({**{f"x{j}": X[idx, j] for j in range(4)}, "region": regions[region[idx]].tolist(),
                                 "store": store[idx], "device": device[idx], "product": products[product[idx]].tolist(),
                                 "y": y[idx]}), root / f"part-{f}.parquet")


MANY_COLUMNS = ("region", "store", "device", "product")


def _sklearn_many_way(root: str) -> dict:
    """scikit-learn at its defaults on the four columns' sparse one-hot design."""
    return _sklearn(root, columns=MANY_COLUMNS)


def _sklearn_many_way_tol_1e_10(root: str) -> dict:
    """LSQR asked for gd-dask's accuracy."""
    return _sklearn(root, tol=1e-10, columns=MANY_COLUMNS)


def _pyfixest_many_way(root: str) -> dict:
    import pyarrow.dataset as ds
    import pyfixest as pf

    t0 = time.perf_counter()
    df = ds.dataset(root).to_table().to_pandas()
    fit = pf.feols("y ~ x0 + x1 + x2 + x3 + C(region) + C(device) | store + product", data=df, fixef_tol=1e-10)
    coef = fit.coef()
    return {"seconds": time.perf_counter() - t0, "m": [float(coef[f"x{j}"]) for j in range(4)]}


def _pyfixest_logit(root: str, columns=("user", "item")) -> dict:
    import pyarrow.dataset as ds
    import pyfixest as pf

    t0 = time.perf_counter()
    df = ds.dataset(root).to_table().to_pandas()
    fit = pf.feglm(f"y ~ x0 + x1 + x2 + x3 | {' + '.join(columns)}", data=df, family="logit", vcov="iid")
    coef, se = fit.coef(), fit.se()
    return {"seconds": time.perf_counter() - t0, "m": [float(coef[f"x{j}"]) for j in range(4)],
            "se": [float(se[f"x{j}"]) for j in range(4)]}


def _sklearn_logit(root: str, solver: str = "lbfgs", tol: float = 1e-4, columns=("user", "item")) -> dict:
    import pyarrow.dataset as ds
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    t0 = time.perf_counter()
    df = ds.dataset(root).to_table().to_pandas()
    E = OneHotEncoder(drop="first", sparse_output=True).fit_transform(df[list(columns)])
    X = sp.hstack([sp.csr_matrix(df[[f"x{j}" for j in range(4)]].to_numpy()), E]).tocsr()
    lr = LogisticRegression(C=np.inf, solver=solver, tol=tol, max_iter=10000).fit(X, df["y"].to_numpy())
    return {"seconds": time.perf_counter() - t0, "m": lr.coef_[0][:4].tolist(), "iterations": int(lr.n_iter_[0])}


def _sklearn_logit_newton_cg(root: str) -> dict:
    """Newton-CG asked for gd-dask's accuracy."""
    return _sklearn_logit(root, "newton-cg", 1e-10)


def _pyfixest_logit_user(root: str) -> dict:
    return _pyfixest_logit(root, ("user",))


def _sklearn_logit_user(root: str) -> dict:
    return _sklearn_logit(root, columns=("user",))


def _sklearn_logit_user_tol_1e_10(root: str) -> dict:
    """lbfgs asked for gd-dask's accuracy."""
    return _sklearn_logit(root, tol=1e-10, columns=("user",))


def _columns(two_way: bool):
    return ("user", "item") if two_way else ("region", "store")


def _sklearn_two_way(root: str) -> dict:
    return _sklearn(root, two_way=True)


def _sklearn_two_way_tol_1e_10(root: str) -> dict:
    """LSQR asked for gd-dask's accuracy."""
    return _sklearn(root, two_way=True, tol=1e-10)


def _pyfixest(root: str) -> dict:
    import pyarrow.dataset as ds
    import pyfixest as pf

    t0 = time.perf_counter()
    df = ds.dataset(root).to_table().to_pandas()
    fit = pf.feols("y ~ x0 + x1 + x2 + x3 | user + item", data=df, fixef_tol=1e-10)
    coef = fit.coef()
    return {"seconds": time.perf_counter() - t0, "m": [float(coef[f"x{j}"]) for j in range(4)]}


def _sklearn(root: str, two_way: bool = False, tol: float = 1e-6, columns=None) -> dict:
    """scikit-learn at its defaults (LinearRegression's sparse path: scipy's LSQR, tol 1e-6)."""
    import pandas as pd
    import pyarrow.dataset as ds
    import scipy.sparse as sp
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import OneHotEncoder

    t0 = time.perf_counter()
    df: pd.DataFrame = ds.dataset(root).to_table().to_pandas()
    E = OneHotEncoder(drop="first", sparse_output=True).fit_transform(df[list(columns or _columns(two_way))])
    X = sp.hstack([sp.csr_matrix(df[[f"x{j}" for j in range(4)]].to_numpy()), E]).tocsr()
    lr = (LinearRegression(tol=tol) if tol != 1e-6 else LinearRegression()).fit(X, df["y"].to_numpy())
    return {"seconds": time.perf_counter() - t0, "m": lr.coef_[:4].tolist()}


def _glum(root: str) -> dict:
    import pyarrow.dataset as ds
    from glum import GeneralizedLinearRegressor

    t0 = time.perf_counter()
    df = ds.dataset(root).to_table().to_pandas()
    for c in ("region", "store"):
        df[c] = df[c].astype("category")
    m = GeneralizedLinearRegressor(family="normal", alpha=0, drop_first=True).fit(
        df[[f"x{j}" for j in range(4)] + ["region", "store"]], df["y"])
    return {"seconds": time.perf_counter() - t0, "m": m.coef_[:4].tolist()}


def _spark(root: str) -> dict:
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import OneHotEncoder, StringIndexer, VectorAssembler
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import SparkSession

    t0 = time.perf_counter()
    spark = SparkSession.builder.master("local[2]").config("spark.driver.memory", "8g").getOrCreate()
    df = spark.read.parquet(root)
    stages = [StringIndexer(inputCols=["region", "store"], outputCols=["region_i", "store_i"]),
              OneHotEncoder(inputCols=["region_i", "store_i"], outputCols=["region_v", "store_v"]),  # drops the last
              VectorAssembler(inputCols=[f"x{j}" for j in range(4)] + ["region_v", "store_v"], outputCol="features"),
              LinearRegression(labelCol="y", regParam=0.0, tol=1e-10, maxIter=200)]
    model = Pipeline(stages=stages).fit(df)
    lr = model.stages[-1]
    out = {"seconds": time.perf_counter() - t0, "m": list(map(float, lr.coefficients.toArray()[:4])),
           "iterations": int(lr.summary.totalIterations)}
    spark.stop()
    return out


def _peer(name: str, root: Path, timeout: float | None = None) -> dict | str | None:
    """A peer in a fresh process, with its peak RSS (``/usr/bin/time`` where present)."""
    t = time.perf_counter()
    cmd = [sys.executable, __file__, name, str(root)]
    timed = Path("/usr/bin/time").exists()
    # Its own session, so that a timeout stops the peer too, not only /usr/bin/time (an
    # orphaned peer kept both cores busy through the runs after it).
    proc = subprocess.Popen((["/usr/bin/time", "-f", "RSS %M"] if timed else []) + cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"stopped after {timeout:.0f} s"
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if res.returncode != 0:
        if "ModuleNotFoundError" in res.stderr:
            return None
        lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("RSS ")]
        return f"failed: {(lines or ['killed'])[-1][:200]}"
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t
    rss = [line for line in res.stderr.splitlines() if line.startswith("RSS ")]
    if rss:
        out["peak_rss_mb"] = int(rss[-1].split()[1]) / 1024
    return out


def categorical(work: Path, quick: bool) -> dict:
    """The section's figures (``run.py`` prints them)."""

    rows = 200_000 if quick else ROWS
    root = work / f"categorical-{rows}"
    write(root, rows)
    run = train_command({"name": "cat", "data": {"path": str(root), "target": "y", "categorical": ["store"],
                                                 "features": ["x0", "x1", "x2", "x3", "region", "store"]},
                         "output": {"dir": str(work / "categorical-out")}}, work / "categorical.yaml")
    model = run["model"]
    out = {"rows": rows, "gd_dask": {"whole_s": run["whole_s"], "train_s": run["train_s"],
                                     "converged": model["converged"], "digits": model["convergence"]["digits"],
                                     "m": model["m"]},
           "peers": {}}
    for name in ("sklearn", "glum", "spark"):
        res = _peer(name, root)
        if isinstance(res, dict):
            res["largest_slope_difference"] = float(np.max(np.abs(np.asarray(res["m"]) - model["m"])))
        out["peers"][name] = res
    out["peers"]["statsmodels"] = "skipped: a dense design of 5,053 columns does not fit at this size"
    out["two_way"] = two_way(work, quick)
    out["two_way_logistic"] = two_way_logistic(work, quick)
    out["one_column_logistic"] = one_column_logistic(work, quick)
    out["many_way"] = many_way(work, quick)
    return out


def two_way(work: Path, quick: bool) -> dict:
    """The two-column job: gd-dask (whole command) and its peers, with peak RSS."""
    out = _two_way_job(work, quick, "two-way", write_two_way, {},
                       ("sklearn_two_way", "sklearn_two_way_tol_1e_10", "pyfixest"), timeout=600)
    # Run once by hand, glum was killed by the kernel: its Hessian is dense over every
    # level (40,000² × 8 bytes = 12.8 GB, and copies), on a 24 GB machine.
    out["peers"]["glum"] = "skipped: its Hessian is dense over 40,000 levels (12.8 GB); killed for memory when tried"
    return out


def two_way_logistic(work: Path, quick: bool) -> dict:
    """The two-column job with a 0/1 target: gd-dask (whole command) and its peers."""
    return _two_way_job(work, quick, "two-way-logistic", write_two_way_logistic, {"loss": "logistic"},
                        ("pyfixest_logit", "sklearn_logit", "sklearn_logit_newton_cg"), timeout=300)


def one_column_logistic(work: Path, quick: bool) -> dict:
    """The logistic job's rows with the users alone (50 rows a level; the items' effects
    are noise here): gd-dask's Newton with one column's levels a diagonal block, and its
    peers."""
    return _two_way_job(work, quick, "two-way-logistic", write_two_way_logistic, {"loss": "logistic"},
                        ("pyfixest_logit_user", "sklearn_logit_user", "sklearn_logit_user_tol_1e_10"), timeout=300,
                        columns=("user",))


def many_way(work: Path, quick: bool) -> dict:
    """Four categorical columns, two of many levels: gd-dask (whole command) and its peers."""
    peers = ("sklearn_many_way", "sklearn_many_way_tol_1e_10", "pyfixest_many_way")
    return _two_way_job(work, quick, "many-way", write_many_way, {}, peers, timeout=600, columns=MANY_COLUMNS,
                        integer=["store", "device"])


def _two_way_job(work: Path, quick: bool, name: str, writer, model_cfg: dict, peers, timeout: float,
                 columns=("user", "item"), integer=None) -> dict:
    """gd-dask's whole command on a users × items dataset (``writer``'s), with the
    categorical ``columns``, and each peer in a fresh process: seconds, peak RSS, the
    slopes' largest difference from gd-dask's."""
    rows = 100_000 if quick else TWO_ROWS
    root = work / f"{name}-{rows}"
    writer(root, rows)
    if integer is None:
        integer = ["item"] if "item" in columns else []  # the item column holds integers
    cfg = {"name": name, "data": {"path": str(root), "target": "y", "categorical": integer,
                                  "features": ["x0", "x1", "x2", "x3", *columns]},
           "model": model_cfg, "output": {"dir": str(work / f"{name}-{len(columns)}-out")}}
    run = train_command(cfg, work / f"{name}-{len(columns)}.yaml")
    model = run["model"]
    out = {"rows": rows, "gd_dask": {"whole_s": run["whole_s"], "train_s": run["train_s"],
                                     "converged": model["converged"], "digits": model["convergence"]["digits"],
                                     "passes": model["epochs_run"], "peak_rss_mb": run.get("peak_rss_mb"),
                                     "m": model["m"]},
           "peers": {}}
    for peer in peers:
        res = _peer(peer, root, timeout=timeout)
        if isinstance(res, dict):
            res["largest_slope_difference"] = float(np.max(np.abs(np.asarray(res["m"]) - model["m"])))
        out["peers"][peer] = res
    return out


def _rows(peers: dict, rss: bool) -> None:
    for name, p in peers.items():
        if isinstance(p, str) or p is None:
            print(f"| {name} | {p or 'not installed'} |" + (" |" if rss else "") + " |")
        else:
            mem = f" {p['peak_rss_mb']:.0f} |" if rss and p.get("peak_rss_mb") else (" – |" if rss else "")
            print(f"| {name} | {p['process_s']:.2f} |{mem} {p['largest_slope_difference']:.1e} |")


def report(r: dict) -> None:
    g = r["gd_dask"]
    print(f"\n## Categorical features: {r['rows']:,} rows × (4 numeric + 50 text + 5,000 integer levels)\n")
    print("| tool | seconds (whole process) | slopes vs gd-dask |\n|---|---|---|")
    print(f"| **gd-dask train** (defaults; training {g['train_s']:.2f} s, {g['digits']:.1f} digits, "
          f"converged {g['converged']}) | {g['whole_s']:.2f} | – |")
    _rows(r["peers"], False)
    for key, title, levels in (("two_way", "Two categorical columns", "20,000 text + 20,000 integer levels"),
                               ("two_way_logistic", "Logistic, two categorical columns",
                                "20,000 text + 20,000 integer levels"),
                               ("one_column_logistic", "Logistic, one categorical column", "20,000 text levels"),
                               ("many_way", "Four categorical columns",
                                "50 text + 3,000 integer + 5 integer + 8,000 text levels")):
        if key in r:
            t = r[key]
            g = t["gd_dask"]
            print(f"\n## {title}: {t['rows']:,} rows × (4 numeric + {levels})\n")
            print("| tool | seconds (whole process) | peak RSS (MB) | slopes vs gd-dask |\n|---|---|---|---|")
            rss = f"{g['peak_rss_mb']:.0f}" if g.get("peak_rss_mb") else "–"
            passes = f"{g['passes']} passes, " if g.get("passes") else ""
            print(f"| **gd-dask train** (defaults; training {g['train_s']:.2f} s, {passes}{g['digits']:.1f} digits, "
                  f"converged {g['converged']}) | {g['whole_s']:.2f} | {rss} | – |")
            _rows(t["peers"], True)


if __name__ == "__main__":
    print(json.dumps({"sklearn": _sklearn, "glum": _glum, "spark": _spark, "sklearn_two_way": _sklearn_two_way,
                      "sklearn_two_way_tol_1e_10": _sklearn_two_way_tol_1e_10,
                      "pyfixest": _pyfixest, "pyfixest_logit": _pyfixest_logit, "sklearn_logit": _sklearn_logit,
                      "sklearn_logit_newton_cg": _sklearn_logit_newton_cg, "pyfixest_logit_user": _pyfixest_logit_user,
                      "sklearn_logit_user": _sklearn_logit_user,
                      "sklearn_logit_user_tol_1e_10": _sklearn_logit_user_tol_1e_10,
                      "sklearn_many_way": _sklearn_many_way, "sklearn_many_way_tol_1e_10": _sklearn_many_way_tol_1e_10,
                      "pyfixest_many_way": _pyfixest_many_way,
                      }[sys.argv[1]](sys.argv[2])))
