"""Time to model with each peer, run as its own process: ``python peers.py NAME ROOT K``.

``python peers.py NAME ROOT K D``: the data has D features (8 when not given).
Prints one JSON line: the seconds to a model (reading plus fitting, after the imports)
of K fits in the same process (the first is what a user's fresh process gets, the rest
are warm), and the coefficients [m..., b] of the last. ``time_to_model.py`` runs each
peer in a fresh process and times the whole process as well.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

FEATURES = [f"x{j}" for j in range(8)]


def scan(root):
    import pyarrow.dataset as pads

    pads.dataset(root, format="parquet", partitioning="hive").to_table(columns=[*FEATURES, "y"])
    return None


def duckdb(root):
    """One SQL query of the 54 sums (n, Σx, Σy, Σxxᵀ, Σxy), then the normal equations."""
    import duckdb as ddb

    d = len(FEATURES)
    cols = [*FEATURES, "y"]
    terms = ["count(*)"] + [f"sum({c})" for c in cols]
    terms += [f"sum({cols[i]} * {cols[j]})" for i in range(d + 1) for j in range(i, d + 1) if not (i == j == d)]
    row = ddb.sql(f"select {', '.join(terms)} from read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
                  ).fetchall()[0]
    n, sums, products = row[0], np.array(row[1:d + 2], dtype=float), iter(row[d + 2:])
    G = np.zeros((d + 1, d + 1))  # [X, y]ᵀ[X, y] without yᵀy
    for i in range(d + 1):
        for j in range(i, d + 1):
            if not (i == j == d):
                G[i, j] = G[j, i] = next(products)
    A = np.zeros((d + 1, d + 1))  # [X, 1]ᵀ[X, 1]
    A[:d, :d], A[:d, d], A[d, :d], A[d, d] = G[:d, :d], sums[:d], sums[:d], n
    rhs = np.append(G[:d, d], sums[d])
    return np.linalg.solve(A, rhs)


def pandas_sklearn(root):
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    df = pd.read_parquet(root, columns=[*FEATURES, "y"])
    model = LinearRegression().fit(df[FEATURES], df["y"])
    return np.append(model.coef_, model.intercept_)


def polars_lstsq(root):
    import polars as pl

    df = pl.read_parquet(f"{root}/**/*.parquet", columns=[*FEATURES, "y"], hive_partitioning=False)
    X = df.select(FEATURES).to_numpy()
    X1 = np.column_stack([X, np.ones(len(X))])
    return np.linalg.lstsq(X1, df["y"].to_numpy(), rcond=None)[0]


def spark(root):
    """Spark MLlib LinearRegression, normal equations, local[2] (where pyspark and Java are)."""
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import SparkSession

    session = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    df = VectorAssembler(inputCols=FEATURES, outputCol="features").transform(session.read.parquet(str(root)))
    model = LinearRegression(solver="normal", featuresCol="features", labelCol="y").fit(df)
    return np.append(model.coefficients.toArray(), model.intercept)


def gd_dask(root):
    """gd_dask.train with the defaults, on the embedded cluster, as from Python."""
    import tempfile

    import gd_dask

    with tempfile.TemporaryDirectory() as out:
        model = gd_dask.train({"name": "peer", "data": {"path": str(root), "features": FEATURES, "target": "y"},
                               "output": {"dir": out}}, overrides=["output.checkpoint_every=0"])
    return np.append(model.m, model.b)


PEERS = {"scan": scan, "duckdb": duckdb, "pandas_sklearn": pandas_sklearn, "polars_lstsq": polars_lstsq,
         "spark": spark, "gd_dask": gd_dask}


def main() -> None:
    global FEATURES
    name, root, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if len(sys.argv) > 4:  # the number of features, x0 … x{d−1}
        FEATURES = [f"x{j}" for j in range(int(sys.argv[4]))]
    seconds, coef = [], None
    for _ in range(k):
        t = time.perf_counter()
        coef = PEERS[name](root)
        seconds.append(time.perf_counter() - t)
    print(json.dumps({"seconds": seconds, "coef": None if coef is None else [float(c) for c in coef]}))


if __name__ == "__main__":
    main()
