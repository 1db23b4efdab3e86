"""Celery tasks of the surgery context. Thin: each calls the service."""

from __future__ import annotations

import logging

import redis
from sqlmodel import Session

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.surgery import service
from training_platform.worker.app import app
from training_platform.worker.config import redis_url
from training_platform.worker.queues import KEY_PREFIX

log = logging.getLogger(__name__)
TICK_LOCK = f"{KEY_PREFIX}surgery:tick"


@app.task(name="tp.surgery.tick")
def surgery_tick() -> dict[str, object]:
    """Register the model of every merge whose job has succeeded (and settle the others);
    skipped while another pass runs (settling is guarded by a compare-and-set as well)."""
    settings = get_settings()
    lock = redis.Redis.from_url(redis_url(settings)).lock(TICK_LOCK, timeout=300, blocking=False)
    if not lock.acquire():
        return {"skipped": True}
    try:
        with Session(get_engine(settings)) as session:
            settled = service.collect_all(session, settings)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("the surgery lock expired before the pass ended")
    return {"settled": settled}
