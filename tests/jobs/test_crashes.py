"""Issue 29: promises kept under crashes — a refit killed at the worst moment, a lock left
by a dead process, a backfill over a newer model, version names that leave the registry."""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from gd_dask.artifacts.registry import Registry
from nights import config, night, snapshot, write_night  # noqa: F401 - the same nights


def refit_killed_in(tmp_path, where: str, sig: int, as_of: str) -> subprocess.CompletedProcess:
    """``gd-dask refit`` in a real process that sends itself ``sig`` at the start of
    ``Registry.<where>``: the worst moment, between writing the version and the rest."""
    script = textwrap.dedent(f"""
        import os, sys
        from gd_dask.artifacts import registry
        real = getattr(registry.Registry, {where!r})
        def hooked(self, *a, **k):
            os.kill(os.getpid(), {sig})
            return real(self, *a, **k)
        setattr(registry.Registry, {where!r}, hooked)
        from gd_dask.interfaces.cli import run
        sys.argv = ["gd-dask", "refit", {str(tmp_path / "c.yaml")!r}, "--as-of", {as_of!r}]
        run()
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240)


def three_nights(tmp_path):
    cfg = config(tmp_path)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    for day in range(4):
        write_night(tmp_path / "data", day, 0.5 + 0.01 * day)
    for day in range(3):
        assert run_cli("refit", tmp_path / "c.yaml", "--as-of", night(day).isoformat()).returncode == 0
    return cfg, Registry(cfg.registry.dir, cfg.name)


def test_a_sigkill_between_the_version_and_current_json_is_completed_by_the_next_run(tmp_path):
    cfg, reg = three_nights(tmp_path)
    before = reg.current()
    killed = refit_killed_in(tmp_path, "promote", signal.SIGKILL, night(3).isoformat())
    assert killed.returncode == -signal.SIGKILL
    orphan = reg.versions()[-1]
    assert reg.verdict(orphan)["promoted"] and reg.current() == before  # the state the issue found
    again = run_cli("refit", tmp_path / "c.yaml", "--as-of", night(3).isoformat())
    assert again.returncode == 0, again.stderr
    assert reg.current() == orphan and reg.versions()[-1] == orphan  # completed, not trained twice
    assert "completed the promotion" in again.stderr and "nothing to do" in again.stdout
    assert [e.get("recovered") for e in reg.events()][-1] is True


def test_a_sigterm_while_the_refit_writes_waits_until_everything_is_written(tmp_path):
    cfg, reg = three_nights(tmp_path)
    stopped = refit_killed_in(tmp_path, "promote", signal.SIGTERM, night(3).isoformat())
    assert stopped.returncode == 143, stopped.stderr
    newest = reg.versions()[-1]
    assert reg.current() == newest and reg.events()[-1]["version"] == newest
    assert reg.night_record(night(3).isoformat())["version"] == newest
    before = snapshot(reg)
    again = run_cli("refit", tmp_path / "c.yaml", "--as-of", night(3).isoformat())
    assert again.returncode == 0 and "nothing to do" in again.stdout and snapshot(reg) == before


def test_a_lock_left_by_a_killed_refit_is_no_lock(tmp_path):
    cfg, reg = three_nights(tmp_path)
    lock = Path(reg.root) / ".lock"
    lock.write_text("")  # what a crash between creating the file and writing its holder left
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from gd_dask.artifacts.registry import Registry
        with Registry({cfg.registry.dir!r}, {cfg.name!r}).lock():
            print("locked", flush=True)
            time.sleep(60)
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = run_cli("refit", tmp_path / "c.yaml", "--as-of", night(3).isoformat())
        assert busy.returncode == 1 and f"pid {holder.pid}" in busy.stderr
        holder.kill()  # SIGKILL while holding it
        holder.wait()
    finally:
        holder.kill()
    ok = run_cli("refit", tmp_path / "c.yaml", "--as-of", night(3).isoformat())
    assert ok.returncode == 0, ok.stderr


def test_a_backfill_does_not_roll_production_back_unless_asked(tmp_path, threads):
    from gd_dask.jobs.refit import refit

    cfg = config(tmp_path)
    cfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={
        "promote": cfg.registry.promote.model_copy(update={"max_regression": 10.0})})})  # the gate passes all
    reg = Registry(cfg.registry.dir, cfg.name)
    for day in range(7):
        write_night(tmp_path / "data", day, 0.5 + 0.02 * day)
    assert refit(cfg, threads, night(5)).promoted and refit(cfg, threads, night(6)).promoted
    newest = reg.current()
    past = refit(cfg, threads, night(4))
    assert past.status == "backfilled" and not past.promoted and reg.current() == newest, past.message
    assert "newer than" in past.message and reg.verdict(past.version)["promoted"] is False
    forced = refit(cfg, threads, night(4), allow_rollback=True)
    assert forced.promoted and reg.current() == forced.version


@pytest.mark.parametrize("bad", ["../../outside/evil", "2026-11-16T010101Z/../../x", "..", "nope"])
def test_a_version_name_is_one_segment_that_exists(tmp_path, threads, bad):
    from gd_dask.jobs.refit import refit

    cfg = config(tmp_path)
    for day in range(2):
        write_night(tmp_path / "data", day, 0.5)
        refit(cfg, threads, night(day))
    reg = Registry(cfg.registry.dir, cfg.name)
    outside = tmp_path / "outside" / "evil"
    outside.mkdir(parents=True)
    (outside / "verdict.json").write_text("{}")
    before = snapshot(reg)
    for cmd in (["promote"], ["show"], ["diff", reg.versions()[0]]):
        res = run_cli("models", *cmd, reg.root, bad)
        assert res.returncode == 2 and "version" in res.stderr, (cmd, res.stderr)
    assert snapshot(reg) == before


def _predict_killed_mid_swap(model, data, out) -> subprocess.CompletedProcess:
    """``gd-dask predict --overwrite`` SIGKILLed between moving OUT_DIR aside and moving
    the new set in (the two-rename swap, as on a disk that cannot exchange folders)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from gd_dask.jobs import score
        score._exchange = lambda a, b: False
        real, calls = score._move_tree, []
        def move(fs, src, dst):
            calls.append(src)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(fs, src, dst)
        score._move_tree = move
        from gd_dask.interfaces.cli import run
        sys.argv = ["gd-dask", "predict", {str(model)!r}, {str(data)!r}, {str(out)!r}, "--overwrite"]
        run()
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_a_predict_killed_mid_swap_is_completed_by_the_next_run_and_leaves_nothing_behind(tmp_path, threads):
    from gd_dask.jobs.refit import refit

    cfg = config(tmp_path)
    write_night(tmp_path / "data", 0, 0.5)
    refit(cfg, threads, night(0))
    model = Path(Registry(cfg.registry.dir, cfg.name).version_dir(Registry(cfg.registry.dir, cfg.name).current()))
    model = model / "model.json"
    out = tmp_path / "preds"
    assert run_cli("predict", model, tmp_path / "data", out).returncode == 0
    first = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert out / "_SUCCESS" in [out / p for p in first]
    assert _predict_killed_mid_swap(model, tmp_path / "data", out).returncode == -signal.SIGKILL
    assert not out.exists()  # the state the issue found: no OUT_DIR
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (tmp_path / f".preds.staging-{socket.gethostname().replace('-', '_')}-{dead.stdout.strip()}-deadbeef").mkdir()
    assert len([p.name for p in tmp_path.iterdir() if p.name.startswith(".preds.")]) == 3
    again = run_cli("predict", model, tmp_path / "data", out, "--overwrite")
    assert again.returncode == 0 and "completed the swap" in again.stderr, again.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == first
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".preds.")]  # nothing left behind


def test_a_sigkill_between_the_event_and_the_nights_record_makes_no_second_version(tmp_path):
    """The event is written, the night's record (what makes a rerun a repeat) is not:
    the next run writes the record from the version, and repeats its verdict."""
    cfg, reg = three_nights(tmp_path)
    killed = refit_killed_in(tmp_path, "put_night_record", signal.SIGKILL, night(3).isoformat())
    assert killed.returncode == -signal.SIGKILL
    versions = reg.versions()
    assert reg.events()[-1]["version"] == versions[-1] and reg.night_record(night(3).isoformat()) is None
    again = run_cli("refit", tmp_path / "c.yaml", "--as-of", night(3).isoformat())
    assert again.returncode == 0 and "nothing to do" in again.stdout, (again.stdout, again.stderr)
    assert reg.versions() == versions and reg.current() == versions[-1]


def test_a_release_killed_halfway_is_a_release(tmp_path, threads):
    """release writes released.json, then lifts the quarantine: killed between, the night
    stands in both, and counts as released (a release's first write); a hand quarantine
    removes the release first, so it never stands in both."""
    from gd_dask.jobs.refit import refit

    cfg = config(tmp_path)
    for day in range(4):
        write_night(tmp_path / "data", day, 0.5)
        refit(cfg, threads, night(day))
    write_night(tmp_path / "data", 4, 0.0)
    assert refit(cfg, threads, night(4)).status == "quarantined"
    reg = Registry(cfg.registry.dir, cfg.name)
    reg._set_released(night(4).isoformat(), {"at": "now", "was": None})  # the first write of a release, alone
    assert night(4).isoformat() in reg.quarantined()
    write_night(tmp_path / "data", 5, 0.5)
    after = refit(cfg, threads, night(5))
    assert after.verdict["train_dates"][-1] == night(4).isoformat(), after.verdict  # trained on, not skipped
