"""HTTP routes of the pipelines context: parse, call the service, commit, then advance."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import Body, Header, Query, Response, status
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.api.deps import (
    CurrentToken,
    DispatcherDep,
    EngineDep,
    IdPath,
    OffsetQuery,
    SessionDep,
    SettingsDep,
    api_router,
    project_scoped,
)
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.jobs import service as jobs
from training_platform.jobs.dispatch import Dispatcher
from training_platform.jobs.models import Job
from training_platform.jobs.state import StaleJob
from training_platform.pipelines import definition as dsl
from training_platform.pipelines import engine as pipeline_engine
from training_platform.pipelines import service, templates
from training_platform.pipelines.models import Pipeline
from training_platform.pipelines.schemas import (
    KeyMetric,
    LineagePublic,
    PipelineEventPublic,
    PipelinePublic,
    PipelinesPublic,
    PipelineSubmit,
    PipelineSummary,
    RetryRequest,
    StagePublic,
    TemplatePublic,
    ValidationPublic,
)
from training_platform.pipelines.state import PipelineStatus, StaleRow
from training_platform.projects.service import names_of, project_for_submit, visible_project_ids


def _project_of(session: Session, pipeline_id: int) -> int | None:
    return session.exec(select(Pipeline.project_id).where(col(Pipeline.id) == pipeline_id)).first()


router = api_router(
    "/pipelines",
    tags=["pipelines"],
    scoped=project_scoped("pipeline_id", "pipeline", _project_of),
)
lineage_router = api_router(
    tags=["pipelines"], scoped=project_scoped("job_id", "job", jobs.project_of)
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="The same key never creates two pipelines.",
    ),
]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return round(((end or utcnow()) - start).total_seconds(), 3)


def to_public(session: Session, pipeline: Pipeline) -> PipelinePublic:
    """The client view of a pipeline: its stages with state, duration, job and key metric."""
    assert pipeline.id is not None
    stages = service.stages_of(session=session, pipeline_id=pipeline.id)
    runs = service.runs_of(session=session, stage_ids=[s.id for s in stages if s.id])
    views = []
    for stage in stages:
        job = session.get(Job, stage.job_id) if stage.job_id else None
        live = (
            jobs.last_metric_values(session=session, job_id=job.id)
            if job is not None and job.id is not None and not stage.outputs
            else {}
        )
        metric = service.key_metric(stage, live)
        views.append(
            StagePublic(
                name=stage.name,
                kind=stage.kind,
                position=stage.position,
                depends_on=stage.depends_on,
                when=list(stage.spec.get("when") or []),
                status=stage.status,
                run=stage.run,
                job_id=stage.job_id,
                job_status=job.status if job else None,
                jobs=runs.get(stage.id or 0, []),
                outputs=stage.outputs,
                reason=stage.reason,
                skipped_by_condition=stage.skipped_by_condition,
                key_metric=KeyMetric(name=metric[0], value=metric[1]) if metric else None,
                started_at=stage.started_at,
                finished_at=stage.finished_at,
                duration_s=_seconds(stage.started_at, stage.finished_at),
            )
        )
    return PipelinePublic(
        id=pipeline.id,
        name=pipeline.name,
        description=pipeline.description,
        template=pipeline.template,
        status=pipeline.status,
        priority=pipeline.priority,
        parameters=pipeline.parameters,
        created_by=pipeline.created_by,
        project=names_of(session=session, ids=[pipeline.project_id])[pipeline.project_id],
        error=pipeline.error,
        created_at=pipeline.created_at,
        updated_at=pipeline.updated_at,
        finished_at=pipeline.finished_at,
        duration_s=_seconds(pipeline.created_at, pipeline.finished_at),
        stages=views,
    )


def _advance(
    engine: Engine, settings: Settings, pipeline_id: int, dispatcher: Dispatcher
) -> Pipeline:
    advanced = pipeline_engine.advance(engine, settings, pipeline_id, dispatcher)
    assert advanced is not None
    return advanced


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "An earlier request with this Idempotency-Key made it."}},
)
def submit_pipeline(
    body: PipelineSubmit,
    session: SessionDep,
    settings: SettingsDep,
    engine: EngineDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> PipelinePublic:
    """Submit a pipeline (template, JSON definition or YAML); its first stages start at once."""
    project = project_for_submit(session=session, caller=token, name=body.project)
    pipeline, created = service.submit(
        session=session,
        request=body,
        actor=token.actor,
        idempotency_key=idempotency_key,
        project_id=project.id,
        user_id=token.user_id,
    )
    session.commit()
    if created:
        assert pipeline.id is not None
        pipeline = _advance(engine, settings, pipeline.id, dispatcher)
    else:
        response.status_code = status.HTTP_200_OK
    return to_public(session, pipeline)


@router.post("/validate")
def validate_pipeline(
    body: PipelineSubmit, session: SessionDep, _: CurrentToken
) -> ValidationPublic:
    """Check a definition as submit would, without storing or running anything."""
    definition, _template = service.prepare(session=session, request=body)
    return ValidationPublic(
        name=definition.name,
        priority=definition.priority,
        parameters=definition.parameters,
        order=dsl.topological_order(definition.stages),
        definition=definition.model_dump(mode="json"),
    )


@router.get("/templates")
def list_templates(_: CurrentToken) -> list[TemplatePublic]:
    """The shipped templates, with their parameters and stages."""
    return [_template_public(t) for t in templates.all_templates().values()]


@router.get("/templates/{name}")
def get_template(name: str, _: CurrentToken) -> TemplatePublic:
    """One template, with its YAML."""
    return _template_public(templates.get(name))


def _template_public(template: templates.Template) -> TemplatePublic:
    data = template.data
    return TemplatePublic(
        name=template.name,
        description=str(data.get("description", "")).strip(),
        parameters=dict(data.get("parameters") or {}),
        stages={
            name: list((stage or {}).get("depends_on") or [])
            for name, stage in (data.get("stages") or {}).items()
        },
        yaml=template.text,
    )


@router.get("")
def list_pipelines(
    session: SessionDep,
    token: CurrentToken,
    pipeline_status: Annotated[list[PipelineStatus] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: OffsetQuery = 0,
) -> PipelinesPublic:
    """Pipelines of the caller's projects (an admin: all), newest first, with how many stages
    are in each status."""
    page, total = service.list_pipelines(
        session=session,
        statuses=pipeline_status or (),
        limit=limit,
        offset=offset,
        projects=visible_project_ids(session=session, caller=token),
    )
    return PipelinesPublic(items=_summaries(session, page), total=total, limit=limit, offset=offset)


def _summaries(session: Session, page: Sequence[Pipeline]) -> list[PipelineSummary]:
    counts = service.stage_counts(session=session, pipeline_ids=[p.id for p in page if p.id])
    return [
        PipelineSummary(
            id=p.id,
            name=p.name,
            template=p.template,
            status=p.status,
            priority=p.priority,
            stages=counts.get(p.id or 0, {}),
            created_at=p.created_at,
            finished_at=p.finished_at,
        )
        for p in page
    ]


@router.get("/{pipeline_id}")
def get_pipeline(pipeline_id: IdPath, session: SessionDep, _: CurrentToken) -> PipelinePublic:
    """One pipeline: the DAG with each stage's state, duration, job and key metric."""
    return to_public(session, service.get_pipeline(session=session, pipeline_id=pipeline_id))


@router.get("/{pipeline_id}/events")
def pipeline_events(
    pipeline_id: IdPath, session: SessionDep, _: CurrentToken
) -> list[PipelineEventPublic]:
    """Status changes of the pipeline and its stages, oldest first."""
    return [
        PipelineEventPublic.model_validate(e, from_attributes=True)
        for e in service.events(session=session, pipeline_id=pipeline_id)
    ]


@router.post("/{pipeline_id}/cancel")
def cancel_pipeline(
    pipeline_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    engine: EngineDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> PipelinePublic:
    """Cancel: pending stages are cancelled, running stages' processes are stopped."""
    _, signal = jobs.until_settled(
        session,
        lambda: service.cancel(session=session, pipeline_id=pipeline_id, actor=token.actor),
        stale=(StaleJob, StaleRow),
    )
    session.commit()
    for job in signal:
        pipeline_engine.send_safely(dispatcher.request_cancel, job)
    return to_public(session, _advance(engine, settings, pipeline_id, dispatcher))


@router.post("/{pipeline_id}/pause")
def pause_pipeline(
    pipeline_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    engine: EngineDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> PipelinePublic:
    """Pause: no stage starts; running stage jobs checkpoint and stop (or are suspended)."""
    service.pause(session=session, pipeline_id=pipeline_id, actor=token.actor)
    session.commit()
    return to_public(session, _advance(engine, settings, pipeline_id, dispatcher))


@router.post("/{pipeline_id}/resume")
def resume_pipeline(
    pipeline_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    engine: EngineDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> PipelinePublic:
    """Resume: jobs the pause held go on from their checkpoints, pending stages may start."""
    service.resume(session=session, pipeline_id=pipeline_id, actor=token.actor)
    session.commit()
    return to_public(session, _advance(engine, settings, pipeline_id, dispatcher))


@router.post("/{pipeline_id}/retry")
def retry_pipeline(
    pipeline_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    engine: EngineDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
    body: Annotated[RetryRequest | None, Body()] = None,
) -> PipelinePublic:
    """Retry a failed or cancelled pipeline from a stage; succeeded stages upstream are reused."""
    service.retry(
        session=session,
        pipeline_id=pipeline_id,
        actor=token.actor,
        from_stage=(body or RetryRequest()).from_stage,
    )
    session.commit()
    return to_public(session, _advance(engine, settings, pipeline_id, dispatcher))


@lineage_router.get("/jobs/{job_id}/lineage")
def job_lineage(job_id: IdPath, session: SessionDep, _: CurrentToken) -> LineagePublic:
    """Where a job's model and dataset version came from, the pipeline stage that ran it, and
    the checkpoints and models it produced (with the jobs that went on from them)."""
    return LineagePublic.model_validate(service.lineage(session=session, job_id=job_id))
