"""Celery tasks of monitoring. Thin: they call the services."""

from __future__ import annotations

from sqlmodel import Session

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.monitoring import webhooks
from training_platform.worker.app import app


@app.task(name="tp.monitoring.notify")
def notify() -> dict[str, int]:
    """Turn new job events and alerts into webhook deliveries, and send what is due."""
    settings = get_settings()
    with Session(get_engine(settings)) as session:
        read = webhooks.collect(session=session)
        return {"read": read, **webhooks.send(session=session, settings=settings)}
