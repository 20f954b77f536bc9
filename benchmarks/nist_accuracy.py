"""Certified accuracy: NIST StRD linear regression datasets through `gd-dask train`,
with the default settings (no epochs, no tol in the configs).

Each dataset is written as a multi-file hive-partitioned Parquet dataset, described by a
YAML config and trained by the real command; the saved m, b are compared with NIST's
certified values as LRE = −log10(relative error) (15 ≈ full double precision), next to
numpy.linalg.lstsq on the same design. Run by `make bench`; tests/optimization/test_nist.py asserts
the thresholds.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

NIST = Path(__file__).resolve().parents[1] / "tests" / "reference" / "nist"
DATASETS = ["Norris", "Pontius", "NoInt1", "NoInt2", "Longley",
            "Wampler1", "Wampler2", "Wampler3", "Wampler4", "Wampler5", "Filip"]


def certified() -> dict:
    return json.loads((NIST / "certified.json").read_text())


def lre(est, cert) -> float:
    """Worst (smallest) log relative error over coefficients; absolute when certified is 0."""
    est, cert = np.asarray(est, float), np.asarray(cert, float)
    err = np.abs(est - cert) / np.where(cert == 0, 1.0, np.abs(cert))
    return float(np.clip(-np.log10(np.maximum(err, 1e-16)), 0, 16).min())


def write_dataset(name: str, root: Path, n_files: int = 3) -> dict:
    """Write NIST ``name`` as ``root/date=.../part-*.parquet``; returns the config."""
    df = pd.read_csv(NIST / f"{name}.csv")
    feats = [c for c in df.columns if c != "y"]
    for i, part in enumerate(np.array_split(np.arange(len(df)), n_files)):
        folder = root / f"date=2026-11-{i + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(df.iloc[part], preserve_index=False),
                       folder / "part-0000.parquet")
    cert = certified()[name]
    return {
        "name": name,
        "data": {"path": str(root), "features": feats, "target": "y"},
        "model": {"fit_intercept": cert["intercept"]},
        "cluster": {"n_workers": 1},
        "output": {"dir": str(root.parent / "out")},
    }


def train_dataset(name: str, workdir: Path) -> dict:
    """Run `gd-dask train` on NIST ``name``; returns model.json plus LREs."""
    import yaml

    from gd_dask.interfaces.cli import main

    cfg = write_dataset(name, workdir / "data")
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    logging.disable(logging.INFO)  # the table is the report, not each run's log and result line
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            status = main(["train", str(path)])
    finally:
        logging.disable(logging.NOTSET)
    if status != 0:
        raise RuntimeError(f"gd-dask train failed on {name} (exit {status})")
    model = json.loads((Path(cfg["output"]["dir"]) / "model.json").read_text())
    cert = certified()[name]
    est = ([model["b"]] if cert["intercept"] else []) + model["m"]
    n, p = cert["n_obs"], cert["n_params"]
    sse = model["metrics"]["mse"] * n
    rsd = float(np.sqrt(sse / (n - p)))
    r2 = model["metrics"]["r2"]
    if not cert["intercept"]:
        # NIST's R² for a model without intercept is uncentered: 1 − SSE / Σy².
        y = pd.read_csv(NIST / f"{name}.csv")["y"].to_numpy()
        r2 = float(1 - sse / (y @ y))
    return {"name": name, "lre": lre(est, cert["coef"]), "model": model,
            "residual_sd": rsd, "r2": r2}


def lstsq_lre(name: str) -> float:
    df = pd.read_csv(NIST / f"{name}.csv")
    cert = certified()[name]
    X = df.drop(columns="y").to_numpy()
    if cert["intercept"]:
        X = np.column_stack([np.ones(len(df)), X])
    coef, *_ = np.linalg.lstsq(X, df["y"].to_numpy(), rcond=None)
    return lre(coef, cert["coef"])


def main() -> list[dict]:
    rows = []
    cert = certified()
    for name in DATASETS:
        with tempfile.TemporaryDirectory() as tmp:
            r = train_dataset(name, Path(tmp))
        c = cert[name]
        conv = r["model"]["convergence"]
        rows.append({"dataset": name, "lre_gd_dask": round(r["lre"], 2),
                     "lre_numpy_lstsq": round(lstsq_lre(name), 2),
                     "epochs": r["model"]["epochs_run"], "converged": r["model"]["converged"],
                     "digits": conv["digits"], "refinements": conv["refinements"],
                     "residual_sd": r["residual_sd"], "residual_sd_certified": c["residual_sd"],
                     "r2": r["r2"], "r2_certified": c["r_squared"]})
    print("| dataset | LRE gd-dask | certified digits | converged | LRE numpy lstsq | epochs | refinements "
          "| residual SD (ours / certified) | R² (ours / certified) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['lre_gd_dask']:.2f} | {r['digits']:.2f} | {r['converged']} | "
              f"{r['lre_numpy_lstsq']:.2f} | {r['epochs']} | {r['refinements']} | "
              f"{r['residual_sd']:.12g} / {r['residual_sd_certified']:.12g} | "
              f"{r['r2']:.12g} / {r['r2_certified']:.12g} |")
    return rows


if __name__ == "__main__":
    out = main()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(out, indent=2))
