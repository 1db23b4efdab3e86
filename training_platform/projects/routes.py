"""HTTP routes of projects: their quota and members (admins change them), and GPU-hours."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Path, Query, status

from training_platform.api.deps import CurrentToken, SessionDep, api_router
from training_platform.core.errors import NotFound
from training_platform.core.types import utcnow
from training_platform.projects import service
from training_platform.projects.models import Project
from training_platform.projects.schemas import (
    MemberAdd,
    ProjectCreate,
    ProjectPublic,
    ProjectsPublic,
    ProjectUpdate,
    UsagePublic,
    UsageRow,
)

router = api_router("/projects", tags=["projects"], write="admin")

NamePath = Annotated[
    str, Path(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]


def _public(session: SessionDep, project: Project, running: dict[int | None, int]) -> ProjectPublic:
    return ProjectPublic(
        name=project.name,
        description=project.description,
        guaranteed_gpus=project.guaranteed_gpus,
        max_gpus=project.max_gpus,
        user_max_gpus=project.user_max_gpus,
        members=service.members(session=session, project=project),
        running_gpus=running.get(project.id, 0),
        created_at=project.created_at,
    )


def _visible(session: SessionDep, token: CurrentToken, name: str) -> Project:
    project = service.get_project(session=session, name=name)
    visible = service.visible_project_ids(session=session, caller=token)
    if visible is not None and project.id not in visible:
        raise NotFound(f"no project named {name!r}")
    return project


@router.get("", response_model=ProjectsPublic)
def list_projects(session: SessionDep, token: CurrentToken) -> ProjectsPublic:
    """The projects the caller belongs to (the default one included; an admin: every one)."""
    running = service.running_gpus(session=session)
    found = service.list_projects(session=session, caller=token)
    return ProjectsPublic(items=[_public(session, p, running) for p in found])


@router.post("", response_model=ProjectPublic, status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectCreate, session: SessionDep) -> ProjectPublic:
    """A new project with its GPU quota (admin)."""
    project = service.create_project(session=session, **body.model_dump())
    session.commit()
    return _public(session, project, {})


@router.get("/usage", response_model=UsagePublic)
def usage(
    session: SessionDep,
    token: CurrentToken,
    days: Annotated[
        float, Query(gt=0, le=3660, description="The window: this many days back.")
    ] = 7,
) -> UsagePublic:
    """GPU-hours per project and user over the last `days` (the caller's projects; an admin:
    every one), counted from the GPUs each job held."""
    until = utcnow()
    since = until - timedelta(days=days)
    visible = service.visible_project_ids(session=session, caller=token)
    names = (
        None
        if visible is None
        else {p.name for p in service.list_projects(session=session, caller=token)}
    )
    rows = [
        UsageRow(**vars(row))
        for row in service.usage(session=session, since=since, now=until)
        if names is None or row.project in names
    ]
    by_project: dict[str, float] = {}
    for row in rows:
        by_project[row.project] = round(by_project.get(row.project, 0.0) + row.gpu_hours, 6)
    return UsagePublic(since=since, until=until, items=rows, by_project=by_project)


@router.get("/{name}", response_model=ProjectPublic)
def get_project(name: NamePath, session: SessionDep, token: CurrentToken) -> ProjectPublic:
    """One project the caller sees."""
    project = _visible(session, token, name)
    return _public(session, project, service.running_gpus(session=session))


@router.patch("/{name}", response_model=ProjectPublic)
def update_project(name: NamePath, body: ProjectUpdate, session: SessionDep) -> ProjectPublic:
    """Change a project's description or quota (admin); null clears a limit."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("description") is None:
        changes.pop("description", None)
    if "guaranteed_gpus" in changes and changes["guaranteed_gpus"] is None:
        changes["guaranteed_gpus"] = 0
    project = service.update_project(session=session, name=name, changes=changes)
    session.commit()
    return _public(session, project, service.running_gpus(session=session))


@router.post("/{name}/members", response_model=ProjectPublic)
def add_member(name: NamePath, body: MemberAdd, session: SessionDep) -> ProjectPublic:
    """Add a user to a project (admin)."""
    project = service.add_member(session=session, name=name, user=body.user)
    session.commit()
    return _public(session, project, service.running_gpus(session=session))


@router.delete("/{name}/members/{user}", response_model=ProjectPublic)
def remove_member(name: NamePath, user: NamePath, session: SessionDep) -> ProjectPublic:
    """Remove a user from a project (admin); their jobs stay in it."""
    project = service.remove_member(session=session, name=name, user=user)
    session.commit()
    return _public(session, project, service.running_gpus(session=session))
