"""Celery tasks of the evaluation context. Thin: each calls the service."""

from __future__ import annotations

import logging

import redis
from sqlmodel import Session

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.evaluation import service
from training_platform.jobs.tasks import runners_here
from training_platform.worker.app import app
from training_platform.worker.config import redis_url
from training_platform.worker.queues import KEY_PREFIX

log = logging.getLogger(__name__)
TICK_LOCK = f"{KEY_PREFIX}evaluation:tick"


@app.task(name="tp.evaluation.tick")
def evaluation_tick() -> dict[str, object]:
    """Store the generations of every evaluation whose job has ended; skipped while another
    pass runs (the lock only saves work: collecting is guarded by a compare-and-set)."""
    settings = get_settings()
    lock = redis.Redis.from_url(redis_url(settings)).lock(TICK_LOCK, timeout=300, blocking=False)
    if not lock.acquire():
        return {"skipped": True}
    try:
        with Session(get_engine(settings)) as session:
            settled = service.collect_all(session, runners_here())
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("the evaluation lock expired before the pass ended")
    return {"settled": settled}
