"""Schedulable entry point: the nightly refit (cron, systemd timer, Kubernetes CronJob).

    python jobs/nightly_refit.py configs/nightly.yaml [--as-of YYYY-MM-DD] [--scheduler ADDR]

No math here: window, warm start, statistics cache, gate and promotion live in
gd_dask.jobs.refit. Exit status 0 when promoted, 3 when the challenger was rejected or the night
quarantined (current untouched; the verdict is printed), 1 on failure, 2 on a bad config.
A rerun of an as-of date repeats its verdict and exit status and writes nothing.
"""

import sys

from gd_dask.interfaces.cli import run

if __name__ == "__main__":
    sys.argv[1:1] = ["refit"]
    run()
