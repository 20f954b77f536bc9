"""`make bench` section ``categorical``: 8M rows × (4 numeric + `region`, 50 text levels,
+ `store`, 5,000 integer levels) to a least-squares model, each tool in a fresh process:

- gd-dask train, defaults (the whole command and its training seconds);
- pandas + scikit-learn OneHotEncoder(drop="first", sparse) + LinearRegression;
- statsmodels' formula ``C()`` and glum where they fit / are installed (a dense
  8M × 5,053 design is 320 GB: statsmodels is skipped at this size and said so);
- Spark's StringIndexer + OneHotEncoder + LinearRegression where pyspark is installed
  (its normal-equation solver takes at most 4,096 features, so ``auto`` picks L-BFGS
  here; asked for tol 1e-10).

Each peer's slopes are compared with gd-dask's."""

from __future__ import annotations

import json
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


def _sklearn(root: str) -> dict:
    import pandas as pd
    import pyarrow.dataset as ds
    import scipy.sparse as sp
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import OneHotEncoder

    t0 = time.perf_counter()
    df: pd.DataFrame = ds.dataset(root).to_table().to_pandas()
    E = OneHotEncoder(drop="first", sparse_output=True).fit_transform(df[["region", "store"]])
    X = sp.hstack([sp.csr_matrix(df[[f"x{j}" for j in range(4)]].to_numpy()), E]).tocsr()
    lr = LinearRegression().fit(X, df["y"].to_numpy())
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


def _peer(name: str, root: Path) -> dict | None:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, __file__, name, str(root)], capture_output=True, text=True)
    if res.returncode != 0:
        if "ModuleNotFoundError" in res.stderr:
            return None
        return f"failed: {res.stderr.strip().splitlines()[-1][:200]}"
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t
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
    return out


def report(r: dict) -> None:
    g = r["gd_dask"]
    print(f"\n## Categorical features: {r['rows']:,} rows × (4 numeric + 50 text + 5,000 integer levels)\n")
    print("| tool | seconds (whole process) | slopes vs gd-dask |\n|---|---|---|")
    print(f"| **gd-dask train** (defaults; training {g['train_s']:.2f} s, {g['digits']:.1f} digits, "
          f"converged {g['converged']}) | {g['whole_s']:.2f} | – |")
    for name, p in r["peers"].items():
        if isinstance(p, str) or p is None:
            print(f"| {name} | {p or 'not installed'} | |")
        else:
            print(f"| {name} | {p['process_s']:.2f} | {p['largest_slope_difference']:.1e} |")


if __name__ == "__main__":
    print(json.dumps({"sklearn": _sklearn, "glum": _glum, "spark": _spark}[sys.argv[1]](sys.argv[2])))
