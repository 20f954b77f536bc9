"""Real `dask scheduler` and `dask worker` processes on 127.0.0.1 for tests."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DASK = str(Path(sys.executable).parent / "dask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(folder: Path) -> dict:
    """A throwaway CA and one certificate for 127.0.0.1 signed by it (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "node.key", "node.csr", "node.pem"))
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run = lambda *a: subprocess.run(["openssl", *map(str, a)], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=gd-dask-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", ext)
    return {"ca_file": str(ca), "cert": str(cert), "key": str(key)}


class DaskProcesses:
    """A scheduler and workers as separate OS processes; ``stop`` ends them all."""

    def __init__(self, n_workers: int = 2, tls: dict | None = None, memory_limit: str = "2GiB",
                 worker_env: dict | None = None):
        self.tls = tls
        self.worker_env = worker_env or {}
        self.protocol = "tls" if tls else "tcp"
        self.memory_limit = memory_limit
        self.scheduler = None
        self.workers: list[subprocess.Popen] = []
        self.n_workers = n_workers
        self.logs = Path(tempfile.mkdtemp(prefix="gd-dask-procs-"))
        self._new_port()

    def _new_port(self) -> None:
        self.port = free_port()
        self.address = f"{self.protocol}://127.0.0.1:{self.port}"

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        return ["--tls-ca-file", self.tls["ca_file"], "--tls-cert", self.tls["cert"],
                "--tls-key", self.tls["key"]]

    def _spawn(self, args, env=None) -> subprocess.Popen:
        from gd_dask.runtime.cluster import WORKER_ENV

        self.logs.mkdir(exist_ok=True)
        log = open(self.logs / f"{args[0]}-{len(self.workers)}-{self.port}.log", "wb")  # noqa: SIM115
        with log:
            return subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, **WORKER_ENV, **(env or {})})

    def start(self, attempts: int = 2) -> DaskProcesses:
        """Start the scheduler and workers; a set that does not come up (a port taken between
        choosing and binding it, a start that hangs on a loaded machine) is stopped and
        started again on a fresh port, and the last failure names the processes' logs."""
        for attempt in range(attempts):
            self.scheduler = self._spawn(["scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                          "--protocol", self.protocol, "--dashboard-address", "127.0.0.1:0",
                                          *self._tls_args()])
            for _ in range(self.n_workers):
                self.add_worker(wait=False)
            try:
                self.wait_for_workers(self.n_workers, timeout=60)
                return self
            except (OSError, TimeoutError) as e:
                tail = self.log_tail()
                self.stop()
                if attempt == attempts - 1:
                    raise TimeoutError(f"the dask processes did not come up ({e!r}):\n{tail}") from e
                self.workers = []
                self._new_port()
        raise AssertionError("unreachable")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
                         for p in sorted(self.logs.glob("*.log")))

    def add_worker(self, wait: bool = True) -> None:
        self.workers.append(self._spawn(["worker", self.address, "--nthreads", "1", "--host", "127.0.0.1",
                                         "--memory-limit", self.memory_limit,
                                         "--dashboard-address", "127.0.0.1:0", *self._tls_args()],
                                        self.worker_env))
        if wait:
            self.wait_for_workers(len(self.workers))

    def client(self, **kw):
        from distributed import Client
        from distributed.security import Security

        sec = None
        if self.tls:
            sec = Security(tls_ca_file=self.tls["ca_file"], tls_client_cert=self.tls["cert"],
                           tls_client_key=self.tls["key"], require_encryption=True)
        kw.setdefault("timeout", 30)
        return Client(self.address, security=sec, set_as_default=False, **kw)

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client(timeout=min(30.0, max(1.0, deadline - time.monotonic()))) as c:
                    c.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                return
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def worker_pids(self) -> dict[str, int]:
        """Worker address → pid of the worker process (under its nanny)."""
        with self.client() as c:
            return c.run(os.getpid)

    def stop(self) -> None:
        procs = [*self.workers, self.scheduler]
        for p in procs:
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            if p is None:
                continue
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.logs, ignore_errors=True)


#: Training processes a test started: conftest kills what is left when it ends.
started: list[subprocess.Popen] = []


def start_train(config, out, *args):
    """`gd-dask train CONFIG --set output.dir=OUT ARGS` in a process of its own session,
    its stderr pumped into the returned list of lines (stopped after the test: conftest)."""
    # PYTHONFAULTHANDLER: a run that hangs can be made to print where (SIGABRT).
    proc = subprocess.Popen([sys.executable, "-m", "gd_dask", "train", str(config), "--set", f"output.dir={out}",
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    started.append(proc)
    lines: list[str] = []

    def pump():
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_for_epoch(lines, epoch, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            # "epoch 3/60 …" from descent, "epoch 3 loss …" from Newton passes
            if " epoch " in line and int(re.match(r"\d+", line.split(" epoch ")[1]).group()) >= epoch:
                return
        assert proc.poll() is None, "".join(lines)
        time.sleep(0.05)
    raise AssertionError("training did not progress:\n" + "".join(lines))


def train_killing_a_worker(config, out, epoch: int, *args) -> tuple:
    """`gd-dask train` on a fresh `dask scheduler` with two `dask worker`s, one worker
    process (not its nanny) SIGKILLed once ``epoch`` is logged: (the train process, its
    log lines, whether the killed worker is gone from the cluster), the run finished."""
    procs = DaskProcesses(n_workers=2).start()
    try:
        proc, lines = start_train(config, out, "--scheduler", procs.address, *args)
        wait_for_epoch(lines, epoch, proc)
        victim = sorted(procs.worker_pids().values())[0]
        os.kill(victim, signal.SIGKILL)
        proc.communicate(timeout=240)
        return proc, lines, victim not in procs.worker_pids().values()
    finally:
        procs.stop()


def models_with_and_without_a_kill(config, tmp, epoch: int, *args) -> tuple[dict, dict]:
    """(model.json of an undisturbed `gd-dask train` of ``config``, of one with a worker
    SIGKILLed once ``epoch`` is logged, ``train_killing_a_worker``): both runs succeeded
    and the worker is gone."""
    import json

    from conftest import run_cli

    ref = run_cli("train", str(config), *args, "--set", f"output.dir={tmp / 'ref'}")
    assert ref.returncode == 0, ref.stderr
    proc, lines, gone = train_killing_a_worker(config, tmp / "o", epoch, *args)
    assert proc.returncode == 0, "".join(lines)
    assert gone
    want, got = (json.loads((tmp / d / "model.json").read_text()) for d in ("ref", "o"))
    return want, got
