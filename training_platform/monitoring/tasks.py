"""Celery tasks of monitoring. Thin: they call the services."""

from __future__ import annotations

from sqlmodel import Session

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.monitoring import webhooks
from training_platform.worker.app import app
from training_platform.worker.queues import PRIORITY_MAX, broker_priority


@app.task(name="tp.monitoring.notify")
def notify() -> dict[str, int]:
    """Turn new job events and alerts into webhook deliveries, and send what is due."""
    settings = get_settings()
    with Session(get_engine(settings)) as session:
        read = webhooks.collect(session=session)
        return {"read": read, **webhooks.send(session=session, settings=settings)}


def notifications_tick() -> dict[str, int]:
    """The maintenance tick's pass: turn new events into deliveries, and hand the sending to
    the notify task only when a delivery is due (a slow webhook never holds up the tick; an
    idle platform sends no second message each period)."""
    settings = get_settings()
    with Session(get_engine(settings)) as session:
        read = webhooks.collect(session=session)
        due = webhooks.due_count(session=session)
    if due:
        notify.apply_async(priority=broker_priority(PRIORITY_MAX))
    return {"read": read, "due": due}
