"""The job state machine: the one place that changes a job's status.

Every change is a compare-and-set on (id, version, status) plus a JobEvent row in the same
transaction, so two processes can never both move the same job, and every move is audited.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlmodel import Session

from training_platform.core.errors import Conflict
from training_platform.core.types import utcnow
from training_platform.jobs.models import Job, JobEvent
from training_platform.scheduling.service import release


class JobStatus(StrEnum):
    """Where a job is in its life."""

    PENDING = "pending"  # stored; its dataset is being prepared (later: waiting upstream)
    QUEUED = "queued"  # due: the scheduler gives it devices, then a worker starts it
    RESUMING = "resuming"  # a paused job asked to go on: waiting for devices, or being continued
    STARTING = "starting"  # a worker took it and is launching the process
    RUNNING = "running"  # the training process runs
    STALLED = "stalled"  # the process runs but its log and metrics stopped advancing
    PAUSING = "pausing"  # asked to checkpoint and stop (or to be suspended)
    PAUSED = "paused"  # stopped at a checkpoint (devices free) or suspended (devices held)
    STOPPING = "stopping"  # a policy (time limit, stall) is stopping the process
    CANCELLING = "cancelling"  # cancel requested; the process group is being stopped
    SUCCEEDED = "succeeded"  # the process exited 0
    FAILED = "failed"  # the process exited non-zero, vanished, or could not start
    CANCELLED = "cancelled"  # stopped on request


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Statuses in which a training process may exist and must be watched.
ACTIVE = frozenset(
    {
        JobStatus.STARTING,
        JobStatus.RUNNING,
        JobStatus.STALLED,
        JobStatus.PAUSING,
        JobStatus.STOPPING,
        JobStatus.CANCELLING,
    }
)
# Statuses of a suspended run (pause mode "suspend"): its process group exists, stopped.
HELD = frozenset({JobStatus.PAUSED, JobStatus.RESUMING})
# Statuses in which a job waits for the scheduler to give it devices.
WAITING = frozenset({JobStatus.QUEUED, JobStatus.RESUMING})

SUSPEND = "suspend"
CHECKPOINT = "checkpoint"

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.QUEUED: frozenset({JobStatus.STARTING, JobStatus.CANCELLED, JobStatus.PENDING}),
    # A resumed attempt waits for devices like a queued one; a suspended run is continued
    # in place (RUNNING), or dies while it was suspended (FAILED).
    JobStatus.RESUMING: frozenset(
        {
            JobStatus.STARTING,
            JobStatus.RUNNING,
            JobStatus.CANCELLED,
            JobStatus.CANCELLING,
            JobStatus.FAILED,
        }
    ),
    JobStatus.STARTING: frozenset(
        {JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLING, JobStatus.QUEUED}
    ),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLING,
            JobStatus.STALLED,
            JobStatus.PAUSING,
            JobStatus.STOPPING,
        }
    ),
    JobStatus.STALLED: frozenset(
        {
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLING,
            JobStatus.PAUSING,
            JobStatus.STOPPING,
        }
    ),
    # A run asked to pause may still finish, or fail, before it stops.
    JobStatus.PAUSING: frozenset(
        {JobStatus.PAUSED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLING}
    ),
    JobStatus.PAUSED: frozenset(
        {JobStatus.RESUMING, JobStatus.CANCELLED, JobStatus.CANCELLING, JobStatus.FAILED}
    ),
    JobStatus.STOPPING: frozenset({JobStatus.FAILED, JobStatus.SUCCEEDED, JobStatus.CANCELLING}),
    # Once cancel was asked for, the job ends cancelled however the process ended; the
    # event records the exit code or signal.
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.PENDING, JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.PENDING, JobStatus.QUEUED}),
}


class StaleJob(Conflict):
    """Someone else changed the job first; re-read it and decide again."""


def can_transition(source: JobStatus, target: JobStatus) -> bool:
    """Whether the table allows source -> target."""
    return target in TRANSITIONS[source]


def transition(
    session: Session,
    job: Job,
    target: JobStatus,
    *,
    actor: str,
    reason: str,
    values: dict[str, Any] | None = None,
    detail: str | None = None,
) -> Job:
    """Move `job` to `target` if nobody moved it since it was read; flush, do not commit.

    `values` are further columns written in the same UPDATE (exit code, handle, timestamps);
    `detail` is stored with the event (a stack dump, a log tail).
    Raises Conflict if the table forbids the move and StaleJob if the job changed meanwhile.
    """
    source = JobStatus(job.status)
    if not can_transition(source, target):
        raise Conflict(f"job {job.id} is {source.value}; it cannot become {target.value}")
    now = utcnow()
    columns: dict[str, Any] = dict(values or {})
    columns.update(status=target.value, version=job.version + 1, updated_at=now)
    if target is JobStatus.RUNNING and job.started_at is None and "started_at" not in columns:
        columns["started_at"] = now
    if target in TERMINAL and "finished_at" not in columns:
        columns["finished_at"] = now
    statement = (
        update(Job)
        .where(Job.id == job.id, Job.version == job.version, Job.status == source.value)  # type: ignore[arg-type]
        .values(**columns)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(statement)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise StaleJob(f"job {job.id} changed while moving it to {target.value}; try again")
    assert job.id is not None
    if _frees_devices(job, target, columns):
        # Devices go back the moment the job stops needing them, in the same transaction,
        # and only leases still active are touched: each is released exactly once.
        release(session=session, job_id=job.id, reason=f"job {target.value}: {reason}")
    session.add(
        JobEvent(
            job_id=job.id,
            attempt=columns.get("attempt", job.attempt),
            from_status=source.value,
            to_status=target.value,
            actor=actor,
            reason=reason,
            detail=detail,
            created_at=now,
        )
    )
    session.flush()
    session.refresh(job)
    return job


def _frees_devices(job: Job, target: JobStatus, columns: dict[str, Any]) -> bool:
    if target in TERMINAL or target is JobStatus.QUEUED:
        return True
    # Paused at a checkpoint, the process is gone and the devices are free for others; a
    # suspended process still holds its GPU memory, so it keeps its devices.
    mode = columns.get("pause_mode", job.pause_mode)
    return target is JobStatus.PAUSED and mode != SUSPEND


def note(session: Session, job: Job, *, actor: str, reason: str, detail: str | None = None) -> None:
    """Record an event that changes no status (a policy decision, a stop request)."""
    assert job.id is not None
    session.add(
        JobEvent(
            job_id=job.id,
            attempt=job.attempt,
            from_status=job.status,
            to_status=job.status,
            actor=actor,
            reason=reason,
            detail=detail,
            created_at=utcnow(),
        )
    )
    session.flush()
