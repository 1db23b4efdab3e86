"""Celery tasks of the serving context. Thin: each calls the service."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.jobs.tasks import runners_here
from training_platform.serving import service
from training_platform.worker.app import app


@app.task(name="tp.serving.tick")
def serving_tick() -> dict[str, object]:
    """Register the servers of running serve jobs; drop those of jobs that stopped."""
    with Session(get_engine(get_settings())) as session:
        try:
            changed = service.sync_endpoints(session, runners_here())
        except IntegrityError:
            # Another pass registered the same job's server first: nothing left to do.
            session.rollback()
            changed = 0
    return {"changed": changed}
