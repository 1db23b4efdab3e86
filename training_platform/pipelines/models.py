"""Tables of the pipelines context: pipelines, their stages, each stage's runs, and events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, ForeignKey, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from training_platform.core.types import JSONType, UTCDateTime, utcnow


def _fk(table: str, *, nullable: bool = False, ondelete: str = "CASCADE") -> Any:
    return Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey(f"{table}.id", ondelete=ondelete), nullable=nullable, index=True
        ),
    )


class Pipeline(SQLModel, table=True):
    """A submitted DAG of stages, run stage by stage as each one's dependencies succeed."""

    __tablename__ = "pipelines"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    # The definition as checked on submit, parameters substituted (stage references are not).
    definition: dict[str, Any] = Field(sa_type=JSONType)
    parameters: dict[str, Any] = Field(sa_type=JSONType)
    template: str | None = Field(default=None, max_length=100)
    priority: int
    status: str = Field(max_length=16, index=True)
    version: int = 1
    created_by: str = Field(max_length=200)
    # Whose work it is: its stages' jobs belong to this project and user (None: the default
    # project; pipelines stored before projects existed).
    project_id: int | None = Field(default=None, index=True)
    user_id: int | None = None
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True)
    request_hash: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PipelineStage(SQLModel, table=True):
    """One node of a pipeline and the job that runs it now."""

    __tablename__ = "pipeline_stages"
    __table_args__ = (UniqueConstraint("pipeline_id", "name", name="uq_pipeline_stages_name"),)

    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = _fk("pipelines")
    name: str = Field(max_length=64)
    kind: str = Field(max_length=16)  # train | evaluate
    position: int  # in topological order
    depends_on: list[str] = Field(sa_type=JSONType)
    spec: dict[str, Any] = Field(sa_type=JSONType)  # the stage definition
    status: str = Field(max_length=16)
    version: int = 1
    run: int = 1  # how many times the stage was (re)started; a retry adds one
    job_id: int | None = _fk("jobs", nullable=True, ondelete="SET NULL")
    outputs: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    # Why the stage ended as it did (failed: the job's error; skipped: which upstream or
    # which condition).
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # skipped because a `when` condition did not hold (not a failure of the pipeline).
    skipped_by_condition: bool = False
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PipelineStageRun(SQLModel, table=True):
    """A job that ran a stage: one per run, so retries keep their history."""

    __tablename__ = "pipeline_stage_runs"
    __table_args__ = (UniqueConstraint("stage_id", "run", name="uq_pipeline_stage_runs_run"),)

    id: int | None = Field(default=None, primary_key=True)
    stage_id: int = _fk("pipeline_stages")
    run: int
    job_id: int | None = _fk("jobs", nullable=True, ondelete="SET NULL")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PipelineEvent(SQLModel, table=True):
    """A status change of a pipeline or of one of its stages: who, when, from, to, why."""

    __tablename__ = "pipeline_events"

    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = _fk("pipelines")
    stage: str | None = Field(default=None, max_length=64)  # None: the pipeline itself
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str = Field(max_length=16)
    actor: str = Field(max_length=200)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
