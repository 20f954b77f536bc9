"""Issue 29: files that are not what they seem — a named pipe among the data, a model
that overflows or is built to exhaust the reader, a statistics cache that was damaged."""

import json
import logging
import os
from pathlib import Path

import pytest

from conftest import run_cli, write_parquet
from gd_dask.artifacts.registry import Registry
from nights import config, night, write_night


@pytest.fixture
def trained(tmp_path, rng):
    X = rng.normal(size=(400, 2))
    data = write_parquet(tmp_path / "d", X, X @ [1.0, 2.0] + rng.normal(size=400), n_files=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "h", "data": data, "output": {"dir": str(tmp_path / "out")}}))
    res = run_cli("train", cfg)
    assert res.returncode == 0, res.stderr
    return data, next((tmp_path / "out").rglob("model.json"))


def test_a_named_pipe_among_the_data_is_refused_by_name_before_it_is_opened(tmp_path, trained):
    data, model = trained
    fifo = next(Path(data["path"]).glob("date=*")) / "part-9999.parquet"
    os.mkfifo(fifo)
    for args in (["train", tmp_path / "c.yaml"], ["evaluate", model, data["path"]]):
        res = run_cli(*args, timeout=60)  # opening it would wait for a writer: all night
        assert res.returncode == 1 and "part-9999.parquet is not a regular file" in res.stderr, res.stderr


def _tampered(model: Path, tmp_path, **changes) -> Path:
    doc = json.loads(model.read_text())
    doc.update(changes)
    out = tmp_path / "tampered.json"
    out.write_text(json.dumps(doc))
    return out


def test_a_model_whose_predictions_overflow_is_an_error_naming_it_and_the_file(tmp_path, trained):
    data, model = trained
    huge = _tampered(model, tmp_path, m=[1e308, 1e308])
    res = run_cli("predict", huge, data["path"], tmp_path / "preds")
    assert res.returncode == 1 and "overflow" in res.stderr and str(huge) in res.stderr, res.stderr
    assert ".parquet" in res.stderr.strip().splitlines()[-1] and not (tmp_path / "preds").exists()
    res = run_cli("evaluate", huge, data["path"])
    assert res.returncode == 1 and "overflow" in res.stderr and str(huge) in res.stderr
    assert "Warning" not in res.stderr and "overflow" in res.stderr.strip().splitlines()[-1], res.stderr


@pytest.mark.parametrize("kind", ["deep", "large", "features"])
def test_hostile_model_files_are_refused_in_one_line_naming_them(tmp_path, trained, kind):
    data, model = trained
    bad = tmp_path / "bad.json"
    if kind == "deep":
        bad.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "large":
        with open(bad, "w") as fh:
            fh.write('{"format": 1, "pad": "')
            fh.write("0" * (65 << 20))
            fh.write('"}')
    else:
        doc = json.loads(model.read_text())
        doc["features"] = [f"f{i}" for i in range(1_000_001)]
        bad.write_text(json.dumps(doc))
    res = run_cli("evaluate", bad, data["path"])
    line = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and str(bad) in line and "refused" in line and "Traceback" not in res.stderr, res.stderr


def _damage(reg: Registry, how) -> int:
    """Apply ``how`` to every entry of every statistics-cache object; returns how many."""
    count = 0
    for path in Path(reg.root, "stats").glob("*.json"):
        doc = json.loads(path.read_text())
        for entry in doc["files"].values():
            how(entry["moments"])
            count += 1
        path.write_text(json.dumps(doc))
    return count


def _flip_a_bit(m):
    import base64

    raw = bytearray(base64.b64decode(m["mean"]))
    raw[3] ^= 0x10
    m["mean"] = base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("how", [_flip_a_bit, lambda m: m.update(n=m["n"] * 2),
                                 lambda m: m.update(mean=m["mean"][:12]), lambda m: m.update(comoment="oops")],
                         ids=["bit", "n doubled", "short mean", "string"])
def test_a_damaged_cache_entry_is_dropped_and_recomputed(tmp_path, threads, how, caplog):
    from gd_dask.jobs.refit import refit

    cfg = config(tmp_path)
    for day in range(5):
        write_night(tmp_path / "data", day, 0.5)
    for day in range(4):
        refit(cfg, threads, night(day))
    clean = tmp_path / "clean"
    cfg_clean = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"dir": str(clean)})})
    for day in range(5):
        refit(cfg_clean, threads, night(day))
    reg = Registry(cfg.registry.dir, cfg.name)
    assert _damage(reg, how) >= 3
    with caplog.at_level(logging.WARNING, logger="gd_dask.artifacts.stats_cache"):
        out = refit(cfg, threads, night(4))
    assert out.status == "promoted", out.message
    assert "damaged" in caplog.text and "recomputed" in caplog.text
    ref = Registry(str(clean), cfg.name).current_model()
    got = reg.current_model()
    assert got["m"] == ref["m"] and got["b"] == ref["b"]  # the bits of a refit that never saw the damage


def test_a_file_replaced_mid_run_with_the_same_size_and_rows_is_named(tmp_path, rng, threads):
    """optimizer.cache: none reads every file every epoch: a file swapped at epoch 5 for
    another of the same size and row count gave a model that matched neither."""
    from conftest import make_config
    from gd_dask.errors import DataError
    from gd_dask.jobs.training import fit

    X = rng.normal(size=(600, 2))
    data = write_parquet(tmp_path / "d", X, X @ [1.0, 2.0] + rng.normal(size=600), n_files=3)
    cfg = make_config(data, tmp_path,
                      optimizer={"strategy": "stream", "cache": "none", "epochs": 40, "tol": 0.0,
                                 "learning_rate": 0.1},
                      output={"checkpoint_every": 0})
    victim = sorted(Path(data["path"]).rglob("*.parquet"))[1]
    other = tmp_path / "other.parquet"
    import pyarrow.parquet as pq

    t = pq.read_table(victim)
    pq.write_table(t.set_column(0, "x0", pa_neg(t.column("x0"))), other)
    assert other.stat().st_size == victim.stat().st_size

    def swap(row):
        if row["epoch"] == 5:
            os.replace(other, victim)

    with pytest.raises(DataError, match=rf"{victim.name}: changed during the run \(.*inode"):
        fit(cfg, threads, on_epoch=swap)


def pa_neg(col):
    import pyarrow.compute as pc

    return pc.negate(col)
