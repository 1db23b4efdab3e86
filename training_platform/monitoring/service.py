"""Reads for live views: a job's state, and the snapshot a (re)connecting client starts from."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from training_platform.jobs import service as jobs
from training_platform.jobs.models import Job
from training_platform.monitoring.schemas import JobState, Point, Snapshot

LOG_TAIL_BYTES = 32 * 1024
SNAPSHOT_POINTS = 100_000


def job_state(job: Job) -> dict[str, Any]:
    """The job as live messages carry it (JSON-ready)."""
    assert job.id is not None
    return JobState(
        id=job.id,
        name=job.name,
        status=job.status,
        attempt=job.attempt,
        version=job.version,
        progress_step=job.progress_step,
        progress_total=job.progress_total,
        error=job.error,
        updated_at=job.updated_at,
    ).model_dump(mode="json")


def read_state(*, session: Session, job_id: int) -> dict[str, Any] | None:
    """The job's live state, or None if it is gone."""
    job = session.get(Job, job_id)
    return job_state(job) if job is not None else None


def snapshot(*, session: Session, job_id: int, last_step: int | None) -> Snapshot:
    """Everything after the client's last step, and the end of the current attempt's log."""
    job = jobs.get_job(session=session, job_id=job_id)
    rows = jobs.read_metrics(
        session=session, job_id=job_id, since_step=last_step, keys=(), limit=SNAPSHOT_POINTS
    )
    points = [Point(step=r.step, key=r.key, value=r.value) for r in rows]
    end = job.log_offset
    start = max(0, end - LOG_TAIL_BYTES)
    _, _, data, _ = jobs.read_log(
        session=session, job_id=job_id, attempt=None, offset=start, limit=end - start
    )
    if start > 0 and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]  # start on a whole line
    return Snapshot(
        job_id=job_id,
        job=JobState.model_validate(job_state(job)),
        points=points,
        last_step=points[-1].step if points else last_step,
        log_attempt=job.attempt,
        log_offset=end,
        log_tail=data.decode("utf-8", errors="replace"),
    )
