"""Flower as the platform runs it: `python -m training_platform.monitoring.flower [options]`.

Flower answers /metrics and /healthcheck without asking for credentials even when basic auth
is on (flower.views.monitor): the platform's Flower requires them there too, then starts as
`celery -A training_platform.worker.app flower` would. Its tasks page shows the arguments
column: a job's message spells out the job's name and attempt there (jobs/tasks.py).
"""

from __future__ import annotations

import sys

_GUARDED: set[type] = set()
TASK_COLUMNS = "name,uuid,state,args,received,started,runtime,worker"


def require_auth_everywhere() -> None:
    """Every Flower handler that skips the login check gets it."""
    from flower.views import monitor
    from tornado.web import authenticated

    for handler in (monitor.Metrics, monitor.Healthcheck):
        if handler not in _GUARDED:
            handler.get = authenticated(handler.get)
            _GUARDED.add(handler)


def main() -> None:
    """Run Flower with the platform's Celery app and these arguments."""
    require_auth_everywhere()
    from celery.bin.celery import main as celery

    given = sys.argv[1:]
    columns = (
        []
        if any(a.startswith("--tasks_columns") for a in given)
        else [f"--tasks_columns={TASK_COLUMNS}"]
    )
    sys.argv = ["celery", "-A", "training_platform.worker.app", "flower", *columns, *given]
    celery()


if __name__ == "__main__":
    main()
