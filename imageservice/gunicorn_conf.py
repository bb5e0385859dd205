"""gunicorn hooks, loaded by `manage.py serve` (`--config python:imageservice.gunicorn_conf`)."""

import os
import shutil

from prometheus_client import multiprocess

# `serve` names the metrics directory it makes in shared memory with this (one per instance).
METRICS_DIR_PREFIX = "image-service-metrics-"


def child_exit(server, worker) -> None:
    """A dead worker's live gauges must not be summed any more."""
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """The metrics directory that `serve` made in shared memory goes with the server: files there
    take memory, and a new start makes a fresh one anyway."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(directory).startswith(METRICS_DIR_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
