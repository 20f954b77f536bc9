"""Issue 28: a night is judged by its own evidence; drift is followed and reported; reruns
are idempotent; a false alarm is released and a night refused by hand."""

import json

import numpy as np
import pytest

from conftest import run_cli
from nights import config, night, snapshot, write_night
from gd_dask.kernels.moments import Moments, block_moments
from gd_dask.jobs.refit import refit
from gd_dask.artifacts.registry import Registry
from gd_dask.jobs.guard import OwnFit

def test_the_own_fit_from_moments_is_numpys_least_squares_with_statsmodels_standard_errors(rng):
    X = rng.normal(size=(500, 3)) * [1, 10, 100] + [5, -3, 50]
    y = X @ [0.5, -2.0, 0.01] + 7 + rng.normal(size=500)
    fit = OwnFit.of(block_moments(np.column_stack([X, y])))
    A = np.column_stack([X, np.ones(500)])
    coef, ssr, *_ = np.linalg.lstsq(A, y, rcond=None)
    sigma2 = ssr[0] / (500 - 4)
    se = np.sqrt(np.diag(np.linalg.inv(A.T @ A)) * sigma2)
    np.testing.assert_allclose(fit.coef, coef, rtol=1e-9)
    np.testing.assert_allclose(fit.se, se, rtol=1e-9)
    assert fit.r2 == pytest.approx(1 - ssr[0] / ((y - y.mean()) ** 2).sum(), rel=1e-12)
    assert fit.resid_sd == pytest.approx(np.sqrt(sigma2), rel=1e-12)
    assert OwnFit.of(Moments(4, np.zeros(4), np.eye(4))) is None  # no residual degrees of freedom


def test_the_issues_drifting_nights_all_promote_and_report_drift(tmp_path, threads):
    """The issue's job: window 3, the slope +0.01 a night (2 %). Today's guard froze it
    from night 3 on; now every night promotes and the model follows the slope."""
    cfg = config(tmp_path)
    outcomes = []
    for day in range(14):
        write_night(tmp_path / "data", day, 0.5 + 0.01 * day)
        outcomes.append(refit(cfg, threads, night(day)))
    assert [o.status for o in outcomes] == ["promoted"] * 14, [o.message for o in outcomes]
    reg = Registry(cfg.registry.dir, cfg.name)
    slope_now = reg.current_model()["m"][0]
    assert abs(slope_now - 0.62) < 0.025  # trained on nights 11-12 (slopes 0.61, 0.62)
    drift = [o.verdict.get("drift") for o in outcomes[3:]]
    assert any(d and d[0]["column"] == "x" and d[0]["relative"] > 0 for d in drift)
    event = reg.events()[-1]
    assert event["staleness"]["metric"] == "rmse" and event["night_fit"]["r2"] > 0.9


def test_a_step_change_is_followed_not_quarantined(tmp_path, threads):
    cfg = config(tmp_path)
    statuses, slopes = [], []
    for day in range(16):
        write_night(tmp_path / "data", day, 0.5 if day < 8 else 0.8)
        o = refit(cfg, threads, night(day))
        statuses.append(o.status)
        slopes.append(Registry(cfg.registry.dir, cfg.name).current_model()["m"][0])
        if day == 8:
            assert o.verdict["drift"] and o.verdict["drift"][0]["z"] > 100, o.verdict
    assert "quarantined" not in statuses, statuses
    caught_up = next(d for d in range(8, 16) if abs(slopes[d] - 0.8) < 0.008)
    assert caught_up - 8 <= 3 + 1  # window_days + holdout_days nights


def test_a_shuffled_night_is_quarantined_and_the_next_good_night_promotes(tmp_path, threads):
    cfg = config(tmp_path)
    for day in range(5):
        write_night(tmp_path / "data", day, 0.5)
        assert refit(cfg, threads, night(day)).promoted
    write_night(tmp_path / "data", 5, 0.5, kind="shuffled")
    bad = refit(cfg, threads, night(5))
    assert bad.status == "quarantined" and {c["check"] for c in bad.verdict["checks"]} >= {"r2_drop"}
    for day in (6, 7, 8):  # the stale model does not feed on itself: later nights promote
        write_night(tmp_path / "data", day, 0.5)
        assert refit(cfg, threads, night(day)).promoted


def good_nights(tmp_path, threads, nights: int):
    """A registry after ``nights`` good nights, each refit as it landed."""
    cfg = config(tmp_path)
    for day in range(nights):
        write_night(tmp_path / "data", day, 0.5)
        refit(cfg, threads, night(day))
    return cfg, Registry(cfg.registry.dir, cfg.name)


def test_reruns_repeat_the_verdict_and_write_nothing(tmp_path, threads):
    cfg, reg = good_nights(tmp_path, threads, 4)
    write_night(tmp_path / "data", 4, 0.5, kind="shuffled")
    assert refit(cfg, threads, night(4)).status == "quarantined"
    write_night(tmp_path / "data", 5, 0.5)
    assert refit(cfg, threads, night(5)).status == "promoted"

    before = snapshot(reg)
    for day, status in [(4, "quarantined"), (5, "promoted"), (3, "promoted"), (4, "quarantined")]:
        again = refit(cfg, threads, night(day))
        assert again.status == status and "nothing to do" in again.message, again.message
        assert snapshot(reg) == before


def test_a_quarantined_night_whose_files_were_fixed_is_judged_again(tmp_path, threads):
    cfg, reg = good_nights(tmp_path, threads, 4)
    write_night(tmp_path / "data", 4, 0.5, kind="shuffled")
    assert refit(cfg, threads, night(4)).status == "quarantined"
    write_night(tmp_path / "data", 4, 0.5, seed=1)  # the upstream job reran and wrote it right
    fixed = refit(cfg, threads, night(4))
    assert fixed.status == "promoted", fixed.message
    assert night(4).isoformat() not in reg.quarantined()


def test_release_undoes_a_false_alarm_and_quarantine_refuses_a_night_by_hand(tmp_path, threads):
    cfg, reg = good_nights(tmp_path, threads, 4)
    write_night(tmp_path / "data", 4, 0.0)  # the relation really vanished: R² collapses, an alarm
    assert refit(cfg, threads, night(4)).status == "quarantined"
    model = str(reg.root)
    out = run_cli("models", "release", model, night(4).isoformat())
    assert out.returncode == 0 and "released" in out.stdout, out.stderr
    released = refit(cfg, threads, night(4))  # the rerun judges it again, its checks waived
    assert released.status in ("promoted", "rejected") and released.verdict["waived"], released.message
    assert night(4).isoformat() not in reg.quarantined()

    write_night(tmp_path / "data", 5, 0.5)
    out = run_cli("models", "quarantine", model, night(5).isoformat(), "--reason", "upstream outage")
    assert out.returncode == 0, out.stderr
    before = snapshot(reg)
    held = refit(cfg, threads, night(5))
    assert held.status == "quarantined" and snapshot(reg) == before
    write_night(tmp_path / "data", 6, 0.5)
    after = refit(cfg, threads, night(6))
    assert night(5).isoformat() not in after.verdict["train_dates"] + after.verdict["holdout_dates"]
    assert [(e["status"], e.get("by")) for e in reg.events() if e.get("by") == "hand"] == \
        [("released", "hand"), ("quarantined", "hand")]
    assert run_cli("models", "release", model, "yesterday").returncode == 2


def test_cli_reruns_keep_exit_3_for_a_quarantined_night(tmp_path):
    cfg = config(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    for day in range(4):
        write_night(tmp_path / "data", day, 0.5)
    write_night(tmp_path / "data", 4, 0.5, kind="shuffled")
    for day in range(4):
        assert run_cli("refit", path, "--as-of", night(day).isoformat()).returncode == 0
    first = run_cli("refit", path, "--as-of", night(4).isoformat())
    retry = run_cli("refit", path, "--as-of", night(4).isoformat())  # an orchestrator's retry
    assert first.returncode == retry.returncode == 3, (first.stdout, retry.stdout)
    assert "quarantined" in retry.stdout and "nothing to do" in retry.stdout
