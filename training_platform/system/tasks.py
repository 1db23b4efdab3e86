"""Platform-wide tasks: the maintenance tick beat sends every supervisor period, and a ping
that records when it ran (so callers can measure round trips and ordering)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import redis

from training_platform.core.settings import get_settings
from training_platform.evaluation.tasks import evaluation_tick
from training_platform.jobs.tasks import supervisor_tick
from training_platform.monitoring.tasks import notifications_tick
from training_platform.pipelines.tasks import pipelines_tick
from training_platform.serving.tasks import serving_tick
from training_platform.surgery.tasks import surgery_tick
from training_platform.worker.app import app
from training_platform.worker.config import redis_url
from training_platform.worker.queues import KEY_PREFIX

PING_LIST = f"{KEY_PREFIX}ping:"

log = logging.getLogger(__name__)

# In this order: a job the supervisor finishes has its merge's model registered, advances its
# pipeline, has its evaluation collected and (a serve job) its endpoint registered or dropped
# in the same pass, and its webhook deliveries made (sent by their own task).
MAINTENANCE: tuple[tuple[str, Callable[[], dict[str, Any]]], ...] = (
    ("supervisor", supervisor_tick),
    ("surgery", surgery_tick),
    ("pipelines", pipelines_tick),
    ("evaluation", evaluation_tick),
    ("serving", serving_tick),
    ("notifications", notifications_tick),
)


@app.task(name="tp.system.tick")
def maintenance_tick() -> dict[str, Any]:
    """The supervisor, surgery, pipelines, evaluation, serving and notification passes, one
    after another, as one task.

    One message per period instead of several is most of what an idle platform spends. Each
    pass keeps its own lock, and runs even when one before it failed.
    """
    report: dict[str, Any] = {}
    for name, run in MAINTENANCE:
        try:
            report[name] = run()
        except Exception as error:
            log.exception("the %s pass failed", name)
            report[name] = {"error": f"{type(error).__name__}: {error}"}
    return report


@app.task(name="tp.system.ping")
def ping(channel: str, label: str) -> None:
    """Append `label`, the time it ran and the worker process to the list tp:ping:<channel>."""
    client = redis.Redis.from_url(redis_url(get_settings()))
    client.rpush(PING_LIST + channel, f"{label} {time.time()} {os.getpid()}")
    client.expire(PING_LIST + channel, 3600)
