"""Object storage: train, predict and evaluate on s3:// against a real S3-compatible
server (moto's server mode) on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_parquet
from dask_processes import free_port
from gd_dask.interfaces.cli import main

s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")


def _moto_server():
    """moto's S3 server as a separate process on 127.0.0.1, checking credentials: the
    first three requests (creating an IAM user, its key and its policy) are the only
    unauthenticated ones it accepts."""
    port = free_port()
    exe = str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "moto_server did not start"
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap", region_name="us-east-1")
    iam.create_user(UserName="gd-dask")
    key = iam.create_access_key(UserName="gd-dask")["AccessKey"]
    iam.put_user_policy(UserName="gd-dask", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    return proc, endpoint, key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    proc, endpoint, key, secret = _moto_server()
    try:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                     region_name="us-east-1").create_bucket(Bucket="lake")
        fs = s3fs.S3FileSystem(key=key, secret=secret, endpoint_url=endpoint)
        rng = np.random.default_rng(11)
        X = rng.normal(size=(3000, 2)) + [170, 0]
        y = X @ [0.6, 2.0] - 40 + rng.normal(size=3000)
        local = tmp_path_factory.mktemp("s3src")
        data = write_parquet(local / "students", X, y, n_files=4, days=2)
        fs.put(str(local / "students"), "lake/students", recursive=True)
        yield {"endpoint": endpoint, "fs": fs, "local": data, "key": key, "secret": secret,
               "options": {"endpoint_url": endpoint, "key": key, "secret": secret}}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _config(tmp_path, data_path, out, options):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({
        "name": "s3run", "data": {"path": data_path, "features": ["x0", "x1"], "target": "y",
                                  "storage_options": options},
        "output": {"dir": out}, "cluster": {"n_workers": 1}}))
    return path


def test_training_from_and_to_s3_matches_the_local_run_and_keeps_secrets_out(s3, tmp_path, capsys):
    assert main(["train", str(_config(tmp_path, "s3://lake/students", "s3://lake/runs/s3run", s3["options"]))]) == 0
    assert main(["train", str(_config(tmp_path, s3["local"]["path"], str(tmp_path / "local"), {}))]) == 0
    remote = s3["fs"].cat_file("lake/runs/s3run/model.json").decode()
    local = json.loads((tmp_path / "local" / "model.json").read_text())
    doc = json.loads(remote)
    assert doc["m"] == local["m"] and doc["b"] == local["b"]  # same bytes in, same bits out
    assert s3["secret"] not in remote and s3["key"] not in remote
    assert doc["config"]["data"]["storage_options"]["secret"] == "***"
    assert s3["secret"] not in capsys.readouterr().err
    assert s3["fs"].exists("lake/runs/s3run/history.csv") and s3["fs"].exists("lake/runs/s3run/loss.png")
    assert doc["data"]["files"][0]["path"].startswith("s3://lake/students/date=")


def test_predict_and_evaluate_read_and_write_s3(s3, tmp_path, capsys):
    assert main(["train", str(_config(tmp_path, "s3://lake/students", "s3://lake/runs/p", s3["options"]))]) == 0
    opts = json.dumps(s3["options"])
    capsys.readouterr()
    assert main(["evaluate", "s3://lake/runs/p/model.json", "s3://lake/students", "--storage-options", opts]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 3000 and metrics["r2"] == pytest.approx(4.36 / 5.36, abs=0.03)
    assert main(["predict", "s3://lake/runs/p/model.json", "s3://lake/students", "s3://lake/preds",
                 "--keys", "y", "--storage-options", opts]) == 0
    written = sorted(p for p in s3["fs"].find("lake/preds") if p.endswith(".parquet"))
    assert len(written) == 4 and all("/date=" in p for p in written)
    assert not [p for p in s3["fs"].find("lake/preds") if p.endswith(".tmp")]


def test_a_missing_bucket_is_a_clear_error(s3, tmp_path, capsys):
    cfg = _config(tmp_path, "s3://no-such-bucket/students", str(tmp_path / "o"), s3["options"])
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "s3://no-such-bucket/students" in err and s3["secret"] not in err


def test_wrong_credentials_are_a_clear_error_that_does_not_echo_them(s3, tmp_path, capsys):
    wrong = dict(s3["options"], secret="not-the-secret-123")
    assert main(["train", str(_config(tmp_path, "s3://lake/students", str(tmp_path / "o"), wrong))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s3://lake/students" in err[0] and "signature" in err[0]
    assert "not-the-secret-123" not in err[0] and not (tmp_path / "o" / "model.json").exists()


def test_a_two_night_refit_runs_entirely_on_s3(s3, tmp_path, client, capsys):
    from datetime import timedelta

    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit
    from gd_dask.artifacts.registry import Registry
    from nights import START, add_day

    local = tmp_path / "nightly"
    for day in range(4):
        add_day(local, day)
    s3["fs"].put(str(local), "lake/nightly", recursive=True)
    cfg = validate_config({
        "name": "nightly",
        "data": {"path": "s3://lake/nightly", "features": ["x1", "x2"], "target": "y", "window_days": 3,
                 "storage_options": s3["options"]},
        "optimizer": {},
        "registry": {"dir": "s3://lake/models"}})
    first = refit(cfg, client, START + timedelta(days=2))
    second = refit(cfg, client, START + timedelta(days=3))
    assert first.promoted and first.files_read == 6  # two training days and the holdout day
    assert second.files_read == 2  # only the new day: the rest comes from the s3 stats cache
    reg = Registry("s3://lake/models", "nightly", s3["options"])
    assert reg.versions() == [first.version, second.version]
    assert reg.current() == (second.version if second.promoted else first.version)
    assert s3["fs"].exists("lake/models/nightly/current.json")
    assert not s3["fs"].exists("lake/models/nightly/.lock")
    model = s3["fs"].cat_file(f"lake/models/nightly/versions/{second.version}/model.json").decode()
    assert s3["secret"] not in model
    capsys.readouterr()
    assert main(["models", "list", "s3://lake/models/nightly", "--storage-options", json.dumps(s3["options"])]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert "nothing to do" in refit(cfg, client, START + timedelta(days=3)).message


def test_a_classifier_trains_evaluates_and_predicts_on_s3(s3, tmp_path, capsys):
    rng = np.random.default_rng(12)
    X = rng.normal(size=(3000, 2))
    y = (rng.random(3000) < 1 / (1 + np.exp(-(X @ [1.5, -1.0] + 0.2)))).astype(float)
    local = write_parquet(tmp_path / "clicks", X, y, n_files=3)
    s3["fs"].put(local["path"], "lake/clicks", recursive=True)
    cfg = json.loads(_config(tmp_path, "s3://lake/clicks", "s3://lake/runs/clf", s3["options"]).read_text())
    cfg["model"] = {"loss": "logistic"}
    path = tmp_path / "clf.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["train", str(path)]) == 0
    doc = json.loads(s3["fs"].cat_file("lake/runs/clf/model.json"))
    assert doc["converged"] and doc["convergence"]["criterion"] == "local_curvature"
    opts = json.dumps(s3["options"])
    capsys.readouterr()
    assert main(["evaluate", "s3://lake/runs/clf/model.json", "s3://lake/clicks", "--storage-options", opts]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 3000 and metrics["log_loss"] == pytest.approx(doc["metrics"]["log_loss"], rel=1e-12)
    assert main(["predict", "s3://lake/runs/clf/model.json", "s3://lake/clicks", "s3://lake/clf-preds",
                 "--threshold", "0.5", "--storage-options", opts]) == 0
    written = sorted(p for p in s3["fs"].find("lake/clf-preds") if p.endswith(".parquet"))
    assert len(written) == 3


def test_the_s3_lock_is_a_conditional_create_exactly_one_of_two_wins(s3):
    import threading

    from gd_dask.artifacts.registry import Registry, RegistryError

    reg = Registry("s3://lake/locks", "race", s3["options"])
    assert reg.conditional
    wins = []
    for trial in range(20):
        start, results = threading.Barrier(2), []

        def attempt():
            start.wait()
            try:
                with Registry("s3://lake/locks", "race", s3["options"]).lock():
                    results.append("won")
                    time.sleep(0.3)
            except RegistryError as e:
                results.append("refused: " + str(e))

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wins.append(results.count("won"))
        assert sum(r.startswith("refused") and "holds the lock" in r for r in results) == 1, results
    assert wins == [1] * 20
    assert not s3["fs"].exists("lake/locks/race/.lock")


def test_current_json_is_replaced_by_compare_and_swap(s3):
    from gd_dask.artifacts.registry import Registry, RegistryError

    reg = Registry("s3://lake/cas", "m", s3["options"])
    a = reg.new_version("2026-11-01", {"model.json": json.dumps({"m": [1.0], "b": 0.0, "features": ["x"]}),
                                       "verdict.json": "{}"})
    b = reg.new_version("2026-11-02", {"model.json": json.dumps({"m": [2.0], "b": 0.0, "features": ["x"]}),
                                       "verdict.json": "{}"})
    seen = reg.current_state()  # no current.json yet
    reg.promote(a, "first", expect=seen)
    stale = reg.current_state()
    reg.promote(b, "a racing refit", expect=stale)  # the other refit got there first
    with pytest.raises(RegistryError, match="changed since this refit began"):
        reg.promote(a, "the loser", expect=stale)
    assert reg.current() == b
    with pytest.raises(RegistryError):
        reg.promote(a, "stale none", expect=seen)  # If-None-Match on an existing object


def test_two_refits_started_together_exactly_one_promotes_the_other_fails(s3, tmp_path, client):
    import threading
    from datetime import timedelta

    from gd_dask.config import validate_config
    from gd_dask.jobs.refit import refit
    from gd_dask.artifacts.registry import Registry, RegistryError
    from nights import START, add_day

    local = tmp_path / "race"
    for day in range(3):
        add_day(local, day)
    s3["fs"].put(str(local), "lake/race", recursive=True)
    for trial in range(20):
        cfg = validate_config({
            "name": f"race{trial}",
            "data": {"path": "s3://lake/race", "features": ["x1", "x2"], "target": "y", "window_days": 3,
                     "storage_options": s3["options"]},
            "registry": {"dir": "s3://lake/race-models"}})
        start, results = threading.Barrier(2), []

        def attempt():
            start.wait()
            try:
                results.append(refit(cfg, client, START + timedelta(days=2)).status)
            except RegistryError as e:
                results.append(f"failed: {e}")

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r[:7] for r in results) == ["failed:", "promote"], results
        assert len(Registry("s3://lake/race-models", f"race{trial}", s3["options"]).versions()) == 1


def test_an_object_replaced_mid_run_is_named_by_its_etag(s3, tmp_path):
    """Issue 29 C8 on a store: the listing's ETag is what a read checks the object it
    opens against (s3fs fetched it to open the file: no extra request)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gd_dask.config import DataConfig
    from gd_dask.data import open_source, read_block
    from gd_dask.errors import DataError

    local = tmp_path / "one.parquet"
    pq.write_table(pa.table({"x0": np.arange(100.0), "x1": np.ones(100), "y": np.arange(100.0)}), local)
    s3["fs"].put(str(local), "lake/one/part-0.parquet")
    src = open_source(DataConfig(path="s3://lake/one", features=["x0", "x1"], target="y",
                                 storage_options=s3["options"]))
    chunk = src.chunks[0]
    assert chunk.ident[0] == "etag" and len(read_block(chunk, src.spec)) == 100
    pq.write_table(pa.table({"x0": -np.arange(100.0), "x1": np.ones(100), "y": np.arange(100.0)}), local)
    s3["fs"].put(str(local), "lake/one/part-0.parquet")  # same size, other bytes
    s3fs.S3FileSystem.clear_instance_cache()  # as a worker sees it: a filesystem of its own
    with pytest.raises(DataError, match="part-0.parquet: changed during the run .*ETag"):
        read_block(chunk, src.spec)


def test_a_delta_table_on_s3_is_read_as_its_log_says(s3, tmp_path):
    """Issue 30 on a store: delta-rs reads the log with fsspec's options mapped to its own."""
    import pyarrow as pa

    deltalake = pytest.importorskip("deltalake")
    from gd_dask.config import DataConfig
    from gd_dask.data import open_source

    opts = {"AWS_ACCESS_KEY_ID": s3["key"], "AWS_SECRET_ACCESS_KEY": s3["secret"],
            "AWS_ENDPOINT_URL": s3["endpoint"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
            "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    table = lambda n: pa.table({"x0": np.arange(float(n)), "x1": np.ones(n), "y": np.arange(float(n))})  # noqa: E731
    deltalake.write_deltalake("s3://lake/delta", table(300), storage_options=opts)
    deltalake.write_deltalake("s3://lake/delta", table(200), mode="overwrite", storage_options=opts)
    src = open_source(DataConfig(path="s3://lake/delta", features=["x0", "x1"], target="y",
                                 storage_options=s3["options"]))
    assert src.n_rows == 200 and src.table == {"format": "delta", "version": 1}
    assert len(s3["fs"].find("lake/delta", withdirs=False)) > len(src.files) + 1  # the old file is still there


def test_an_iceberg_table_on_s3_is_read_as_its_metadata_says(s3, tmp_path, threads):
    """A pyiceberg SQL catalog whose warehouse is on the S3 server: the manifests are read
    with fsspec's options mapped to pyiceberg's, the data files through fsspec."""
    import pyarrow as pa

    pytest.importorskip("pyiceberg")
    from pyiceberg.catalog.sql import SqlCatalog

    from gd_dask.config import DataConfig
    from gd_dask.data import open_source
    from gd_dask.jobs.training import fit
    from conftest import make_config

    props = {"uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": "s3://lake/iceberg",
             "s3.endpoint": s3["endpoint"], "s3.access-key-id": s3["key"], "s3.secret-access-key": s3["secret"],
             "s3.region": "us-east-1"}
    cat = SqlCatalog("s3cat", **props)
    cat.create_namespace("ns")
    rng = np.random.default_rng(3)

    def rows(n, slope):
        x = rng.normal(size=n)
        return pa.table({"x0": x, "x1": rng.normal(size=n), "y": slope * x + 1 + rng.normal(size=n)})

    t = cat.create_table("ns.t", schema=rows(1, 1.0).schema)
    t.append(rows(400, 5.0))
    t.overwrite(rows(300, 1.0))
    t = cat.load_table("ns.t")
    live = t.scan().to_arrow()
    data = {"path": t.metadata_location, "features": ["x0", "x1"], "target": "y", "storage_options": s3["options"]}
    src = open_source(DataConfig(**data))
    assert src.n_rows == 300 and src.table == {"format": "iceberg", "version": t.current_snapshot().snapshot_id}
    res = fit(make_config(data, tmp_path), threads)
    X = np.column_stack([live["x0"].to_numpy(), live["x1"].to_numpy(), np.ones(300)])
    np.testing.assert_allclose(np.append(res.m, res.b), np.linalg.lstsq(X, live["y"].to_numpy(), rcond=None)[0],
                               rtol=1e-8)
