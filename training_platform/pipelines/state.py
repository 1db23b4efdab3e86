"""Pipeline and stage state machines: compare-and-set moves, each with an event row."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlmodel import Session

from training_platform.core.errors import Conflict
from training_platform.core.types import utcnow
from training_platform.pipelines.models import Pipeline, PipelineEvent, PipelineStage


class PipelineStatus(StrEnum):
    """Where a pipeline is. It always ends succeeded, failed or cancelled."""

    RUNNING = "running"  # stages start as soon as their dependencies succeed
    PAUSED = "paused"  # no stage starts; running stage jobs are paused as soon as they can be
    CANCELLING = "cancelling"  # stage jobs are being stopped
    SUCCEEDED = "succeeded"  # every stage succeeded or was skipped by its condition
    FAILED = "failed"  # a stage failed; its dependents were skipped
    CANCELLED = "cancelled"  # cancelled on request (or a stage's job was cancelled)


class StageStatus(StrEnum):
    """Where a stage is."""

    PENDING = "pending"  # waiting for its dependencies
    RUNNING = "running"  # its job exists and has not ended
    SUCCEEDED = "succeeded"  # its job succeeded; outputs recorded
    FAILED = "failed"  # its job failed for good (after its own retry policy), or could not start
    SKIPPED = "skipped"  # an upstream stage did not succeed, or a condition did not hold
    CANCELLED = "cancelled"  # the pipeline (or the stage's job) was cancelled


PIPELINE_TERMINAL = frozenset(
    {PipelineStatus.SUCCEEDED, PipelineStatus.FAILED, PipelineStatus.CANCELLED}
)
STAGE_TERMINAL = frozenset(
    {StageStatus.SUCCEEDED, StageStatus.FAILED, StageStatus.SKIPPED, StageStatus.CANCELLED}
)

PIPELINE_TRANSITIONS: dict[PipelineStatus, frozenset[PipelineStatus]] = {
    PipelineStatus.RUNNING: frozenset(
        {
            PipelineStatus.PAUSED,
            PipelineStatus.CANCELLING,
            PipelineStatus.SUCCEEDED,
            PipelineStatus.FAILED,
            PipelineStatus.CANCELLED,
        }
    ),
    # A paused pipeline whose running stages all end meanwhile ends too.
    PipelineStatus.PAUSED: frozenset(
        {
            PipelineStatus.RUNNING,
            PipelineStatus.CANCELLING,
            PipelineStatus.SUCCEEDED,
            PipelineStatus.FAILED,
            PipelineStatus.CANCELLED,
        }
    ),
    PipelineStatus.CANCELLING: frozenset({PipelineStatus.CANCELLED}),
    PipelineStatus.SUCCEEDED: frozenset(),
    # Retry from a stage.
    PipelineStatus.FAILED: frozenset({PipelineStatus.RUNNING}),
    PipelineStatus.CANCELLED: frozenset({PipelineStatus.RUNNING}),
}

STAGE_TRANSITIONS: dict[StageStatus, frozenset[StageStatus]] = {
    StageStatus.PENDING: frozenset(
        {StageStatus.RUNNING, StageStatus.SKIPPED, StageStatus.CANCELLED, StageStatus.FAILED}
    ),
    StageStatus.RUNNING: frozenset(
        {StageStatus.SUCCEEDED, StageStatus.FAILED, StageStatus.CANCELLED}
    ),
    # A retry of the pipeline sets stages back to pending.
    StageStatus.SUCCEEDED: frozenset({StageStatus.PENDING}),
    StageStatus.FAILED: frozenset({StageStatus.PENDING}),
    StageStatus.SKIPPED: frozenset({StageStatus.PENDING}),
    StageStatus.CANCELLED: frozenset({StageStatus.PENDING}),
}


class StaleRow(Conflict):
    """Someone else changed the pipeline or stage first; re-read it and decide again."""


def _event(
    session: Session,
    pipeline_id: int,
    stage: str | None,
    source: str | None,
    target: str,
    actor: str,
    reason: str,
) -> None:
    session.add(
        PipelineEvent(
            pipeline_id=pipeline_id,
            stage=stage,
            from_status=source,
            to_status=target,
            actor=actor,
            reason=reason,
            created_at=utcnow(),
        )
    )


def move_pipeline(
    session: Session,
    pipeline: Pipeline,
    target: PipelineStatus,
    *,
    actor: str,
    reason: str,
    values: dict[str, Any] | None = None,
) -> Pipeline:
    """Move the pipeline if nobody moved it since it was read; flush, do not commit."""
    source = PipelineStatus(pipeline.status)
    if target not in PIPELINE_TRANSITIONS[source]:
        raise Conflict(f"pipeline {pipeline.id} is {source.value}; it cannot become {target.value}")
    now = utcnow()
    columns = dict(values or {})
    columns.update(status=target.value, version=pipeline.version + 1, updated_at=now)
    if target in PIPELINE_TERMINAL:
        columns.setdefault("finished_at", now)
    result = session.execute(
        update(Pipeline)
        .where(
            Pipeline.id == pipeline.id,  # type: ignore[arg-type]
            Pipeline.version == pipeline.version,  # type: ignore[arg-type]
        )
        .values(**columns)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise StaleRow(f"pipeline {pipeline.id} changed meanwhile; try again")
    assert pipeline.id is not None
    _event(session, pipeline.id, None, source.value, target.value, actor, reason)
    session.flush()
    session.refresh(pipeline)
    return pipeline


def move_stage(
    session: Session,
    stage: PipelineStage,
    target: StageStatus,
    *,
    actor: str,
    reason: str,
    values: dict[str, Any] | None = None,
) -> PipelineStage:
    """Move a stage if nobody moved it since it was read; flush, do not commit."""
    source = StageStatus(stage.status)
    if target not in STAGE_TRANSITIONS[source]:
        raise Conflict(f"stage {stage.name!r} is {source.value}; it cannot become {target.value}")
    now = utcnow()
    columns = dict(values or {})
    columns.update(status=target.value, version=stage.version + 1, updated_at=now)
    if target is StageStatus.RUNNING:
        columns.setdefault("started_at", now)
    if target in STAGE_TERMINAL:
        columns.setdefault("finished_at", now)
    _update_stage(session, stage, columns)
    _event(session, stage.pipeline_id, stage.name, source.value, target.value, actor, reason)
    session.flush()
    session.refresh(stage)
    return stage


def update_running_stage(
    session: Session, stage: PipelineStage, *, actor: str, reason: str, values: dict[str, Any]
) -> PipelineStage:
    """Change a running stage's job or outputs (a select moving to its next candidate) if
    nobody changed it since it was read; recorded as an event; flush, do not commit."""
    if stage.status != StageStatus.RUNNING.value:
        raise Conflict(f"stage {stage.name!r} is {stage.status}, not running")
    _update_stage(session, stage, {**values, "version": stage.version + 1, "updated_at": utcnow()})
    _event(session, stage.pipeline_id, stage.name, stage.status, stage.status, actor, reason)
    session.flush()
    session.refresh(stage)
    return stage


def _update_stage(session: Session, stage: PipelineStage, columns: dict[str, Any]) -> None:
    """Write `columns` if the stage's version is still the one read; else roll back, StaleRow."""
    result = session.execute(
        update(PipelineStage)
        .where(
            PipelineStage.id == stage.id,  # type: ignore[arg-type]
            PipelineStage.version == stage.version,  # type: ignore[arg-type]
        )
        .values(**columns)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise StaleRow(f"stage {stage.name!r} changed meanwhile; try again")
