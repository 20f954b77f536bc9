"""Everyday use: evaluate, predict, load_model, pictures, sweep, the config schema."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from conftest import ROOT, write_parquet
from gd_dask import load_model
from gd_dask.interfaces.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("everyday")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(900, 3)) + [10, -5, 0]
    y = X @ [0.5, -2.0, 1.0] + 7 + rng.normal(size=900)
    data = write_parquet(tmp / "d", X, y, n_files=3, days=3)
    cfg = tmp / "c.yaml"
    cfg.write_text(json.dumps({"name": "every", "data": data, "output": {"dir": str(tmp / "out")},
                               "cluster": {"n_workers": 1}}))
    assert main(["train", str(cfg)]) == 0
    return {"tmp": tmp, "data": data, "config": cfg, "model": tmp / "out" / "model.json", "X": X, "y": y}


def test_evaluate_prints_the_metrics_of_scikit_learn(trained, capsys):
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    capsys.readouterr()
    assert main(["evaluate", str(trained["model"]), trained["data"]["path"]]) == 0
    got = json.loads(capsys.readouterr().out)
    pred = load_model(trained["model"]).predict(trained["X"])
    y = trained["y"]
    assert got["n"] == len(y)
    assert got["mse"] == pytest.approx(mean_squared_error(y, pred), rel=1e-10)
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)), rel=1e-10)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-10)
    assert got["r2"] == pytest.approx(r2_score(y, pred), rel=1e-10)


def test_predict_keeps_the_partitioning_and_adds_a_prediction_column(trained, capsys):
    out = trained["tmp"] / "pred"
    assert main(["predict", str(trained["model"]), trained["data"]["path"], str(out), "--keys", "y"]) == 0
    src = sorted(p.relative_to(trained["data"]["path"]) for p in Path(trained["data"]["path"]).rglob("*.parquet"))
    dst = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    assert src == dst and not list(out.rglob("*.tmp"))
    table = pads.dataset(str(out), format="parquet", partitioning="hive").to_table().to_pandas()
    assert list(table.columns[:2]) == ["y", "prediction"]
    model = json.loads(trained["model"].read_text())
    expected = trained["X"] @ np.array(model["m"]) + model["b"]
    np.testing.assert_allclose(np.sort(table["prediction"].to_numpy()), np.sort(expected), rtol=1e-12)


def test_load_model_predicts_numpy_pandas_and_dask(trained):
    import dask.array as da

    model = load_model(trained["model"])
    X = trained["X"]
    ref = X @ model.m + model.b
    np.testing.assert_allclose(model.predict(X), ref)
    frame = pd.DataFrame(X[:, ::-1], columns=["x2", "x1", "x0"])  # by name, any order
    np.testing.assert_allclose(model.predict(frame), ref)
    np.testing.assert_allclose(model.predict(da.from_array(X, chunks=100)).compute(), ref)
    with pytest.raises(Exception, match="3 features"):
        model.predict(X[:, :2])


def test_training_writes_a_loss_curve_png_unless_told_not_to(trained, tmp_path):
    import matplotlib.image as mpimg

    png = trained["tmp"] / "out" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w = mpimg.imread(png).shape[:2]
    assert 300 < h < 2000 and 400 < w < 3000
    assert main(["train", str(trained["config"]), "--no-plot", "--set", f"output.dir={tmp_path}"]) == 0
    assert (tmp_path / "model.json").exists() and not (tmp_path / "loss.png").exists()


def test_sweep_marks_a_too_large_rate_diverged_and_auto_among_the_fastest(trained, tmp_path, capsys):
    capsys.readouterr()
    code = main(["sweep", str(trained["config"]), "--learning-rates", "0.01,0.3,1,2.5,auto",
                 "--set", f"output.dir={tmp_path}"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {ln.split()[0]: ln.split() for ln in lines[1:-1]}
    assert rows["2.5"][2] == "diverged"
    assert rows["0.01"][2] == "not"  # not converged within the epoch bound
    epochs = {r: int(v[-2]) for r, v in rows.items() if v[2] == "converged"}
    # Among the fastest: heavy ball needs a short calm window to call convergence.
    assert epochs["auto"] <= min(epochs.values()) + 1 < epochs["0.3"]
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_the_json_schema_validates_the_example_configs_and_rejects_unknown_keys(capsys):
    import jsonschema
    import yaml

    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    for path in (ROOT / "configs").glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = yaml.safe_load((ROOT / "configs" / "example.yaml").read_text())
    bad["optimizer"]["learnig_rate"] = 0.1
    with pytest.raises(jsonschema.ValidationError, match="learnig_rate"):
        jsonschema.validate(bad, schema)


def test_config_check_validates_without_running(capsys):
    assert main(["config-check", str(ROOT / "configs" / "example.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["optimizer"]["learning_rate"] == "auto"


def test_predict_reads_decimal_and_nullable_columns(tmp_path, capsys):
    """Any numeric Parquet type predicts like its float64 value; a null gives a NaN."""
    import decimal
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"d": pa.array([decimal.Decimal("1.50"), decimal.Decimal("-2.25"), None],
                                           type=pa.decimal128(5, 2)),
                             "b": pa.array([True, None, False])}), tmp_path / "d" / "p.parquet")
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"format": "gd_dask.model/1", "features": ["d", "b"], "target": "y",
                                 "m": [2.0, 10.0], "b": 1.0}))
    assert main(["predict", str(model), str(tmp_path / "d"), str(tmp_path / "out")]) == 0
    pred = pq.read_table(tmp_path / "out" / "p.parquet").column("prediction").to_numpy()
    np.testing.assert_array_equal(pred[:1], [14.0])
    assert np.isnan(pred[1:]).all()


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_predict_never_writes_into_or_over_its_input(trained, capsys, where):
    """`predict model.json d1 d1` used to replace the training files with predictions."""
    data = Path(trained["data"]["path"])
    out = {"same": data, "inside": data / "preds", "parent": data.parent}[where]
    before = _tree(data.parent)
    capsys.readouterr()
    assert main(["predict", str(trained["model"]), str(data), str(out), "--keys", "y", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the input data" in err
    assert _tree(data.parent) == before  # nothing written, nothing replaced


def test_predict_refuses_a_non_empty_folder_and_overwrite_replaces_it_whole(trained, capsys):
    out = trained["tmp"] / "pred-overwrite"
    (out / "date=1999-01-01").mkdir(parents=True)
    stale = out / "date=1999-01-01" / "old.parquet"
    stale.write_bytes(b"older predictions")
    capsys.readouterr()
    assert main(["predict", str(trained["model"]), trained["data"]["path"], str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err and stale.exists()
    assert main(["predict", str(trained["model"]), trained["data"]["path"], str(out), "--overwrite"]) == 0
    assert not stale.exists()
    src = sorted(p.relative_to(trained["data"]["path"]) for p in Path(trained["data"]["path"]).rglob("*.parquet"))
    assert sorted(p.relative_to(out) for p in out.rglob("*.parquet")) == src
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".pred-overwrite")]  # no staging left
