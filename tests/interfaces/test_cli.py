"""The command end to end, in real subprocesses: make-data, then train."""

import json
import re

from conftest import ROOT, run_cli


def _floats(pattern, text):
    return [float(x) for x in re.findall(pattern, text)]


def test_make_run_learns_m_and_b_close_to_the_true_values(tmp_path):
    data, out = tmp_path / "students", tmp_path / "run"
    made = run_cli("make-data", data, "--rows", "20000", "--days", "3")
    assert made.returncode == 0, made.stderr
    true_m = _floats(r"true m: height_cm=([-\d.e]+)", made.stdout)[0]
    true_b = _floats(r"true b: ([-\d.e]+)", made.stdout)[0]
    assert sorted(p.parent.name for p in data.glob("*/*.parquet"))[0] == "date=2026-11-01"

    trained = run_cli("train", ROOT / "configs/example.yaml", "--set", f"data.path={data}",
                      "--set", f"output.dir={out}", "--set", "cluster.n_workers=1")
    assert trained.returncode == 0, trained.stderr
    m = _floats(r"m: height_cm=([-\d.e]+)", trained.stdout)[0]
    b = _floats(r"; b: ([-\d.e]+)", trained.stdout)[0]
    assert abs(m - true_m) < 0.02 and abs(b - true_b) < 3.0
    assert len(trained.stdout.strip().splitlines()) == 1

    model = json.loads((out / "model.json").read_text())
    assert model["format"] == "gd_dask.model/1" and model["converged"]
    assert model["m"][0] == m or abs(model["m"][0] - m) < 1e-5
    assert model["metrics"]["n"] == 20000 and model["data"]["n_rows"] == 20000
    assert (out / "history.csv").read_text().startswith("epoch,loss,grad_norm,learning_rate,seconds")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_make_data_adds_feature_columns(tmp_path):
    import pyarrow.parquet as pq

    made = run_cli("make-data", tmp_path / "d", "--rows", "100", "--features", "3", "--days", "2",
                   "--files-per-day", "3")
    assert made.returncode == 0, made.stderr
    files = sorted((tmp_path / "d").glob("date=*/part-*.parquet"))
    assert len(files) == 6
    assert pq.read_schema(files[0]).names == ["height_cm", "x1", "x2", "weight_kg"]
    assert "x2=" in made.stdout


def test_a_runtime_error_is_one_line_with_exit_1(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: n\ndata: {{path: {tmp_path}/absent, features: [a], target: y}}\n")
    res = run_cli("train", cfg)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == f"gd-dask: error: data.path '{tmp_path}/absent' does not exist"


def test_main_gives_the_callers_signal_handlers_back(capsys):
    """main() routes SIGINT/SIGTERM to a clean stop while it runs, and only then: it runs
    inside notebooks, orchestrators and this test process too."""
    import signal

    from gd_dask.interfaces.cli import main

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(["config-schema"]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
