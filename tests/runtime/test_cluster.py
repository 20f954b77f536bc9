"""Remote clusters, determinism, worker loss and client loss — with real processes."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import make_config, run_cli, write_parquet
from dask_processes import DaskProcesses, free_port, make_certs, start_train, train_killing_a_worker

EPOCHS = 120


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """16 blocks of a 3-feature problem; a fixed rate that does not converge early."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(16000, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 0.0]
    y = X @ [1.5, -0.7, 2.0] + 3.0 + rng.normal(size=len(X))
    root = tmp_path_factory.mktemp("cluster-data")
    data = write_parquet(root / "d", X, y, n_files=8, row_group_rows=1000)
    cfg = root / "run.yaml"
    cfg.write_text(json.dumps({
        "name": "det", "data": data,
        "optimizer": {"learning_rate": 0.05, "epochs": EPOCHS, "tol": 0, "strategy": "stream",
                      "cache": "memory"},
        "output": {"checkpoint_every": 10},
    }))
    return {"data": data, "config": cfg, "root": root}


def _train(config, out, *args, **kw):
    res = run_cli("train", config, "--set", f"output.dir={out}", *args, **kw)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "model.json").read_text()), res


def _losses(out):
    return [line.split(",")[1] for line in (out / "history.csv").read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def embedded(dataset):
    """The reference: the same job on the embedded cluster, as threads of the command's
    process (``cluster.processes: auto`` for data this small) and as worker processes
    (a LocalCluster): the same bits, every epoch."""
    out, procs_out = dataset["root"] / "embedded", dataset["root"] / "embedded-processes"
    model, res = _train(dataset["config"], out)
    assert "threads of this process" in res.stderr
    procs, res = _train(dataset["config"], procs_out, "--set", "cluster.processes=true")
    assert "LocalCluster with 2 worker processes; dashboard:" in res.stderr
    assert procs["m"] == model["m"] and procs["b"] == model["b"]
    assert _losses(procs_out) == _losses(out)
    return model, _losses(out)


def test_a_job_submitted_by_address_is_bit_identical_to_the_embedded_run(dataset, embedded, dask_cluster, tmp_path):
    model, res = _train(dataset["config"], tmp_path / "o", "--scheduler", dask_cluster.address)
    assert f"connected to {dask_cluster.address}" in res.stderr
    assert model["m"] == embedded[0]["m"] and model["b"] == embedded[0]["b"]
    assert _losses(tmp_path / "o") == embedded[1]
    # The job closed only its client: the cluster still serves.
    assert len(dask_cluster.worker_pids()) == 2


def test_a_categorical_job_by_address_is_bit_identical_to_the_embedded_run(dask_cluster, tmp_path):
    """Weighted least squares with a text and an integer column (8,000 level pairs): the
    client reduces the grouped moments itself, with products large enough for threaded
    BLAS to split. It runs on one BLAS thread on any cluster, so b, every level and the
    summary have the same bits by address as embedded (the last bit differed before)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(14)
    n = 200_000
    x = rng.normal(size=n)
    store = rng.integers(0, 400, n)
    region = rng.choice([f"r{i}" for i in range(20)], n)
    w = rng.uniform(0.2, 3.0, n)
    y = 2 + x + rng.normal(0, 1, 400)[store] + rng.normal(size=n) / np.sqrt(w)
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"x": x, "region": region.tolist(), "store": store, "w": w, "y": y}),
                   tmp_path / "d" / "part-0.parquet")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "levels", "data": {
        "path": str(tmp_path / "d"), "features": ["x", "region", "store"], "categorical": ["store"], "target": "y",
        "weight": "w"}}))
    embedded, res = _train(cfg, tmp_path / "emb", "--no-plot")
    assert "threads of this process" in res.stderr
    remote, _ = _train(cfg, tmp_path / "remote", "--no-plot", "--scheduler", dask_cluster.address)
    for key in ("m", "b", "categorical", "summary", "metrics"):
        assert remote[key] == embedded[key], key


def test_workers_started_by_hand_read_on_the_fast_arrow_pool(tmp_path):
    """A worker started by hand may have any Arrow pool (here `system`, which under
    distributed's MALLOC_TRIM_THRESHOLD_ faults every buffer in anew); connecting
    registers a worker plugin that sets the fast one (mimalloc: the 3.4 GB job's moments
    pass took 2.5–3.2 s on it, 5.3–6.6 s on jemalloc, 9 s on system) and the worker's
    memory limit, below which freed buffers are kept for the next chunk; in a worker that
    joins later too, and once however often a job connects."""
    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig
    from gd_dask.data.read import fast_pool_name

    def pools(c):
        return sorted(c.run(lambda: __import__("pyarrow").default_memory_pool().backend_name).values())

    procs = DaskProcesses(n_workers=1, worker_env={"ARROW_DEFAULT_MEMORY_POOL": "system"}).start()
    try:
        with procs.client() as c:
            assert pools(c) == ["system"]
        for _ in range(2):
            with connect(ClusterConfig(), procs.address):
                pass
        procs.add_worker()
        with procs.client() as c:
            assert pools(c) == [fast_pool_name(2 * 2**30)] * 2
            plugins = c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
            assert plugins.count("gd-dask-worker-setup") == 1
            fetchers = c.run(lambda: sum(t.name.startswith("gd-dask-fetch")
                                         for t in __import__("threading").enumerate()))
            assert set(fetchers.values()) == {64}  # started with the worker, never from a task (with the read-ahead ones)
            # 2 GiB workers: below LARGE_WORKER_BYTES, freed buffers go back after every chunk.
            kept = c.run(lambda: __import__("gd_dask.data.read", fromlist=["x"])._release_above)
            assert set(kept.values()) == {None}, kept
    finally:
        procs.stop()


def test_cluster_address_in_the_config_works_like_the_flag(dataset, embedded, dask_cluster, tmp_path):
    model, _ = _train(dataset["config"], tmp_path / "o", "--set", f"cluster.address={dask_cluster.address}")
    assert model["m"] == embedded[0]["m"] and model["b"] == embedded[0]["b"]


@pytest.mark.parametrize("strategy", ["stream", "gram"])
def test_one_two_and_three_workers_give_identical_weights_as_processes_or_threads(dataset, tmp_path, strategy):
    from distributed import Client, LocalCluster

    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig
    from gd_dask.runtime.threads import ThreadsClient
    from gd_dask.jobs.training import fit

    cfg = make_config(dataset["data"], tmp_path, optimizer={
        "learning_rate": 0.05, "epochs": 40, "tol": 0, "strategy": strategy, "cache": "memory"})
    results = []
    for n in (1, 2, 3):
        with LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=":0") as lc, \
                Client(lc, set_as_default=False) as c:
            results.append(fit(cfg, c))
    for n in (1, 3):  # and as threads of this process (cluster.processes: false)
        with connect(ClusterConfig(n_workers=n, processes=False)) as c:
            assert isinstance(c, ThreadsClient)
            results.append(fit(cfg, c))
    for r in results[1:]:
        assert list(r.m) == list(results[0].m) and r.b == results[0].b
        assert [h["loss"] for h in r.history] == [h["loss"] for h in results[0].history]


def test_a_worker_killed_mid_training_changes_nothing(dataset, embedded, tmp_path):
    proc, lines, gone = train_killing_a_worker(dataset["config"], tmp_path / "o", 20)
    assert proc.returncode == 0, "".join(lines)
    assert gone
    model = json.loads((tmp_path / "o" / "model.json").read_text())
    assert model["m"] == embedded[0]["m"] and model["b"] == embedded[0]["b"]


def test_a_killed_train_process_resumes_from_its_checkpoint(dataset, embedded, tmp_path):
    out = tmp_path / "o"
    # Worker processes: slow enough to be caught mid-run (threads finish 120 epochs in 0.3 s).
    proc, lines = start_train(dataset["config"], out, "--set", "cluster.n_workers=1", "--set", "cluster.processes=true")
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its embedded cluster, all at once
    proc.wait()
    assert not (out / "model.json").exists()
    saved = json.loads((out / "checkpoint.json").read_text())["state"]["epoch"]
    assert 0 < saved < EPOCHS

    model, res = _train(dataset["config"], out)
    assert f"resuming from the checkpoint at epoch {saved}" in res.stderr
    assert model["resumed_from_epoch"] == saved and model["epochs_run"] == EPOCHS
    assert model["m"] == embedded[0]["m"] and model["b"] == embedded[0]["b"]
    assert _losses(out) == embedded[1]
    assert not (out / "checkpoint.json").exists()


def test_a_tls_scheduler_accepts_the_configured_client_and_refuses_others(dataset, embedded, tmp_path):
    tls = make_certs(tmp_path / "certs")
    procs = DaskProcesses(n_workers=1, tls=tls).start()
    try:
        sets = ["--set", f"cluster.address={procs.address}"]
        for k, v in tls.items():
            sets += ["--set", f"cluster.tls.{k}={v}"]
        model, _ = _train(dataset["config"], tmp_path / "ok", *sets)
        assert model["m"] == embedded[0]["m"]

        wrong = make_certs(tmp_path / "other-ca")  # valid certificates, another authority
        for tls_sets in ([], [x for k, v in wrong.items() for x in ("--set", f"cluster.tls.{k}={v}")]):
            t = time.monotonic()
            refused = run_cli("train", dataset["config"], "--set", f"output.dir={tmp_path / 'no'}",
                              "--set", f"cluster.address={procs.address}", "--set", "cluster.timeout=5s",
                              *tls_sets)
            assert refused.returncode == 1
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert procs.address in refused.stderr
            assert time.monotonic() - t < 30
            assert not (tmp_path / "no" / "model.json").exists()
    finally:
        procs.stop()


def test_an_unreachable_scheduler_fails_in_bounded_time_naming_the_address(dataset, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    t = time.monotonic()
    res = run_cli("train", dataset["config"], "--scheduler", address, "--set", "cluster.timeout=3s",
                  "--set", f"output.dir={tmp_path}")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()
    assert len(last) == 1 and address in last[0], res.stderr
    assert time.monotonic() - t < 30


def test_the_embedded_cluster_listens_on_loopback_only():
    """The dashboard used to bind 0.0.0.0 while the log said 127.0.0.1."""
    import os
    from urllib.parse import urlparse

    import psutil

    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig

    with connect(ClusterConfig(n_workers=1)) as c:
        ports = {urlparse(c.dashboard_link).port, urlparse(c.scheduler.address).port}
        listening = [x for x in psutil.Process(os.getpid()).net_connections()
                     if x.status == "LISTEN" and x.laddr.port in ports]
        assert len({x.laddr.port for x in listening}) == 2
        assert {x.laddr.ip for x in listening} == {"127.0.0.1"}


@pytest.mark.parametrize("sig,code,words,processes", [(signal.SIGINT, 130, "interrupted (SIGINT)", "true"),
                                                      (signal.SIGTERM, 143, "stopped by SIGTERM", "true"),
                                                      (signal.SIGINT, 130, "interrupted (SIGINT)", "false")])
def test_ctrl_c_and_sigterm_stop_cleanly_with_a_checkpoint(dataset, tmp_path, sig, code, words, processes):
    """Ctrl-C used to print asyncio tracebacks and exit 1 ("aborted"); SIGTERM is what
    Kubernetes and systemd send. Now: one line, 130 or 143, a checkpoint, no process left;
    with worker processes and with worker threads."""
    import psutil

    out = tmp_path / "o"
    proc, lines = start_train(dataset["config"], out, "--set", "optimizer.epochs=1000000",
                               "--set", f"cluster.processes={processes}")
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.json").exists():  # well into the epochs
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert bool(family) == (processes == "true")  # the embedded cluster's processes, if any
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    while not (lines and lines[-1].startswith("gd-dask:")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the stderr pump thread catching up
    assert proc.returncode == code, "".join(lines)
    last = lines[-1]
    assert last.startswith(f"gd-dask: {words}; rerun the same command to resume from the checkpoint at epoch")
    assert not any("Traceback" in line or "Task exception" in line for line in lines)
    saved = json.loads((out / "checkpoint.json").read_text())["state"]["epoch"]
    assert last.rstrip().endswith(f"epoch {saved}") and saved >= 10
    assert not (out / "model.json").exists()
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [p.cmdline() for p in alive]


def _fake_gd_dask(folder, body: str) -> dict:
    """An environment whose ``import gd_dask`` finds ``body`` first (PYTHONPATH)."""
    pkg = folder / "gd_dask"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)
    return {"PYTHONPATH": str(folder)}


@pytest.mark.parametrize("body,words", [
    ("raise ModuleNotFoundError(\"No module named 'gd_dask'\")\n", "has gd_dask missing (ModuleNotFoundError)"),
    ("__version__ = '0.0.1'\n", "has gd_dask 0.0.1, this client"),
])
def test_workers_without_the_same_gd_dask_fail_at_once_in_one_line(dataset, tmp_path, body, words):
    """A stock `dask worker` without gd_dask used to make `train --scheduler` hang forever."""
    procs = DaskProcesses(n_workers=1, worker_env=_fake_gd_dask(tmp_path / "env", body)).start()
    try:
        t = time.monotonic()
        res = run_cli("train", dataset["config"], "--set", f"output.dir={tmp_path / 'o'}",
                      "--scheduler", procs.address, timeout=120)
        assert time.monotonic() - t < 60
    finally:
        procs.stop()
    assert res.returncode == 1 and words in res.stderr and "install the same versions" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("gd-dask: error: worker tcp://127.0.0.1:")
    assert "Traceback" not in res.stderr


def test_a_cluster_that_loses_every_worker_ends_the_job_within_its_timeout(dataset, tmp_path):
    procs = DaskProcesses(n_workers=1).start()
    try:
        proc, lines = start_train(dataset["config"], tmp_path / "o", "--scheduler", procs.address,
                                   "--set", "optimizer.epochs=1000000", "--set", "cluster.timeout=3s")
        deadline = time.monotonic() + 120
        while not (tmp_path / "o" / "checkpoint.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        for p in procs.workers:
            os.killpg(p.pid, signal.SIGKILL)  # the workers and their nannies: nothing comes back
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGABRT)  # faulthandler prints every thread's stack
            time.sleep(2)
            raise AssertionError("the job did not end:\n" + "".join(lines)) from None
    finally:
        procs.stop()
    time.sleep(0.5)
    assert proc.returncode == 1, "".join(lines)
    assert "has had no workers for 3s (cluster.timeout)" in lines[-1], "".join(lines)
    assert "resume from the checkpoint at epoch" in lines[-1] and "Traceback" not in "".join(lines)


def test_a_lost_scheduler_is_one_line_naming_it_and_the_checkpoint(dataset, tmp_path):
    """It used to end in 32 lines of distributed's tracebacks and FutureCancelledError."""
    procs = DaskProcesses(n_workers=1).start()
    try:
        proc, lines = start_train(dataset["config"], tmp_path / "o", "--scheduler", procs.address,
                                   "--set", "optimizer.epochs=1000000")
        deadline = time.monotonic() + 120
        while not (tmp_path / "o" / "checkpoint.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        os.killpg(procs.scheduler.pid, signal.SIGKILL)
        proc.wait(timeout=90)
    finally:
        procs.stop()
    time.sleep(0.5)
    assert proc.returncode == 1, "".join(lines)
    last = lines[-1]
    assert last.startswith(f"gd-dask: error: lost the dask scheduler at {procs.address}"), "".join(lines)
    assert "resume from the checkpoint at epoch" in last
    assert "Traceback" not in "".join(lines) and len([x for x in lines if "gd-dask:" in x]) == 1


def test_results_arrive_whatever_moment_a_wait_slice_ends(client, monkeypatch):
    """Waits in slices never cancel a gather: with Future.result(timeout=) a slice that
    ended while a gather was starting left distributed's shared gather cancelled, and every
    later result on that client failed (UnboundLocalError from distributed's sync())."""
    import random

    import dask

    from gd_dask.runtime import waiting

    monkeypatch.setattr(waiting, "POLL_SECONDS", 0.0005)
    rng = random.Random(3)
    for i in range(150):
        parts = [dask.delayed(time.sleep)(rng.random() * 0.003, dask_key_name=f"nap-{i}-{j}") for j in range(4)]
        assert waiting.compute(client, parts) == [None] * 4


def test_threads_of_this_process_read_on_the_fast_pool_and_give_the_callers_back():
    import pyarrow as pa

    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig
    from gd_dask.data.read import fast_pool_name

    before = pa.default_memory_pool().backend_name
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        with connect(ClusterConfig(processes=False)):
            assert pa.default_memory_pool().backend_name == fast_pool_name()
        assert pa.default_memory_pool().backend_name == "system"
    finally:
        pa.set_memory_pool(getattr(pa, f"{before}_memory_pool")())


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Issue 29 D11: the same 1M rows as 2 files of one 16 MB row group (above the
    streaming threshold of a 300 MiB worker) and as 4 files of 25,000-row row groups."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(1_000_000, 3)) * [1.0, 10.0, 0.1] + [5.0, -100.0, 0.3]
    y = X @ [1.0, -0.2, 0.5] + 3.0 + rng.normal(size=len(X))
    root = tmp_path_factory.mktemp("layouts")
    return {"big row groups": write_parquet(root / "a", X, y, n_files=2),
            "small row groups": write_parquet(root / "b", X, y, n_files=4, row_group_rows=25_000)}


def test_the_bits_are_the_same_on_threads_local_processes_and_memory_limited_remote_workers(
        layouts, client, threads, tmp_path):
    """The chunk layout was sized by the workers' memory (1/32 of the smallest limit):
    4 files of 500,000 rows were 1 chunk embedded, 2 on 2 GiB workers and 4 on 300 MiB
    ones, and the sums met in another association (m differed in the last bit). The
    layout is now the data's alone; memory only decides which row groups stream."""
    from gd_dask.runtime.cluster import connect
    from gd_dask.config import ClusterConfig
    from gd_dask.jobs.training import fit

    remote = DaskProcesses(n_workers=1, memory_limit="300MiB").start()
    try:
        with connect(ClusterConfig(), remote.address) as small:
            for name, data in layouts.items():
                for strategy in ("gram", "stream"):
                    cfg = make_config(data, tmp_path, output={"checkpoint_every": 0},
                                      optimizer={"strategy": strategy, "epochs": 20, "learning_rate": 0.1,
                                                 "tol": 0.0})
                    bits = {}
                    for kind, c in [("threads", threads), ("processes", client), ("300 MiB", small)]:
                        r = fit(cfg, c)
                        bits[kind] = (r.m.tobytes(), r.b)
                    assert len(set(bits.values())) == 1, (name, strategy, bits)
    finally:
        remote.stop()


def test_tasks_reuse_the_heap_under_the_nannys_trim_threshold_and_give_it_back():
    """``runtime.allocator.reusing`` where dask's nanny set MALLOC_TRIM_THRESHOLD_: a
    task's result and its exception pass through, nested and concurrent tasks count
    down to none, and when the last ends the freed heap goes back to the system: after
    tasks that freed 200 MB of slice-sized arrays, on this thread and twice on four
    others, the process's RSS is within 16 MB of before (with an arena per thread it
    kept 60 MB: ``allocator.one_arena``)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import threading, numpy as np, psutil
        from gd_dask.runtime import allocator
        assert allocator._libc() is not None
        allocator.one_arena()  # as the worker's setup does
        proc = psutil.Process()

        @allocator.reusing
        def task(n, fail=False):
            parts = [np.ones(n) for _ in range(25)]  # 25 × 8 MB, freed at the end
            if fail:
                raise ValueError("boom")
            return sum(float(p[0]) for p in parts)

        before = proc.memory_info().rss
        assert task(1_000_000) == 25.0
        try:
            task(10, fail=True)
        except ValueError:
            pass
        for _ in range(2):
            threads = [threading.Thread(target=task, args=(500_000,)) for _ in range(4)]
            [t.start() for t in threads]
            [t.join() for t in threads]
        assert allocator._running == 0
        print((proc.memory_info().rss - before) / 2**20)
    """)
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 16, out.stdout
