"""Celery tasks of scheduling: refresh this node's inventory, run a scheduling pass."""

from __future__ import annotations

import logging
from typing import Any

import redis

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.jobs.tasks import CeleryDispatcher
from training_platform.scheduling import scheduler, service
from training_platform.worker.app import app
from training_platform.worker.config import redis_url
from training_platform.worker.queues import KEY_PREFIX

log = logging.getLogger(__name__)
PASS_LOCK = f"{KEY_PREFIX}scheduler:pass"
PASS_AGAIN = f"{KEY_PREFIX}scheduler:again"


def run_pass() -> dict[str, Any]:
    """A scheduling pass; if another is running, ask it to go round once more instead.

    The lock only saves work: leases are safe without it (the database refuses a device twice).
    """
    settings = get_settings()
    client = redis.Redis.from_url(redis_url(settings))
    lock = client.lock(PASS_LOCK, timeout=120, blocking=False)
    if not lock.acquire():
        client.set(PASS_AGAIN, "1", ex=120)
        return {"deferred": True}
    placed: list[int] = []
    try:
        for _ in range(5):
            client.delete(PASS_AGAIN)
            report = scheduler.schedule(
                get_engine(settings), settings, dispatch=CeleryDispatcher().dispatch
            )
            placed.extend(report.placed)
            if not client.get(PASS_AGAIN):
                break
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("the scheduler lock expired before the pass ended")
    return {"placed": placed}


@app.task(name="tp.scheduling.pass")
def scheduling_pass() -> dict[str, Any]:
    """Give queued jobs devices."""
    return run_pass()


@app.task(name="tp.scheduling.refresh")
def refresh_inventory() -> dict[str, Any]:
    """Read this node's GPUs into the inventory."""
    settings = get_settings()
    host = service.refresh_local(get_engine(settings), settings)
    return {"host": host.name, "gpu_source": host.gpu_source}
