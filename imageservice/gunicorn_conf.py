"""gunicorn hooks, loaded by `manage.py serve` (`--config python:imageservice.gunicorn_conf`)."""

from prometheus_client import multiprocess


def child_exit(server, worker) -> None:
    """A dead worker's live gauges must not be summed any more."""
    multiprocess.mark_process_dead(worker.pid)
