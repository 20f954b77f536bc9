"""Issue 28: a year of simulated nights per scenario, real refits on real files, at default
``registry.validate`` settings (benchmarks/nightly_year.py; the same runs print their
table under ``make bench``)."""

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import nightly_year as ny  # noqa: E402


@pytest.fixture(scope="module")
def year():
    """Every scenario's year, the scenarios on every core (spawned processes)."""
    with ProcessPoolExecutor(min(os.cpu_count() or 1, len(ny.SCENARIOS)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(ny.SCENARIOS, pool.map(ny.run_year, ny.SCENARIOS)))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", ny.SCENARIOS)
def test_a_year_of_nights_quarantines_every_bad_night_and_nothing_else(year, scenario):
    r = year[scenario]
    print("\n" + ny.table([r]))
    assert r["nights"] == 365 and r["bad_nights"] == 2 * len(ny.BAD_KINDS)
    assert r["false_quarantines"] == 0, r["false"]
    assert r["missed_bad_nights"] == 0, r["missed"]
    assert r["not_promoted_after_bad"] == 0  # the next good night promotes
    assert r["lag_max"] <= 2, r  # never more than 2 nights behind the oracle's refit


def test_after_a_step_change_the_model_is_within_1_percent_in_window_plus_holdout_nights(year):
    catch_up = year["step"]["step_catch_up"]
    assert catch_up is not None and catch_up <= ny.WINDOW_DAYS + ny.HOLDOUT_DAYS


def test_drift_is_reported_on_drifting_nights_and_rarely_on_steady_ones(year):
    assert year["drift 3%"]["drift_reports"] > 300
    assert year["step"]["drift_reports"] < 20
