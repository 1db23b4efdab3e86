"""Celery tasks of the surgery context. Thin: each calls the service."""

from __future__ import annotations

import logging

import redis
from sqlmodel import Session

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.jobs.tasks import CeleryDispatcher
from training_platform.surgery import service
from training_platform.worker.app import app
from training_platform.worker.config import redis_url
from training_platform.worker.queues import KEY_PREFIX

log = logging.getLogger(__name__)
TICK_LOCK = f"{KEY_PREFIX}surgery:tick"


@app.task(name="tp.surgery.tick")
def surgery_tick() -> dict[str, object]:
    """Register the model of every merge whose job has succeeded (and settle the others), and
    move sweeps and greedy soups on (evaluate what was merged, register the best); skipped
    while another pass runs (settling is guarded by a compare-and-set, the jobs it starts by
    idempotency keys)."""
    settings = get_settings()
    lock = redis.Redis.from_url(redis_url(settings)).lock(TICK_LOCK, timeout=300, blocking=False)
    if not lock.acquire():
        return {"skipped": True}
    try:
        with Session(get_engine(settings)) as session:
            settled = service.collect_all(session, settings)
            swept, started = service.advance_sweeps(session, settings)
            started += service.advance_greedy_soups(session, settings)
            # In the session: the jobs are read again after their commit.
            dispatcher = CeleryDispatcher()
            for job in started:
                try:
                    dispatcher.dispatch(job)
                except Exception as error:  # stored; the supervisor resends the message
                    log.warning("job %s: start message not sent (%s)", job.id, error)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("the surgery lock expired before the pass ended")
    return {"settled": settled, "sweeps_ended": swept, "jobs_started": len(started)}
