"""``converged`` means the coefficients are right: the certified bound never understates
the true error, defaults reach tol, ``tol: 0`` runs every epoch, refinement goes past the
float64 floor.

The references are exact, not another solver's answer. Most problems are built so that
their least-squares solution is known exactly: integer features and coefficients (so
``y`` is exact in float64) and rows in pairs with the same x and weight and noise +s and
−s, which cancels in every normal equation. Ridge problems are solved in exact rational
arithmetic (``fractions``).
"""

from __future__ import annotations

from fractions import Fraction
from functools import reduce

import numpy as np
import pytest
from conftest import ROOT, make_config, write_parquet

from gd_dask.config import validate_config
from gd_dask.jobs.training import fit, fit_moments
from gd_dask.kernels import compensated
from gd_dask.kernels.exact_gram import add_exact_gram, exact_gram
from gd_dask.kernels.moments import block_moments
from gd_dask.optimization.certify import ZERO_FLOOR
from gd_dask.sizes import SLICE_ROWS


def paired_problem(rng, n_pairs, d, kappa, offset, fit_intercept=True, weighted=False):
    """Integer data with a known exact solution (module docstring). ``kappa``: about the
    condition number of the standardized Hessian (a factor shared by all columns, some
    √κ times their own spread); ``offset``: feature means over their spread."""
    spread = int(rng.integers(1, 4))
    root = max(1.0, np.sqrt(kappa / (2.5 * d)))
    for _ in range(4):  # calibrate the shared factor to the κ asked for
        shared = rng.integers(-int(root) * spread, int(root) * spread + 1, size=n_pairs)
        X = np.empty((n_pairs, d))
        for j in range(d):
            own = rng.integers(-spread * 4, spread * 4 + 1, size=n_pairs)
            X[:, j] = shared * (j % 2 * 2 - 1) + own + int(offset * spread * rng.uniform(0.5, 1.0)) * (j + 1)
        got = condition(X, fit_intercept)
        if d == 1 or 0.3 < got / kappa < 3:
            break
        root = max(1.0, root * np.sqrt(kappa / got))
    m = rng.integers(1, 1024, size=d) * rng.choice([-1, 1], size=d)
    b = int(rng.integers(1, 2**20)) * int(rng.choice([-1, 1])) if fit_intercept else 0
    s = rng.integers(0, 2**12, size=n_pairs)
    base = X @ m + b
    X2 = np.vstack([X, X])
    y = np.concatenate([base + s, base - s]).astype(float)
    w = np.tile(rng.integers(1, 5, size=n_pairs), 2).astype(float) if weighted else None
    assert np.abs(X2).max() < 2**31 and np.abs(y).max() < 2**52  # exact in float64
    return X2, y, w, m.astype(float), float(b)


def condition(X, fit_intercept):
    """κ of the standardized Hessian (NumPy, for calibration only)."""
    Xs = (X - X.mean(0)) / X.std(0) if fit_intercept else X / np.sqrt((X ** 2).mean(0))
    ev = np.linalg.eigvalsh(Xs.T @ Xs / len(X))
    return ev[-1] / max(ev[0], 1e-300)


def relative_errors(m, b, m_true, b_true, X, w, fit_intercept):
    """Each coefficient's error relative to itself, or (if far smaller) to ZERO_FLOOR ×
    the largest standardized slope — the definition ``certify`` documents."""
    w = np.ones(len(X)) if w is None else w
    mean = w @ X / w.sum()
    var = w @ (X - mean) ** 2 / w.sum() if fit_intercept else w @ X**2 / w.sum()
    floor = ZERO_FLOOR * np.max(np.abs(m_true) * np.sqrt(var))
    errs = [abs(mj - tj) * np.sqrt(vj) / max(abs(tj) * np.sqrt(vj), floor)
            for mj, tj, vj in zip(m, m_true, var)]
    if fit_intercept:
        errs.append(abs(b - b_true) / max(abs(b_true), floor))
    return max(errs)


def in_memory_fit(X, y, w=None, **sections):
    """``fit_moments`` with refinement passes over the rows in memory: the client side
    of the real path (the moments and the passes are what a cluster would return):
    unweighted, the exact Gram matrix of 8,192-row slices; weighted, the residuals."""
    Z = np.column_stack([X, y] + ([w] if w is not None else []))
    mom = block_moments(Z, weighted=w is not None)
    raw = {"name": "t", "data": {"path": "unused", "features": [f"x{j}" for j in range(X.shape[1])],
                                 "target": "y", "weight": "w" if w is not None else None}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    cfg = validate_config(raw)

    gram = None if w is not None else reduce(
        add_exact_gram, [exact_gram(Z[i:i + SLICE_ROWS], mom.mean) for i in range(0, len(Z), SLICE_ROWS)])

    def refine_pass(m_hi, m_lo, b_hi, b_lo):
        if gram is not None:
            return gram.point_gradient(m_hi, m_lo, b_hi, b_lo)
        return compensated.point_gradient(compensated.refine_sums(Z, m_hi, m_lo, b_hi, b_lo, weighted=True))

    return fit_moments(cfg, mom, refine_pass=refine_pass)


def _cases():
    """220 problems: κ log-uniform up to 1e6, and 8 between 1e7 and 1e8 (each costs
    about √κ·50 gram epochs); feature means up to 1e6 × their spread (with an intercept:
    without one such means make κ astronomical, as they should)."""
    rng = np.random.default_rng(20261127)
    cases = []
    for i in range(220):
        d = int(rng.choice([1, 2, 3, 5, 8, 20, 50], p=[.2, .2, .2, .15, .13, .08, .04]))
        fit_intercept = bool(rng.random() < 0.8)
        kappa = 10 ** (rng.uniform(7, 8) if i % 27 == 26 else rng.uniform(0, 6))
        offset = float(10 ** rng.uniform(0, 6)) if fit_intercept and rng.random() < 0.5 else 0.0
        cases.append(dict(seed=i, d=d, kappa=kappa, offset=offset, fit_intercept=fit_intercept,
                          weighted=bool(rng.random() < 0.3)))
    return cases


def _exact_case(case: dict) -> tuple:
    """One of ``_cases``: (case, true relative error, convergence, converged, κ)."""
    rng = np.random.default_rng(case["seed"])
    X, y, w, m_true, b_true = paired_problem(rng, max(3 * case["d"], 30), case["d"], case["kappa"],
                                             case["offset"], case["fit_intercept"], case["weighted"])
    res = in_memory_fit(X, y, w, model={"fit_intercept": case["fit_intercept"]})
    err = relative_errors(res.m, res.b, m_true, b_true, X, w, case["fit_intercept"])
    return case, err, res.convergence, res.converged, res.curvature.condition


def test_the_bound_never_understates_the_error_on_220_exact_problems():
    """κ from 1 to ~1e8, feature means up to 1e6 × their spread, d up to 50, with and
    without intercept and weights: defaults only. Every run converges, and the true
    error is at most the reported bound every time. (On every core: 2 minutes on one.)"""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    seen = {"kappa": [], "refined": 0}
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for case, err, conv, converged, kappa in pool.map(_exact_case, _cases()):
            assert conv["bound"] is not None and err <= conv["bound"], (case, err, conv)
            assert converged and conv["bound"] <= 1e-9, (case, conv)
            seen["kappa"].append(kappa)
            seen["refined"] += conv["refinements"] > 0
    assert max(seen["kappa"]) > 1e7 and min(seen["kappa"]) < 10 and seen["refined"] >= 10


def ridge_reference(X, y, w, l2, fit_intercept):
    """The ridge solution in exact rational arithmetic: ½·weighted MSE + (l2/2)·‖m_s‖²
    with m_s = σ·m (σ² the population variance, or mean square without intercept)."""
    n, d = X.shape
    F = Fraction
    w = np.ones(n) if w is None else w
    W = sum(F(v) for v in w)
    Xf = [[F(v) for v in row] for row in X]
    yf, wf = [F(v) for v in y], [F(v) for v in w]
    mean = [sum(wf[i] * Xf[i][j] for i in range(n)) / W for j in range(d)] if fit_intercept else [F(0)] * d
    ym = sum(wf[i] * yf[i] for i in range(n)) / W if fit_intercept else F(0)
    C = [[x - mj for x, mj in zip(row, mean)] for row in Xf]
    A = [[sum(wf[i] * C[i][j] * C[i][k] for i in range(n)) / W for k in range(d)] for j in range(d)]
    rhs = [sum(wf[i] * C[i][j] * (yf[i] - ym) for i in range(n)) / W for j in range(d)]
    for j in range(d):
        A[j][j] += F(l2) * A[j][j]  # l2·σ_j², and σ_j² is exactly the diagonal
    for c in range(d):  # Gauss-Jordan, exact
        p = next(r for r in range(c, d) if A[r][c] != 0)
        A[c], A[p], rhs[c], rhs[p] = A[p], A[c], rhs[p], rhs[c]
        for r in range(d):
            if r != c and A[r][c] != 0:
                f = A[r][c] / A[c][c]
                A[r] = [a - f * b for a, b in zip(A[r], A[c])]
                rhs[r] -= f * rhs[c]
    m = [rhs[j] / A[j][j] for j in range(d)]
    b = ym - sum(mj * xm for mj, xm in zip(m, mean))
    return np.array([float(v) for v in m]), float(b)


@pytest.mark.parametrize("seed", range(12))
def test_the_bound_holds_with_ridge_against_exact_rational_arithmetic(seed):
    rng = np.random.default_rng(1000 + seed)
    d = int(rng.integers(1, 4))
    fit_b, weighted = bool(seed % 3), bool(seed % 2)
    X, y, w, _, _ = paired_problem(rng, 12, d, float(10 ** rng.uniform(0, 5)),
                                   float(10 ** rng.uniform(0, 5)) if fit_b else 0.0, fit_b, weighted)
    l2 = float(10 ** rng.uniform(-4, 0))
    res = in_memory_fit(X, y, w, model={"fit_intercept": fit_b, "l2": l2})
    m_true, b_true = ridge_reference(X, y, w, l2, fit_b)
    err = relative_errors(res.m, res.b, m_true, b_true, X, w, fit_b)
    assert res.converged and err <= res.convergence["bound"] <= 1e-9


def test_tol_zero_runs_exactly_the_epochs_asked_for(client, tmp_path, rng):
    X = rng.normal(size=(500, 2))
    y = X @ [1.0, -2.0] + 0.5 + rng.normal(size=500)
    data = write_parquet(tmp_path / "d", X, y)
    for strategy in ("gram", "stream"):
        res = fit(make_config(data, tmp_path, optimizer={"tol": 0, "epochs": 60, "strategy": strategy}), client)
        assert res.epochs_run == 60 and len(res.history) == 60 and not res.converged
        assert res.convergence["refinements"] == 0 and res.convergence["bound"] is not None


def test_a_wampler_like_problem_is_refined_past_the_float64_floor_on_the_cluster(client, tmp_path):
    """x…x⁵ on 0…20 (Wampler1's design, κ ≈ 3e6 standardized): the float64 gradient
    stalls near 7 digits; refinement passes on the workers, from the files, in
    double-double, certify 9."""
    x = np.arange(21.0)
    X = np.column_stack([x ** k for k in range(1, 6)])
    y = 1 + X.sum(axis=1)
    data = write_parquet(tmp_path / "d", X, y, n_files=3)
    res = fit(make_config(data, tmp_path), client)
    conv = res.convergence
    assert res.converged and conv["refinements"] >= 1 and conv["digits"] >= 9, conv
    err = max(np.abs(res.m - 1).max(), abs(res.b - 1))
    assert err <= conv["bound"]


def test_stream_stalls_at_its_floor_and_refines_too(client, tmp_path):
    """NIST Pontius (y ≈ 1e-4·x, x up to 3e6, x²): float64 row sums stall below 9
    digits; the stream strategy refines with the same passes and certifies them."""
    import json

    import pandas as pd

    nist = ROOT / "tests" / "reference" / "nist"
    df = pd.read_csv(nist / "Pontius.csv")
    cert = json.loads((nist / "certified.json").read_text())["Pontius"]["coef"]
    data = write_parquet(tmp_path / "d", df[["x1", "x2"]].to_numpy(), df["y"].to_numpy(), n_files=3)
    res = fit(make_config(data, tmp_path, optimizer={"strategy": "stream"}), client)
    conv = res.convergence
    assert res.strategy == "stream" and res.converged and conv["refinements"] >= 1, conv
    err = max(abs(v - c) / abs(c) for v, c in zip([res.b, *res.m], cert))
    assert err <= conv["bound"] <= 1e-9


def test_refine_zero_reports_the_floor_honestly(client, tmp_path):
    x = np.arange(21.0)
    X = np.column_stack([x ** k for k in range(1, 6)])
    y = 1 + X.sum(axis=1)
    data = write_parquet(tmp_path / "d", X, y, n_files=3)
    res = fit(make_config(data, tmp_path, optimizer={"refine": 0}), client)
    conv = res.convergence
    assert not res.converged and conv["refinements"] == 0 and conv["bound"] > 1e-9
    err = max(np.abs(res.m - 1).max(), abs(res.b - 1))
    assert err <= conv["bound"]


def test_compensated_gradient_is_exact_where_float64_is_not():
    """The refinement pass's gradient against exact rational arithmetic, at a point
    where float64 residuals lose every digit (y ≈ 1e15, residuals ≈ 1)."""
    rng = np.random.default_rng(7)
    X = rng.integers(-1000, 1000, size=(300, 3)).astype(float) + 1e6
    y = X @ [3.0, 5.0, 7.0] + rng.integers(-3, 4, size=300) + 1e12
    m = np.array([3.0, 5.0, 7.0]) + np.array([1e-9, -2e-9, 3e-10])
    b = 1e12 + 0.25
    s = compensated.add_refine(compensated.refine_sums(np.column_stack([X, y])[:150], m, np.zeros(3), b, 0.0),
                               compensated.refine_sums(np.column_stack([X, y])[150:], m, np.zeros(3), b, 0.0))
    F = Fraction
    r = [sum(F(xv) * F(mv) for xv, mv in zip(row, m)) + F(b) - F(yv) for row, yv in zip(X, y)]
    exact_x = [sum(F(X[i, j]) * r[i] for i in range(300)) for j in range(3)]
    got = [F(h) + F(lo) for h, lo in zip(s.gx_hi, s.gx_lo)]
    for e, gv in zip(exact_x, got):
        assert abs(float((gv - e) / e)) < 1e-25
    assert abs(float(F(s.g1_hi) + F(s.g1_lo) - sum(r))) <= 1e-20 * abs(float(sum(r)))


def test_a_real_data_set_reaches_tol_against_lstsq(client, tmp_path):
    """scikit-learn's diabetes data (442 × 10, shipped with the package): default
    settings claimed converged at 3.5 correct digits before; now every coefficient is
    within the bound of numpy's least-squares solution (itself good to ~1e-14 here)."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    data = write_parquet(tmp_path / "d", X, y, n_files=3)
    res = fit(make_config(data, tmp_path), client)
    coef, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)
    err = max(np.max(np.abs(res.m - coef[:-1]) / np.abs(coef[:-1])), abs(res.b - coef[-1]) / abs(coef[-1]))
    assert res.converged and err <= res.convergence["bound"] + 1e-13 and res.convergence["bound"] <= 1e-9


def _long_double_solution(files, d: int, fit_intercept: bool = True):
    """Least squares from moments accumulated in long double over 8,192-row slices
    (each entry's error below 1e-18 relative), solved exactly (Fractions)."""
    import pyarrow.parquet as pq

    L = np.longdouble
    blocks = [np.column_stack([c.to_numpy() for c in pq.read_table(f).columns]) for f in files]
    n = sum(len(b) for b in blocks)
    mean = sum(b.astype(L).sum(axis=0) for b in blocks) / L(n)
    C = np.zeros((d + 1, d + 1), dtype=L)
    for b in blocks:
        for lo in range(0, len(b), 8192):
            z = b[lo:lo + 8192].astype(L) - mean
            C += np.einsum("ij,ik->jk", z, z)
    F = [[Fraction(float(C[i, j])) + Fraction(float(C[i, j] - L(float(C[i, j])))) for j in range(d + 1)]
         for i in range(d + 1)]
    A = [row[:d] + [row[d]] for row in F[:d]]  # [Cxx | Cxy]
    for j in range(d):  # Gauss-Jordan, exact
        p = next(i for i in range(j, d) if A[i][j] != 0)
        A[j], A[p] = A[p], A[j]
        A[j] = [v / A[j][j] for v in A[j]]
        for i in range(d):
            if i != j and A[i][j] != 0:
                A[i] = [a - A[i][j] * c for a, c in zip(A[i], A[j])]
    m = np.array([float(A[j][d]) for j in range(d)])
    mf = [A[j][d] for j in range(d)]
    mu = [Fraction(float(v)) + Fraction(float(v - L(float(v)))) for v in mean]
    b = float(mu[d] - sum(mj * muj for mj, muj in zip(mf, mu[:d])))
    return m, b


@pytest.mark.parametrize("kappa", [1.0, 1e3])
def test_the_bound_holds_on_two_million_rows_and_certifies_in_one_pass_on_well_conditioned_data(
        threads, tmp_path, kappa):
    """The moments of 2M rows (244 slices, merged across 8 chunks) against a long-double
    reference (good to about 3e-15 here): the bound on the float64 solution (the first
    pass's, no refinement) is never below its error, and on κ = 1 data it certifies
    1e-10 at defaults."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gd_dask.jobs.training import fit

    rng = np.random.default_rng(7)
    d, per_file, files = 4, 250_000, 8
    mix = np.linalg.qr(rng.normal(size=(d, d)))[0] @ np.diag(np.geomspace(1, np.sqrt(kappa), d))
    m_true = np.array([1.5, -0.7, 0.05, 2.0])
    paths = []
    for f in range(files):
        X = rng.normal(size=(per_file, d)) @ mix.T * [0.5, 3.0, 1.0, 2.0] + [-2.0, 5.0, 100.0, 0.3]
        y = X @ m_true + 3.0 + rng.normal(size=per_file)
        path = tmp_path / "d" / f"part-{f}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(d)}, "y": y}), path)
        paths.append(path)
    data = {"path": str(tmp_path / "d"), "features": [f"x{j}" for j in range(d)], "target": "y"}
    res = fit(make_config(data, tmp_path, optimizer={} if kappa == 1.0 else {"refine": 0}), threads)
    m_ref, b_ref = _long_double_solution(paths, d)
    err = max(float(np.max(np.abs(res.m - m_ref) / np.abs(m_ref))), abs(res.b - b_ref) / abs(b_ref))
    assert err <= res.convergence["bound"], (err, res.convergence)
    if kappa == 1.0:
        assert res.converged
        assert res.convergence["bound"] <= 1e-10 and res.convergence["refinements"] == 0, res.convergence
