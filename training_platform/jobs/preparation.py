"""Preparing a pending job: convert its dataset for the backend, record what it will run on.

Runs on the preprocessing queue. Idempotent: only a pending job of the expected attempt is
prepared, and the move to queued is a compare-and-set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from training_platform.backends.base import get_backend, validate_parameters
from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry, ModelEntry
from training_platform.core.errors import DomainError
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.datasets import service as datasets
from training_platform.datasets import versions as dataset_versions
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
        backend = get_backend(job.backend, job.algorithm)
        task = backend.data_task
        if task is None:
            return _queue(session, job, actor, "nothing to prepare: it takes no dataset", {})
        dataset = session.get(DatasetEntry, job.dataset_id)
        try:
            if dataset is None:
                raise DomainError("the job's dataset was deleted")
            version = dataset_versions.pinned(
                session=session, entry=dataset, number=job.dataset_version
            )
            prepared = datasets.prepare(settings, version, task, job.spec.get("validation"))
            unfit = _examples_unfit(session, settings, job, backend, prepared.path)
            if unfit is not None:
                raise DomainError(unfit)
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
        inputs = {"dataset": prepared.as_input(settings.home, dataset, version)}
        reason = (
            f"dataset prepared: version {version.number}, {prepared.rows} rows of {task} data, "
            f"sha256 {prepared.sha256[:12]}"
        ) + (f", {prepared.validation.rows} held out" if prepared.validation else "")
        return _queue(session, job, actor, reason, inputs)


def _examples_unfit(
    session: Session, settings: Settings, job: Job, backend: Any, dataset_path: Path
) -> str | None:
    """What the backend finds wrong with the prepared examples for this job (verl SFT: one
    longer than max_length), before the job is queued and holds devices; None when nothing,
    or when the model's tokenizer is not on this machine (a hub id, a remote host's path)."""
    check = getattr(backend, "check_examples", None)
    model = session.get(ModelEntry, job.model_id) if job.model_id is not None else None
    if check is None or model is None:
        return None
    location, is_local = catalog.model_location(settings, model)
    if not is_local or not Path(location).is_dir():
        log.info("job %s: examples not measured: the model is not on this machine", job.id)
        return None
    parameters = validate_parameters(
        backend, job.spec["hyperparameters"], gpus=int(job.spec.get("resources", {}).get("gpus", 0))
    )
    unfit: str | None = check(parameters, location, dataset_path)
    return unfit


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
