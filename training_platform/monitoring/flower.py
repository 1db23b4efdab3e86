"""Flower as the platform runs it: `python -m training_platform.monitoring.flower [options]`.

Flower answers /metrics and /healthcheck without asking for credentials even when basic auth
is on (flower.views.monitor): the platform's Flower requires them there too, then starts as
`celery -A training_platform.worker.app flower` would.
"""

from __future__ import annotations

import sys

_GUARDED: set[type] = set()


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

    sys.argv = ["celery", "-A", "training_platform.worker.app", "flower", *sys.argv[1:]]
    celery()


if __name__ == "__main__":
    main()
