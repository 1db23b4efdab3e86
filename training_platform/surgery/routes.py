"""HTTP routes of the surgery context: merges, soups, selections and lineage."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Query, status
from sqlmodel import Session

from training_platform.api.deps import (
    CurrentToken,
    DispatcherDep,
    IdPath,
    OffsetQuery,
    SessionDep,
    SettingsDep,
    api_router,
    project_scoped,
)
from training_platform.catalog import service as catalog
from training_platform.jobs import service as jobs_service
from training_platform.jobs.models import Job
from training_platform.surgery import service
from training_platform.surgery.models import Merge, Sweep
from training_platform.surgery.schemas import (
    GreedySoupCreate,
    GreedySoupPublic,
    MergeCreate,
    MergePreview,
    MergePublic,
    ModelLineagePublic,
    SelectCreate,
    SelectionPublic,
    SoupCreate,
    SweepCreate,
    SweepPublic,
)

log = logging.getLogger(__name__)


def _project_of(session: Session, merge_id: int) -> int | None:
    return jobs_service.project_through_job(session, Merge, merge_id)


router = api_router(
    "/merges", tags=["surgery"], scoped=project_scoped("merge_id", "merge", _project_of)
)
models_router = api_router(
    "/models",
    tags=["surgery"],
    scoped=project_scoped("model", "model", catalog.project_of_model, by_id=False),
)


def to_public(merge: Merge) -> MergePublic:
    return MergePublic.model_validate(merge, from_attributes=True)


def _dispatch(dispatcher: DispatcherDep, job: Job) -> None:
    try:
        dispatcher.dispatch(job)
    except Exception as error:  # stored; the supervisor resends the message
        log.warning("merge job %s: start message not sent (%s)", job.id, error)


@router.get("/methods")
def list_methods(_: CurrentToken) -> list[dict[str, Any]]:
    """The merge methods and the parameters each takes."""
    return service.methods()


@router.post("/preview")
def preview_merge(
    body: MergeCreate, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> MergePreview:
    """Check a merge without running it: its models, whether they fit, what it will need."""
    try:
        return service.preview(session=session, settings=settings, request=body)
    finally:
        session.rollback()  # resolving a job's model registers it; a preview keeps nothing


@router.post("", status_code=status.HTTP_201_CREATED)
def create_merge(
    body: MergeCreate,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> MergePublic:
    """Merge models: checked now, run as a job; the model is registered when it succeeds."""
    from training_platform.projects.service import project_for_submit

    project = project_for_submit(session=session, caller=token, name=body.project)
    merge, job = service.create(
        session=session,
        settings=settings,
        request=body,
        actor=token.actor,
        project_id=project.id,
        user_id=token.user_id,
    )
    session.commit()
    _dispatch(dispatcher, job)
    return to_public(merge)


@router.get("")
def list_merges(
    session: SessionDep,
    token: CurrentToken,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: OffsetQuery = 0,
) -> list[MergePublic]:
    """Merges and soups of the caller's projects (an admin: all), newest first."""
    from training_platform.projects.service import visible_project_ids

    projects = visible_project_ids(session=session, caller=token)
    merges = service.list_merges(session=session, limit=limit, offset=offset, projects=projects)
    return [to_public(m) for m in merges]


def sweep_public(sweep: Sweep) -> SweepPublic:
    assert sweep.id is not None
    return SweepPublic(
        id=sweep.id,
        name=sweep.name,
        method=sweep.method,
        grid=sweep.grid,
        evaluate=sweep.evaluate,
        mode=sweep.mode,
        status=sweep.status,
        error=sweep.error,
        model_id=sweep.model_id,
        leaderboard=service.leaderboard(sweep),
        created_by=sweep.created_by,
        created_at=sweep.created_at,
        finished_at=sweep.finished_at,
    )


@router.post("/sweeps", status_code=status.HTTP_201_CREATED)
def create_sweep(
    body: SweepCreate,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> SweepPublic:
    """A grid of merges: each candidate merged, evaluated and ranked; the best registered."""
    sweep, started = service.create_sweep(
        session=session, settings=settings, request=body, actor=token.actor
    )
    session.commit()
    for job in started:
        _dispatch(dispatcher, job)
    return sweep_public(sweep)


@router.get("/sweeps")
def list_sweeps(
    session: SessionDep, _: CurrentToken, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[SweepPublic]:
    """Sweeps, newest first, each with its leaderboard."""
    return [sweep_public(s) for s in service.list_sweeps(session=session, limit=limit)]


@router.get("/sweeps/{sweep_id}")
def get_sweep(sweep_id: IdPath, session: SessionDep, _: CurrentToken) -> SweepPublic:
    """A sweep and its leaderboard."""
    return sweep_public(service.get_sweep(session=session, sweep_id=sweep_id))


@router.post("/greedy-soups", status_code=status.HTTP_201_CREATED)
def create_greedy_soup(
    body: GreedySoupCreate,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> GreedySoupPublic:
    """A greedy soup: each checkpoint evaluated, then added best first while the soup's score
    does not drop; the soup is registered as name."""
    soup, started = service.create_greedy_soup(
        session=session, settings=settings, request=body, actor=token.actor
    )
    session.commit()
    for job in started:
        _dispatch(dispatcher, job)
    return GreedySoupPublic.model_validate(soup, from_attributes=True)


@router.get("/greedy-soups/{soup_id}")
def get_greedy_soup(soup_id: IdPath, session: SessionDep, _: CurrentToken) -> GreedySoupPublic:
    """A greedy soup: the checkpoints' scores, each trial, and the soup kept."""
    soup = service.get_greedy_soup(session=session, soup_id=soup_id)
    return GreedySoupPublic.model_validate(soup, from_attributes=True)


@router.get("/{merge_id}")
def get_merge(merge_id: IdPath, session: SessionDep, _: CurrentToken) -> MergePublic:
    """One merge or soup."""
    return to_public(service.get(session=session, merge_id=merge_id))


@models_router.post("/soup", status_code=status.HTTP_201_CREATED)
def create_soup(
    body: SoupCreate,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> MergePublic:
    """Average checkpoints of a job (a uniform soup) into a new model; it belongs to the job's
    project."""
    from training_platform.projects.service import check_visible

    source = session.get(Job, body.job)
    project_id = source.project_id if source is not None else None
    check_visible(session=session, caller=token, project_id=project_id, what=f"job {body.job}")
    request = service.soup_request(session=session, settings=settings, request=body)
    merge, job = service.create(
        session=session,
        settings=settings,
        request=request,
        actor=token.actor,
        kind="soup",
        project_id=project_id,
        user_id=token.user_id,
    )
    session.commit()
    _dispatch(dispatcher, job)
    return to_public(merge)


@models_router.post("/select", status_code=status.HTTP_201_CREATED)
def select_checkpoint(
    body: SelectCreate, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> SelectionPublic:
    """Register a job's best checkpoint under a declared rule (metric or evaluations)."""
    chosen = service.select_checkpoint(session=session, settings=settings, request=body)
    session.commit()
    return chosen


@models_router.get("/{model}/lineage")
def model_lineage(
    model: Annotated[str, PathParam(min_length=1, max_length=200)],
    session: SessionDep,
    _: CurrentToken,
) -> ModelLineagePublic:
    """A model's ancestors: merge and soup parents, selections, and the models jobs trained."""
    return service.lineage(session=session, ref=model)
