"""Celery tasks of remote hosts. Thin: they call the service."""

from __future__ import annotations

from sqlmodel import Session

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.hosts import service
from training_platform.worker.app import app


@app.task(name="tp.hosts.refresh")
def refresh_hosts() -> dict[str, str]:
    """Check every registered host: environment, GPUs, reachability."""
    settings = get_settings()
    with Session(get_engine(settings)) as session:
        return service.refresh_all(session=session, settings=settings)
