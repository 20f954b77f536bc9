"""Early stopping on a seeded validation split, against a plain NumPy reference."""

import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import make_config, run_cli, write_parquet
from gd_dask.data import holdout_rows, open_source, read_block
from gd_dask.optimization.descent import LoopState, state_from_dict, state_to_dict
from gd_dask.jobs.training import fit

FRACTION, SEED, PATIENCE, LR = 0.3, 11, 5, 0.1


def _overfitting_problem(seed=0, n=120, d=40):
    """Few rows, many features, much noise: the validation loss falls for ~15 epochs of
    plain descent, then rises as the fit follows the noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X[:, :5] @ [2.0, -2.0, 1.5, 1.0, -1.0] + rng.normal(scale=3.0, size=n)
    return X, y


def _held_out(root: Path) -> np.ndarray:
    """The split as the spec defines it: per file (in path order), row i is held out when
    holdout_rows(seed, crc32(path below root), i) says so."""
    masks = []
    for f in sorted(root.rglob("*.parquet")):
        n = pq.ParquetFile(f).metadata.num_rows
        masks.append(holdout_rows(SEED, zlib.crc32(f.relative_to(root).as_posix().encode()), 0, n, FRACTION))
    return np.concatenate(masks)


def numpy_early_stopping(X, y, held, lr, patience, max_epochs):
    """Plain descent on the training rows (standardized by their own mean and std);
    stop after ``patience`` epochs without a lower validation MSE; return the best."""
    Xt, yt, Xv, yv = X[~held], y[~held], X[held], y[held]
    center, scale = Xt.mean(0), Xt.std(0)
    Xs, Xvs = (Xt - center) / scale, (Xv - center) / scale
    m, b = np.zeros(X.shape[1]), 0.0
    best, best_mb, best_epoch, waiting = None, None, 0, 0
    for epoch in range(1, max_epochs + 1):
        val = np.mean((Xvs @ m + b - yv) ** 2)
        if best is None or val < best:
            best, best_mb, best_epoch, waiting = val, (m.copy(), b), epoch, 0
        else:
            waiting += 1
            if waiting >= patience:
                break
        err = Xs @ m + b - yt
        m, b = m - lr * (Xs.T @ err) / len(yt), b - lr * err.mean()
    m, b = best_mb
    return m / scale, b - center @ (m / scale), best_epoch, epoch, best


@pytest.mark.parametrize("strategy", ["gram", "stream"])
def test_early_stopping_keeps_the_best_epoch_of_a_plain_numpy_loop(client, tmp_path, strategy):
    X, y = _overfitting_problem()
    data = write_parquet(tmp_path / "d", X, y, n_files=3)
    cfg = make_config(data, tmp_path, optimizer={
        "learning_rate": LR, "epochs": 500, "tol": 0, "strategy": strategy, "seed": SEED,
        "validation_fraction": FRACTION, "n_iter_no_change": PATIENCE})
    res = fit(cfg, client)
    held = _held_out(tmp_path / "d")
    m_ref, b_ref, best_epoch, stop_epoch, best_val = numpy_early_stopping(X, y, held, LR, PATIENCE, 500)

    assert 5 < best_epoch < 100  # the reference really overfits: the test can fail
    v = res.validation
    assert v["stopped_early"] and v["best_epoch"] == best_epoch and res.epochs_run == stop_epoch
    assert v["rows"] == held.sum() and res.metrics["n"] == (~held).sum()
    assert v["best_loss"] == pytest.approx(best_val, rel=1e-10)
    np.testing.assert_allclose(res.m, m_ref, rtol=1e-9, atol=1e-12)
    assert res.b == pytest.approx(b_ref, rel=1e-9)
    assert v["metrics"]["mse"] == pytest.approx(best_val, rel=1e-10)  # the kept model is the best one
    assert [h["val_loss"] for h in res.history][best_epoch - 1] == pytest.approx(best_val, rel=1e-10)


def test_the_split_does_not_depend_on_chunking_and_holds_the_fraction(tmp_path, rng):
    X = rng.normal(size=(40_000, 2))
    data = write_parquet(tmp_path / "d", X, X[:, 0], n_files=3, row_group_rows=1_000)
    cfg = make_config(data, tmp_path).data

    def validation_rows(chunk_bytes):
        src = open_source(cfg, chunk_bytes=chunk_bytes)
        _, val = src.split(SEED, 0.2)
        return len(src.chunks), np.concatenate([read_block(*val.read_args(p)) for p in val.chunks])

    n_small, small = validation_rows(2**12)  # one row group per chunk
    n_big, big = validation_rows(2**30)  # the three files packed in one task
    assert n_small > n_big == 1
    np.testing.assert_array_equal(small, big)
    assert len(small) / 40_000 == pytest.approx(0.2, abs=0.01)
    other_seed = holdout_rows(SEED + 1, 123, 0, 40_000, 0.2)
    assert not np.array_equal(other_seed, holdout_rows(SEED, 123, 0, 40_000, 0.2))
    train_rows = sum(len(read_block(*t.read_args(p))) for t in [open_source(cfg).split(SEED, 0.2)[0]]
                     for p in t.chunks)
    assert train_rows + len(small) == 40_000


def test_gram_and_stream_agree_and_reruns_are_identical(client, tmp_path):
    X, y = _overfitting_problem(seed=1)
    data = write_parquet(tmp_path / "d", X, y, n_files=2)
    opt = {"learning_rate": LR, "epochs": 500, "tol": 0, "seed": SEED,
           "validation_fraction": FRACTION, "n_iter_no_change": PATIENCE}
    gram = fit(make_config(data, tmp_path, optimizer={**opt, "strategy": "gram"}), client)
    again = fit(make_config(data, tmp_path, optimizer={**opt, "strategy": "gram"}), client)
    stream = fit(make_config(data, tmp_path, optimizer={**opt, "strategy": "stream"}), client)
    assert again.m.tobytes() == gram.m.tobytes() and again.validation == gram.validation
    assert stream.validation["best_epoch"] == gram.validation["best_epoch"]
    np.testing.assert_allclose(stream.m, gram.m, rtol=1e-9)


def test_early_stopping_state_survives_a_checkpoint():
    state = LoopState.start(np.array([1.0, 2.0], dtype=np.longdouble) / 3)
    state.best_params, state.best_val, state.best_epoch, state.waiting = state.params * 2, 0.5, 7, 3
    back = state_from_dict(state_to_dict(state))
    assert np.array_equal(back.best_params, state.best_params) and back.best_params.dtype == np.longdouble
    assert (back.best_val, back.best_epoch, back.waiting, back.stopped_early) == (0.5, 7, 3, False)


def test_cli_writes_the_validation_curve_and_summary(tmp_path):
    X, y = _overfitting_problem()
    data = write_parquet(tmp_path / "d", X, y, n_files=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: es\ndata: {{path: {data['path']}, features: [{', '.join(data['features'])}], target: y}}\n"
                   f"optimizer: {{learning_rate: {LR}, validation_fraction: {FRACTION}, seed: {SEED}}}\n"
                   f"output: {{dir: {tmp_path / 'out'}}}\n")
    r = run_cli("train", cfg, "--no-plot")
    assert r.returncode == 0, r.stderr
    assert "stopped early" in r.stdout
    header = (tmp_path / "out" / "history.csv").read_text().splitlines()[0]
    assert header.endswith(",val_loss")
    import json

    doc = json.loads((tmp_path / "out" / "model.json").read_text())
    assert doc["validation"]["stopped_early"] and doc["validation"]["metrics"]["mse"] > 0


def test_refit_refuses_a_validation_split(tmp_path):
    X, y = _overfitting_problem()
    data = write_parquet(tmp_path / "d", X, y, n_files=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: es\ndata: {{path: {data['path']}, features: [{', '.join(data['features'])}], target: y}}\n"
                   f"optimizer: {{validation_fraction: 0.2}}\nregistry: {{dir: {tmp_path / 'reg'}}}\n")
    r = run_cli("refit", cfg, "--as-of", "2026-11-02")
    assert r.returncode == 2 and "validation_fraction" in r.stderr


def test_sweep_stops_early_at_the_reference_epoch(client, tmp_path):
    """sweep trains every rate from one moments pass (fit_moments) and validates too."""
    from gd_dask.jobs.sweep import sweep

    X, y = _overfitting_problem()
    data = write_parquet(tmp_path / "d", X, y, n_files=3)
    cfg = make_config(data, tmp_path, optimizer={
        "epochs": 500, "tol": 0, "seed": SEED, "validation_fraction": FRACTION, "n_iter_no_change": PATIENCE})
    (row,) = sweep(cfg, client, [LR])
    _, _, _, stop_epoch, _ = numpy_early_stopping(X, y, _held_out(tmp_path / "d"), LR, PATIENCE, 500)
    assert row["status"] == "stopped early" and row["epochs"] == stop_epoch
