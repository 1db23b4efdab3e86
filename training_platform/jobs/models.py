"""Tables of the jobs context: jobs, their events, metrics, log chunks and checkpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

# The tables jobs refer to (users, projects) must be in the metadata wherever Job is used.
from training_platform.auth import models as _users  # noqa: F401
from training_platform.core.types import JSONType, UTCDateTime, utcnow
from training_platform.projects import models as _projects  # noqa: F401


def _fk_job() -> Any:
    return Field(
        sa_column=Column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    )


class Job(SQLModel, table=True):
    """One training job and everything needed to start, watch and finish it."""

    __tablename__ = "jobs"
    # Ids name run directories: SQLite must never hand out a deleted job's id again.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    backend: str = Field(max_length=32)
    algorithm: str = Field(max_length=32)
    # None for an evaluation of an endpoint (the model is behind it, not in the catalog).
    model_id: int | None = Field(default=None, foreign_key="models.id", index=True)
    # None for an algorithm that takes no data (serve).
    dataset_id: int | None = Field(default=None, foreign_key="datasets.id", index=True)
    dataset_version: int | None = None  # the version number it was submitted on (pinned)
    spec: dict[str, Any] = Field(sa_type=JSONType)
    priority: int = Field(index=True)
    queue: str = Field(max_length=32)
    status: str = Field(max_length=16, index=True)
    version: int = 1
    attempt: int = 1
    created_by: str = Field(max_length=200)
    # Whose work it is (projects/): its project's quota and fair share order it.
    project_id: int | None = Field(default=None, foreign_key="projects.id", index=True)
    user_id: int | None = Field(default=None, foreign_key="users.id", index=True)
    # Placed above its project's guarantee: it may be paused (checkpoint and stop) and
    # requeued when a job within its own project's guarantee waits for its GPUs.
    preemptible: bool = False
    preempted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True)
    request_hash: str | None = Field(default=None, max_length=64)

    node: str | None = Field(default=None, max_length=200)
    runner: str | None = Field(default=None, max_length=32)
    runner_handle: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    plan: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    outputs: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    # What the current attempt runs on: the prepared dataset (path, sha256, rows) and, for a
    # resumed attempt, the checkpoint it continues from.
    inputs: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    exit_code: int | None = None
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Why the last attempt ended, as the retry policy names it (killed, crashed, lost, error,
    # stalled, time_limit, stopped); None while it runs or when it succeeded.
    end_cause: str | None = Field(default=None, max_length=32)
    # When the retry policy starts the next attempt of this failed job (None: it will not).
    retry_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # "checkpoint" or "suspend" while a pause is asked for, held or being resumed.
    pause_mode: str | None = Field(default=None, max_length=16)
    # When a checkpoint-and-stop was asked of the run (pause, time limit).
    stop_requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # When the run's log or metrics last grew (hang detection).
    last_progress_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    dispatch_count: int = 0
    dispatched_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancel_requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    log_offset: int = Field(default=0, sa_type=BigInteger)
    metrics_offset: int = Field(default=0, sa_type=BigInteger)
    progress_step: int | None = None
    progress_total: int | None = None
    # Written by each scheduling pass while the job waits for devices.
    queue_position: int | None = None
    wait_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))

    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    queued_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class JobEvent(SQLModel, table=True):
    """One status change: who, when, from, to, why."""

    __tablename__ = "job_events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = _fk_job()
    attempt: int
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str = Field(max_length=16)
    actor: str = Field(max_length=200)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    # Evidence for the reason: a stack dump of a stalled run, a log tail.
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class JobMetric(SQLModel, table=True):
    """One reported value; a (job, step, key) holds one value, the latest attempt's."""

    __tablename__ = "job_metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "step", "key", name="uq_job_metrics_job_step_key"),
        Index("ix_job_metrics_job_key_step", "job_id", "key", "step"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(sa_column=Column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False))
    attempt: int
    step: int
    key: str = Field(max_length=200)
    value: float | None
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class JobLogChunk(SQLModel, table=True):
    """A slice of an attempt's combined stdout/stderr, stored at its byte offset."""

    __tablename__ = "job_log_chunks"
    __table_args__ = (
        UniqueConstraint(
            "job_id", "attempt", "offset", name="uq_job_log_chunks_job_attempt_offset"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = _fk_job()
    attempt: int
    offset: int = Field(sa_type=BigInteger)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Checkpoint(SQLModel, table=True):
    """A checkpoint or final model a job wrote, relative to its run directory."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "path", name="uq_checkpoints_job_attempt_path"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = _fk_job()
    attempt: int
    step: int
    path: str = Field(max_length=500)
    final: bool = False
    size_bytes: int | None = Field(default=None, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
