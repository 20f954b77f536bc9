"""`make bench` section ``glm``: 8M rows × 8 features to a Poisson model with an exposure,
a Gamma model, and a logistic one, each tool in a fresh process on the same files:

- gd-dask train, defaults (the whole command; its training seconds and passes);
- glum (IRLS, alpha 0; the exposure as ``offset=log(exposure)``);
- scikit-learn's PoissonRegressor / GammaRegressor / LogisticRegression (lbfgs, alpha 0,
  tol 1e-10, which stops at its own ftol short of 1e-9; and newton-cholesky, tol 1e-12,
  the model of equal accuracy; the exposure by its equivalent: rate y/exposure weighted
  by the exposure);
- statsmodels' GLM (IRLS; ``exposure=``);
- dask-ml's PoissonRegression / LogisticRegression (lbfgs, no penalty) where a job is
  expressible in it (it takes no offset, no weights and has no Gamma family);
- Spark's GeneralizedLinearRegression (IRLS; ``offsetCol``) where pyspark is installed.

Each peer's coefficients are compared with gd-dask's (largest relative difference): equal
accuracy is part of the comparison."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import train_command

HERE = Path(__file__).parent
ROWS, FILES, D = 8_000_000, 8, 8
BETA = np.array([0.3, -0.2, 0.1, 0.05, -0.1, 0.2, 0.0, 0.15])
JOBS = ("poisson", "gamma", "logistic")


def write(root: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if root.exists():
        return
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in range(FILES):
        n = rows // FILES
        X = rng.normal(0, 1, (n, D))
        eta = X @ BETA - 0.5
        expo = rng.uniform(0.2, 3.0, n)
        cols = {f"x{j}": X[:, j] for j in range(D)}
        cols.update(expo=expo, count=rng.poisson(expo * np.exp(eta)).astype(float),
                    amount=rng.gamma(2.0, np.exp(eta) / 2.0),
                    click=(rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float))
        pq.write_table(pa.table(cols), root / f"part-{f}.parquet")


TARGET = {"poisson": "count", "gamma": "amount", "logistic": "click"}


def _frame(root: str):
    import pyarrow.dataset as ds

    return ds.dataset(root).to_table().to_pandas()


def _features():
    return [f"x{j}" for j in range(D)]


def _glum(root: str, job: str) -> dict:
    from glum import GeneralizedLinearRegressor

    t0 = time.perf_counter()
    df = _frame(root)
    fam = {"poisson": "poisson", "gamma": "gamma", "logistic": "binomial"}[job]
    offset = np.log(df["expo"].to_numpy()) if job == "poisson" else None
    m = GeneralizedLinearRegressor(family=fam, link="log" if job != "logistic" else "logit", alpha=0,
                                   gradient_tol=1e-10).fit(df[_features()], df[TARGET[job]], offset=offset)
    return {"seconds": time.perf_counter() - t0, "coef": m.coef_.tolist(), "b": float(m.intercept_),
            "iterations": int(m.n_iter_)}


def _sklearn(root: str, job: str, solver: str = "lbfgs") -> dict:
    from sklearn.linear_model import GammaRegressor, LogisticRegression, PoissonRegressor

    t0 = time.perf_counter()
    df = _frame(root)
    X, y = df[_features()].to_numpy(), df[TARGET[job]].to_numpy()
    tol = 1e-12 if solver == "newton-cholesky" else 1e-10
    if job == "poisson":  # exposure: the rate y/e with weight e has the same maximum
        e = df["expo"].to_numpy()
        m = PoissonRegressor(alpha=0, tol=tol, max_iter=1000, solver=solver).fit(X, y / e, sample_weight=e)
    elif job == "gamma":
        m = GammaRegressor(alpha=0, tol=tol, max_iter=1000, solver=solver).fit(X, y)
    else:
        m = LogisticRegression(penalty=None, tol=tol, max_iter=1000, solver=solver).fit(X, y)
    coef = np.ravel(m.coef_)
    return {"seconds": time.perf_counter() - t0, "coef": coef.tolist(), "b": float(np.ravel(m.intercept_)[0]),
            "iterations": int(np.ravel(m.n_iter_)[0])}


def _statsmodels(root: str, job: str) -> dict:
    import statsmodels.api as sm

    t0 = time.perf_counter()
    df = _frame(root)
    X = sm.add_constant(df[_features()].to_numpy())
    fam = {"poisson": sm.families.Poisson(), "gamma": sm.families.Gamma(sm.families.links.Log()),
           "logistic": sm.families.Binomial()}[job]
    extra = {"exposure": df["expo"].to_numpy()} if job == "poisson" else {}
    res = sm.GLM(df[TARGET[job]].to_numpy(), X, family=fam, **extra).fit(tol=1e-10)
    return {"seconds": time.perf_counter() - t0, "coef": res.params[1:].tolist(), "b": float(res.params[0]),
            "iterations": int(res.fit_history["iteration"])}


def _dask_ml(root: str, job: str) -> dict:
    import dask.dataframe as dd
    from dask_ml.linear_model import LogisticRegression, PoissonRegression
    from distributed import Client, LocalCluster

    if job != "logistic":  # no offset and no weights (the exposure job), no Gamma family
        return {"skipped": "no offset, sample weights or Gamma family"}
    with LocalCluster(n_workers=2, threads_per_worker=1) as c, Client(c) as client:
        t0 = time.perf_counter()
        # As the logistic section does: the arrays persisted (a persisted DataFrame's
        # repartition lost its dependencies under dask-expr).
        arr = dd.read_parquet(root, columns=_features() + [TARGET[job]]).to_dask_array()
        arr = client.persist(arr)
        arr.compute_chunk_sizes()  # (``lengths=True`` disagreed with dask-expr's partitions: 4 != 8)
        X, y = arr[:, :D], arr[:, D]
        cls = LogisticRegression if job == "logistic" else PoissonRegression
        m = cls(penalty="l2", C=1e12, solver="lbfgs", tol=1e-10, max_iter=1000).fit(X, y)
        return {"seconds": time.perf_counter() - t0, "coef": np.ravel(m.coef_).tolist(), "b": float(m.intercept_),
                "iterations": None}


def _spark(root: str, job: str) -> dict:
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import GeneralizedLinearRegression
    from pyspark.sql import SparkSession, functions as F

    t0 = time.perf_counter()
    spark = SparkSession.builder.master("local[2]").config("spark.driver.memory", "8g").getOrCreate()
    df = spark.read.parquet(root)
    df = VectorAssembler(inputCols=_features(), outputCol="features").transform(df)
    fam = {"poisson": ("poisson", "log"), "gamma": ("gamma", "log"), "logistic": ("binomial", "logit")}[job]
    glr = GeneralizedLinearRegression(family=fam[0], link=fam[1], labelCol=TARGET[job], tol=1e-10, maxIter=100)
    if job == "poisson":
        df = df.withColumn("log_expo", F.log("expo"))
        glr = glr.setOffsetCol("log_expo")
    m = glr.fit(df)
    out = {"seconds": time.perf_counter() - t0, "coef": list(map(float, m.coefficients)), "b": float(m.intercept),
           "iterations": int(m.summary.numIterations)}
    spark.stop()
    return out


def _sklearn_newton(root: str, job: str) -> dict:
    """scikit-learn's Newton solver: its lbfgs stops at its own ftol (about 2e-7 here,
    whatever tol), so this is the scikit-learn model of equal accuracy."""
    return _sklearn(root, job, "newton-cholesky")


PEERS = {"glum": _glum, "sklearn": _sklearn, "sklearn_newton": _sklearn_newton, "statsmodels": _statsmodels,
         "dask_ml": _dask_ml, "spark": _spark}


def _peer(name: str, root: Path, job: str) -> dict | None:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, __file__, name, str(root), job], capture_output=True, text=True)
    if res.returncode != 0:
        if "ModuleNotFoundError" in res.stderr:
            return None
        return {"error": res.stderr.strip().splitlines()[-1][:200]}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t
    return out


def _train(work: Path, root: Path, job: str) -> dict:
    data = {"path": str(root), "target": TARGET[job], "features": _features()}
    if job == "poisson":
        data["exposure"] = "expo"
    run = train_command({"name": f"glm-{job}", "data": data, "model": {"loss": job},
                         "output": {"dir": str(work / f"glm-{job}-out")}}, work / f"glm-{job}.yaml")
    model = run["model"]
    return {"whole_s": run["whole_s"], "train_s": run["train_s"], "passes": model["epochs_run"],
            "converged": model["converged"], "pass_s": run["pass_s"], "digits": model["convergence"]["digits"],
            "coef": model["m"], "b": model["b"]}


def _scan(root: Path) -> float:
    """A warm pyarrow scan of every column the jobs read (the floor a pass is judged by):
    the best of three."""
    import pyarrow.dataset as ds

    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        ds.dataset(root).to_table().to_pandas()
        best = min(best, time.perf_counter() - t)
    return best


def glm(work: Path, quick: bool, peers=tuple(PEERS)) -> dict:
    """The section's figures (``run.py`` prints them)."""
    rows = 200_000 if quick else ROWS
    root = work / f"glm-{rows}"
    write(root, rows)
    out = {"rows": rows, "jobs": {}, "scan_s": _scan(root)}
    for job in JOBS:
        ours = _train(work, root, job)
        row = {"gd_dask": ours, "peers": {}}
        ref = np.append(ours["coef"], ours["b"])
        for name in peers:
            res = _peer(name, root, job)
            if res is not None and "coef" in res:
                theirs = np.append(res["coef"], res["b"])
                res["largest_relative_difference"] = float(np.max(np.abs(theirs - ref) / np.abs(ref).clip(1e-3)))
            row["peers"][name] = res
        out["jobs"][job] = row
    return out


def report(r: dict) -> None:
    print(f"\n## GLM families: {r['rows']:,} rows × {D} features, each tool in a fresh process\n")
    print(f"A warm pyarrow scan of the files: {r['scan_s']:.2f} s. gd-dask's passes (seconds each):")
    for job, row in r["jobs"].items():
        print(f"- {job}: " + ", ".join(f"{s:.2f}" for s in row["gd_dask"]["pass_s"]))
    print()
    print("| job | tool | seconds (whole process) | passes / iterations | coefficients vs gd-dask |")
    print("|---|---|---|---|---|")
    for job, row in r["jobs"].items():
        g = row["gd_dask"]
        what = job + (" with exposure" if job == "poisson" else "")
        print(f"| {what} | **gd-dask train** (defaults; training {g['train_s']:.2f} s, {g['digits']:.1f} digits, "
              f"converged {g['converged']}) | {g['whole_s']:.2f} | {g['passes']} | – |")
        for name, p in row["peers"].items():
            if p is None:
                print(f"| | {name} | not installed | | |")
            elif "coef" not in p:
                print(f"| | {name} | {p.get('skipped') or p.get('error')} | | |")
            else:
                ratio = p["process_s"] / g["whole_s"]
                print(f"| | {name} | {p['process_s']:.2f} ({ratio:.1f} × gd-dask) | {p['iterations']} | "
                      f"{p['largest_relative_difference']:.1e} |")


if __name__ == "__main__":
    print(json.dumps(PEERS[sys.argv[1]](sys.argv[2], sys.argv[3])))
