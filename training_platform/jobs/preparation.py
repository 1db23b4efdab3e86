"""Preparing a pending job: convert its dataset for the backend, record what it will run on.

Runs on the preprocessing queue. Idempotent: only a pending job of the expected attempt is
prepared, and the move to queued is a compare-and-set.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from training_platform.backends.base import get_backend
from training_platform.catalog.models import DatasetEntry
from training_platform.core.errors import DomainError
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.datasets import service as datasets
from training_platform.jobs.models import Job
from training_platform.jobs.state import JobStatus, StaleJob, transition

log = logging.getLogger(__name__)


def prepare_job(
    engine: Engine, settings: Settings, *, job_id: int, attempt: int, actor: str
) -> Job | None:
    """Prepare the job's dataset and queue it; the job if it is now queued, else None."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        if job is None or job.attempt != attempt or job.status != JobStatus.PENDING.value:
            return None
        task = get_backend(job.backend, job.algorithm).data_task
        if task is None:
            return _queue(session, job, actor, "nothing to prepare: it takes no dataset", {})
        dataset = session.get(DatasetEntry, job.dataset_id)
        try:
            if dataset is None:
                raise DomainError("the job's dataset was deleted")
            prepared = datasets.prepare(settings, dataset, task)
        except (DomainError, OSError, ValueError) as error:
            message = getattr(error, "message", str(error))
            log.warning("job %s: dataset preparation failed: %s", job_id, message)
            try:
                transition(
                    session,
                    job,
                    JobStatus.FAILED,
                    actor=actor,
                    reason="dataset preparation failed",
                    values={"error": f"dataset preparation failed: {message}"},
                )
                session.commit()
            except StaleJob:
                pass
            return None
        inputs = {"dataset": prepared.as_input(settings.home, dataset)}
        reason = (
            f"dataset prepared: {prepared.rows} rows of {task} data, sha256 {prepared.sha256[:12]}"
        )
        return _queue(session, job, actor, reason, inputs)


def _queue(
    session: Session, job: Job, actor: str, reason: str, inputs: dict[str, Any]
) -> Job | None:
    try:
        transition(
            session,
            job,
            JobStatus.QUEUED,
            actor=actor,
            reason=reason,
            # No start message yet: the scheduler sends it once the job holds devices.
            values={
                "inputs": {**(job.inputs or {}), **inputs},
                "queued_at": utcnow(),
                "dispatched_at": None,
            },
        )
        session.commit()
    except StaleJob:
        return None  # cancelled (or prepared by another delivery) meanwhile
    return job
