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
from training_platform.worker.queues import EVALUATION, KEY_PREFIX

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
            again = service.stale_scorings(session)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("the evaluation lock expired before the pass ended")
    for evaluation_id, spec in again:
        send_scoring(evaluation_id, spec)
    return {"settled": settled, "scorings_sent_again": len(again)}


def send_scoring(evaluation_id: int, spec: str) -> None:
    """Have a general worker run a queued scoring (an uploaded file, an LLM judge)."""
    app.send_task(
        "tp.evaluation.score", args=[evaluation_id, spec], queue=EVALUATION, routing_key=EVALUATION
    )


@app.task(name="tp.evaluation.score")
def evaluation_score(evaluation_id: int, spec: str) -> dict[str, object]:
    """Run one queued scoring here; a scoring that is not queued (done, or another worker's)
    is skipped, so a message delivered twice scores once."""
    settings = get_settings()
    engine = get_engine(settings)

    def heartbeat(done: int) -> None:
        with Session(engine) as beat:
            service.beat(beat, evaluation_id, spec, done)

    with Session(engine) as session:
        status = service.run_scoring(session, settings, evaluation_id, spec, heartbeat=heartbeat)
    return {"evaluation": evaluation_id, "scorer": spec, "status": status}
