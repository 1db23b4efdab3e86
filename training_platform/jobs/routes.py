"""HTTP routes of the jobs context: parse, call the service, commit, then dispatch."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import Body, Header, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlmodel import Session

from training_platform.api.deps import (
    ByteOffsetQuery,
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
from training_platform.backends.base import LaunchPlan
from training_platform.core.errors import InvalidInput
from training_platform.core.types import DB_BIGINT_MAX, DB_INT_MAX
from training_platform.jobs import service
from training_platform.jobs import waits as waits_of
from training_platform.jobs.models import Job
from training_platform.jobs.schemas import (
    CheckpointPublic,
    JobCreate,
    JobEventPublic,
    JobPublic,
    JobsPublic,
    LogSlice,
    MetricsPublic,
    PauseRequest,
    PlanPublic,
    Progress,
)
from training_platform.jobs.state import JobStatus
from training_platform.projects.models import DEFAULT_PROJECT
from training_platform.scheduling import service as scheduling

log = logging.getLogger(__name__)
router = api_router(
    "/jobs", tags=["jobs"], scoped=project_scoped("job_id", "job", service.project_of)
)
_HOLDS_NOTHING = frozenset(
    {JobStatus.PENDING.value, JobStatus.SUCCEEDED.value, JobStatus.FAILED.value}
    | {JobStatus.CANCELLED.value}
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="The same key never creates two jobs.",
    ),
]


def to_public(
    job: Job, devices: list[str] | None = None, estimated_wait_s: float | None = None
) -> JobPublic:
    """The client view of a job."""
    assert job.id is not None
    waiting = job.status in service.WAITING_VALUES
    return JobPublic(
        id=job.id,
        name=job.name,
        backend=job.backend,
        algorithm=job.algorithm,
        model=str(job.spec.get("model") or job.model_id) if job.model_id is not None else None,
        dataset=(
            str(job.spec.get("dataset") or job.dataset_id) if job.dataset_id is not None else None
        ),
        dataset_version=job.dataset_version,
        spec=job.spec,
        priority=job.priority,
        queue=job.queue,
        status=job.status,
        version=job.version,
        attempt=job.attempt,
        created_by=job.created_by,
        project=str(job.spec.get("project") or DEFAULT_PROJECT),
        preemptible=job.preemptible,
        node=job.node,
        runner=job.runner,
        exit_code=job.exit_code,
        error=job.error,
        end_cause=job.end_cause,
        retry_at=job.retry_at,
        pause_mode=job.pause_mode,
        last_progress_at=job.last_progress_at,
        outputs=job.outputs,
        inputs=public_inputs(job.inputs),
        devices=devices or [],
        queue_position=job.queue_position if waiting else None,
        wait_reason=job.wait_reason if waiting else None,
        estimated_wait_s=estimated_wait_s,
        progress=Progress(step=job.progress_step, total=job.progress_total),
        created_at=job.created_at,
        updated_at=job.updated_at,
        queued_at=job.queued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def public_inputs(inputs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The job's inputs without server paths: dataset hash and rows, resume step."""
    if not inputs:
        return None
    shown: dict[str, Any] = {}
    if dataset := inputs.get("dataset"):
        shown["dataset"] = {k: v for k, v in dataset.items() if k != "path"}
    if resume := inputs.get("resume_from"):
        shown["resume_from"] = {k: v for k, v in resume.items() if k != "path"}
    return shown


def _send_start(session: Session, dispatcher: DispatcherDep, job: Job) -> None:
    try:
        dispatcher.dispatch(job)
    except Exception as error:  # the job is stored; the supervisor resends the message
        log.warning("job %s: start message not sent (%s); the supervisor will retry", job.id, error)


def _plan_public(plan: LaunchPlan, run_dir: str, runner: str) -> PlanPublic:
    data = plan.to_dict()
    return PlanPublic(run_dir=run_dir, runner=runner, **data)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "An earlier request with this Idempotency-Key made it."}},
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Submit a job; it is stored as queued, then its start message is sent."""
    from training_platform.projects.service import project_for_submit

    project = project_for_submit(session=session, caller=token, name=body.project)
    job, created = service.submit(
        session=session,
        request=body,
        actor=token.actor,
        idempotency_key=idempotency_key,
        settings=settings,
        project_id=project.id,
        user_id=token.user_id,
    )
    session.commit()
    if created:
        _send_start(session, dispatcher, job)
    else:
        response.status_code = status.HTTP_200_OK
    return to_public(job)


@router.post("/plan")
def dry_run(
    body: JobCreate, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> PlanPublic:
    """The launch plan a submission would produce; nothing is stored."""
    plan, run_dir = service.plan_for_request(
        session=session, settings=settings, request=body, python=sys.executable
    )
    return _plan_public(plan, str(run_dir), "local")


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    token: CurrentToken,
    job_status: Annotated[list[JobStatus] | None, Query(alias="status")] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Part of the job's name (any case).")
    ] = None,
    algorithm: Annotated[list[str] | None, Query(max_length=32)] = None,
    backend: Annotated[list[str] | None, Query(max_length=32)] = None,
    sort: Annotated[
        str,
        Query(
            max_length=20,
            description=f"One of {', '.join(service.JOB_SORT_KEYS)}; a leading - sorts descending.",
        ),
    ] = "-id",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: OffsetQuery = 0,
) -> Response:
    """Jobs of the caller's projects (an admin: every job), newest first unless `sort` says
    otherwise, filtered by status, algorithm, backend and name."""
    from training_platform.projects.service import visible_project_ids

    page, total = service.list_jobs(
        session=session,
        projects=visible_project_ids(session=session, caller=token),
        statuses=job_status or (),
        search=q or None,
        algorithms=algorithm or (),
        backends=backend or (),
        sort=sort,
        limit=limit,
        offset=offset,
    )
    page_public = JobsPublic(
        items=_public_page(session, page), total=total, limit=limit, offset=offset
    )
    return _json(page_public)


def _json(model: BaseModel) -> Response:
    """A model already built and checked, serialized once (FastAPI would validate it again)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _public_page(session: Session, jobs: Sequence[Job]) -> list[JobPublic]:
    # Only a job between queued and its end can hold devices: most pages ask nothing more.
    holders = [j.id for j in jobs if j.id and j.status not in _HOLDS_NOTHING]
    held = scheduling.devices_held(session=session, job_ids=holders)
    waits = waits_of.wait_estimates(session=session, jobs=jobs)
    return [to_public(j, held.get(j.id or 0), waits.get(j.id or 0)) for j in jobs]


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: IdPath, session: SessionDep, _: CurrentToken) -> Response:
    """One job, with the devices it holds and, while queued, its place and why it waits."""
    return _json(_public_page(session, [service.get_job(session=session, job_id=job_id)])[0])


@router.post("/{job_id}/cancel")
def cancel_job(
    job_id: IdPath, session: SessionDep, token: CurrentToken, dispatcher: DispatcherDep
) -> JobPublic:
    """Cancel: at once if not started, else stop its whole process group."""
    job = service.until_settled(
        session, lambda: service.cancel(session=session, job_id=job_id, actor=token.actor)
    )
    session.commit()
    if job.status == JobStatus.CANCELLING.value:
        try:
            dispatcher.request_cancel(job)
        except Exception as error:  # the supervisor enforces cancelling jobs on its own
            log.warning("job %s: cancel message not sent (%s)", job_id, error)
    return to_public(job)


@router.post("/{job_id}/pause")
def pause_job(
    job_id: IdPath,
    session: SessionDep,
    token: CurrentToken,
    body: Annotated[PauseRequest | None, Body()] = None,
) -> JobPublic:
    """Pause a running job: checkpoint and stop (devices freed), or suspend it in place."""
    mode = (body or PauseRequest()).mode
    job = service.until_settled(
        session,
        lambda: service.pause(session=session, job_id=job_id, actor=token.actor, mode=mode),
    )
    session.commit()
    return to_public(job)


@router.post("/{job_id}/resume")
def resume_job(
    job_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> JobPublic:
    """Resume a paused job: continue a suspended run, or start a new attempt from its checkpoint."""
    job = service.until_settled(
        session,
        lambda: service.resume(
            session=session, settings=settings, job_id=job_id, actor=token.actor
        ),
    )
    session.commit()
    try:
        dispatcher.request_schedule()
    except Exception as error:  # the supervisor's tick runs a scheduling pass anyway
        log.warning("job %s: scheduling pass not requested (%s)", job_id, error)
    return to_public(job)


@router.post("/{job_id}/retry")
def retry_job(
    job_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
    from_checkpoint: Annotated[
        bool, Query(description="Resume from the last checkpoint; the step counter goes on.")
    ] = False,
) -> JobPublic:
    """Start a new attempt of a failed or cancelled job, from scratch or from a checkpoint."""
    job = service.until_settled(
        session,
        lambda: service.retry(
            session=session,
            settings=settings,
            job_id=job_id,
            actor=token.actor,
            from_checkpoint=from_checkpoint,
        ),
    )
    session.commit()
    _send_start(session, dispatcher, job)
    return to_public(job)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(job_id: IdPath, session: SessionDep, settings: SettingsDep, _: CurrentToken) -> None:
    """Delete a finished job with its history and run files."""
    service.delete_job(session=session, settings=settings, job_id=job_id)
    session.commit()


@router.get("/{job_id}/logs")
def job_logs(
    job_id: IdPath,
    session: SessionDep,
    _: CurrentToken,
    offset: ByteOffsetQuery = 0,
    limit: Annotated[int, Query(ge=1, le=4 * 1024 * 1024)] = 256 * 1024,
    attempt: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None,
    before: Annotated[
        int | None,
        Query(
            ge=0,
            le=DB_BIGINT_MAX,
            description="Read the `limit` bytes that end here instead (whole lines): the "
            "lines above what a client shows. Not with `offset`.",
        ),
    ] = None,
) -> LogSlice:
    """The log of an attempt (the current one by default) from a byte offset, or before one."""
    if before is not None:
        if offset:
            raise InvalidInput(("query", "offset"), "give offset or before, not both")
        used, start, data = service.read_log_before(
            session=session, job_id=job_id, attempt=attempt, before=before, limit=limit
        )
        return LogSlice(
            attempt=used,
            offset=start,
            next_offset=before,
            text=data.decode("utf-8", errors="replace"),
            complete=False,
        )
    used, next_offset, data, complete = service.read_log(
        session=session, job_id=job_id, attempt=attempt, offset=offset, limit=limit
    )
    return LogSlice(
        attempt=used,
        offset=offset,
        next_offset=next_offset,
        text=data.decode("utf-8", errors="replace"),
        complete=complete,
    )


@router.get("/{job_id}/metrics", response_model=MetricsPublic)
def job_metrics(
    job_id: IdPath,
    session: SessionDep,
    _: CurrentToken,
    since_step: Annotated[int | None, Query(ge=-1, le=DB_INT_MAX)] = None,
    keys: Annotated[list[str] | None, Query(alias="key")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    until_step: Annotated[int | None, Query(ge=0, le=DB_INT_MAX)] = None,
    max_steps: Annotated[
        int | None, Query(ge=2, le=100_000, description="Thin a long run to about this many steps.")
    ] = None,
) -> Response:
    """Metric values after `since_step` (all by default) up to `until_step`, by step."""
    rows = service.read_metrics(
        session=session,
        job_id=job_id,
        since_step=since_step,
        keys=keys or (),
        limit=limit,
        until_step=until_step,
        max_steps=max_steps,
    )
    # Written straight to JSON: a thinned long curve is tens of thousands of points, and a
    # model object per point (validated twice) was most of the answer's time.
    body = {
        "points": [{"step": step, "key": key, "value": value} for step, key, value in rows],
        "keys": service.metric_keys(session=session, job_id=job_id),
        "last_step": rows[-1][0] if rows else None,
    }
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


@router.get(
    "/{job_id}/metrics/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}},
)
def export_job_metrics(
    job_id: IdPath,
    session: SessionDep,
    engine: EngineDep,
    _: CurrentToken,
    keys: Annotated[list[str] | None, Query(alias="key", max_length=200)] = None,
    fmt: Annotated[Literal["csv", "ndjson"], Query(alias="format")] = "csv",
) -> StreamingResponse:
    """Every stored value of the job (all steps, or only the keys given) as a CSV or NDJSON
    download, streamed as it is read."""
    job = service.get_job(session=session, job_id=job_id)
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    filename = f"job-{job.id}-metrics.{fmt}"
    return StreamingResponse(
        service.export_metrics(engine=engine, job_id=job_id, keys=keys or (), fmt=fmt),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/{job_id}/events")
def job_events(job_id: IdPath, session: SessionDep, _: CurrentToken) -> list[JobEventPublic]:
    """Every status change of the job, oldest first."""
    return [
        JobEventPublic.model_validate(e, from_attributes=True)
        for e in service.events(session=session, job_id=job_id)
    ]


@router.get("/{job_id}/checkpoints")
def job_checkpoints(job_id: IdPath, session: SessionDep, _: CurrentToken) -> list[CheckpointPublic]:
    """Checkpoints and final models the job wrote, with the metrics reported at their step."""
    found = service.checkpoints(session=session, job_id=job_id)
    at_step = service.metrics_at_steps(
        session=session, job_id=job_id, steps={c.step for c in found}
    )
    return [
        CheckpointPublic.model_validate(c, from_attributes=True).model_copy(
            update={"metrics": at_step.get(c.step, {})}
        )
        for c in found
    ]


@router.get("/{job_id}/plan")
def job_plan(
    job_id: IdPath, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> PlanPublic:
    """The launch plan of the current attempt: as launched, or as it would be launched."""
    job = service.get_job(session=session, job_id=job_id)
    plan = service.plan_for_job(session=session, settings=settings, job=job, python=sys.executable)
    run_dir = (job.runner_handle or {}).get("run_dir") or str(service.run_dir_for(settings, job))
    return _plan_public(plan, str(run_dir), job.runner or "local")
