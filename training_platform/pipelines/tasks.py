"""Celery tasks of the pipelines context. Thin: each calls the engine."""

from __future__ import annotations

import logging

import redis

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.jobs.tasks import CeleryDispatcher
from training_platform.pipelines import engine
from training_platform.worker.app import app
from training_platform.worker.config import redis_url
from training_platform.worker.queues import KEY_PREFIX

log = logging.getLogger(__name__)
TICK_LOCK = f"{KEY_PREFIX}pipelines:tick"


@app.task(name="tp.pipelines.tick")
def pipelines_tick() -> dict[str, object]:
    """Advance every pipeline that has not ended; skipped while another pass still runs.

    The lock only saves work: the engine is safe to run twice at once.
    """
    settings = get_settings()
    lock = redis.Redis.from_url(redis_url(settings)).lock(TICK_LOCK, timeout=120, blocking=False)
    if not lock.acquire():
        return {"skipped": True}
    try:
        ended = engine.advance_all(get_engine(settings), settings, CeleryDispatcher())
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("the pipelines lock expired before the pass ended")
    return {"ended": ended}
