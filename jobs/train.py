"""Schedulable entry point: train once from a run config.

    python jobs/train.py configs/example.yaml [--set key.path=value ...] [--scheduler ADDR]

No math here: load the config, connect, fit, save, exit status — all through the CLI.
"""

import sys

from gd_dask.interfaces.cli import run

if __name__ == "__main__":
    sys.argv[1:1] = ["train"]
    run()
