"""Projects: creating them, their members, whose work a caller may submit and see, and GPU-hours.

Every user belongs to the `default` project. Admins see and submit to every project; others
to the projects they are members of. GPU-hours are counted from device leases: each GPU lease
from its acquisition to its release (or now), charged to the job's project and user.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import true
from sqlmodel import Session, col, select

from training_platform.auth.models import User
from training_platform.auth.service import Caller
from training_platform.core.db import add_unique
from training_platform.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from training_platform.core.types import utcnow
from training_platform.projects.models import DEFAULT_PROJECT, Project, ProjectMember


def get_project(*, session: Session, name: str) -> Project:
    project = session.exec(select(Project).where(col(Project.name) == name)).first()
    if project is None:
        raise NotFound(f"no project named {name!r}")
    return project


def _check_limits(guaranteed: int, maximum: int | None, per_user: int | None) -> None:
    if maximum is not None and maximum < guaranteed:
        raise InvalidInput(
            ("body", "max_gpus"), f"{maximum} is below the guarantee of {guaranteed} GPU(s)"
        )
    if per_user is not None and maximum is not None and per_user > maximum:
        raise InvalidInput(
            ("body", "user_max_gpus"), f"{per_user} is above the project's maximum of {maximum}"
        )


def create_project(
    *,
    session: Session,
    name: str,
    description: str = "",
    guaranteed_gpus: int = 0,
    max_gpus: int | None = None,
    user_max_gpus: int | None = None,
) -> Project:
    _check_limits(guaranteed_gpus, max_gpus, user_max_gpus)
    project = Project(
        name=name,
        description=description,
        guaranteed_gpus=guaranteed_gpus,
        max_gpus=max_gpus,
        user_max_gpus=user_max_gpus,
    )
    return add_unique(session, project, f"a project named {name!r} exists")


def update_project(*, session: Session, name: str, changes: dict[str, object]) -> Project:
    project = get_project(session=session, name=name)
    for field, value in changes.items():
        setattr(project, field, value)
    _check_limits(project.guaranteed_gpus, project.max_gpus, project.user_max_gpus)
    session.add(project)
    session.flush()
    return project


def members(*, session: Session, project: Project) -> list[str]:
    if project.name == DEFAULT_PROJECT:
        return []  # everyone: not listed
    rows = session.exec(
        select(User.name)
        .join(ProjectMember, col(ProjectMember.user_id) == col(User.id))
        .where(col(ProjectMember.project_id) == project.id)
        .order_by(col(User.name))
    ).all()
    return list(rows)


def add_member(*, session: Session, name: str, user: str) -> Project:
    project = get_project(session=session, name=name)
    if project.name == DEFAULT_PROJECT:
        raise Conflict("every user is a member of the default project")
    found = session.exec(select(User).where(col(User.name) == user)).first()
    if found is None:
        raise NotFound(f"no user named {user!r}")
    member = ProjectMember(project_id=project.id, user_id=found.id)  # type: ignore[arg-type]
    add_unique(session, member, f"{user} is a member of {name} already")
    return project


def remove_member(*, session: Session, name: str, user: str) -> Project:
    project = get_project(session=session, name=name)
    row = session.exec(
        select(ProjectMember)
        .join(User, col(ProjectMember.user_id) == col(User.id))
        .where(col(ProjectMember.project_id) == project.id, col(User.name) == user)
    ).first()
    if row is None:
        raise NotFound(f"{user} is not a member of {name}")
    session.delete(row)
    session.flush()
    return project


def visible_project_ids(*, session: Session, caller: Caller) -> set[int] | None:
    """The projects whose work the caller sees; None: every project (admins)."""
    if caller.at_least("admin"):
        return None
    rows = session.exec(
        select(ProjectMember.project_id).where(col(ProjectMember.user_id) == caller.user_id)
    ).all()
    default = session.exec(select(Project.id).where(col(Project.name) == DEFAULT_PROJECT)).first()
    return {*rows, *([default] if default is not None else [])}


def list_projects(*, session: Session, caller: Caller) -> list[Project]:
    visible = visible_project_ids(session=session, caller=caller)
    query = select(Project).order_by(col(Project.name))
    if visible is not None:
        query = query.where(col(Project.id).in_(visible))
    return list(session.exec(query).all())


def project_for_submit(*, session: Session, caller: Caller, name: str | None) -> Project:
    """The project new work goes to: the named one (the caller must be a member, unless an
    admin), else the default project."""
    project = get_project(session=session, name=name or DEFAULT_PROJECT)
    visible = visible_project_ids(session=session, caller=caller)
    if visible is not None and project.id not in visible:
        raise Forbidden(f"{caller.name} is not a member of project {project.name!r}")
    return project


def owned_by(column: Any, projects: set[int] | None) -> Any:
    """A condition on a table's project_id column: work of one of `projects` (None: every
    project; no condition). Work stored without a project is the default project's."""
    if projects is None:
        return true()
    return col(column).in_(projects) | col(column).is_(None)


def check_visible(*, session: Session, caller: Caller, project_id: int | None, what: str) -> None:
    """NotFound, as for what does not exist, when the caller cannot see the project's work."""
    visible = visible_project_ids(session=session, caller=caller)
    if visible is not None and project_id is not None and project_id not in visible:
        raise NotFound(f"{what} not found")


def names_of(*, session: Session, ids: Iterable[int | None]) -> dict[int | None, str]:
    """Project names by id; None (work stored without a project) is the default's."""
    wanted = {i for i in ids if i is not None}
    found: dict[int | None, str] = {None: DEFAULT_PROJECT}
    if wanted:
        rows = session.exec(select(Project.id, Project.name).where(col(Project.id).in_(wanted)))
        found.update({project_id: name for project_id, name in rows.all()})
    return found


def check_usable(
    *, session: Session, project_id: int | None, field: tuple[str | int, ...], kind: str, entry: Any
) -> None:
    """Work of a project uses its own project's models and datasets and the default
    project's: InvalidInput naming the field for another project's `entry` (a catalog row with
    name and project_id). Work submitted without a project (None) is not checked."""
    owner = entry.project_id
    if project_id is None or owner is None or owner == project_id:
        return
    names = names_of(session=session, ids=[owner])
    if names.get(owner) == DEFAULT_PROJECT:
        return
    raise InvalidInput(
        field,
        f"{kind} {entry.name!r} belongs to project {names.get(owner, owner)!r}: "
        "submit to that project",
    )


# --- accounting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """GPU-hours of one project and user since a time."""

    project: str
    user: str | None
    gpu_hours: float
    running_gpus: int


def usage(*, session: Session, since: datetime, now: datetime | None = None) -> list[Usage]:
    """GPU-hours per project and user from `since` to now (the part of each lease inside that
    window), with the GPUs they hold right now."""
    from training_platform.jobs.models import Job
    from training_platform.scheduling.models import DeviceLease

    now = now or utcnow()
    rows = session.exec(
        select(DeviceLease.acquired_at, DeviceLease.released_at, Project.name, User.name)
        .join(Job, col(Job.id) == col(DeviceLease.job_id))
        .join(Project, col(Project.id) == col(Job.project_id), isouter=True)
        .join(User, col(User.id) == col(Job.user_id), isouter=True)
        .where(
            col(DeviceLease.kind) == "gpu",
            (col(DeviceLease.released_at).is_(None)) | (col(DeviceLease.released_at) > since),
        )
    ).all()
    hours: dict[tuple[str, str | None], float] = {}
    running: dict[tuple[str, str | None], int] = {}
    for acquired, released, project, user in rows:
        key = (project or DEFAULT_PROJECT, user)
        start, end = max(acquired, since), min(released or now, now)
        hours[key] = hours.get(key, 0.0) + max((end - start) / timedelta(hours=1), 0.0)
        running[key] = running.get(key, 0) + (released is None)
    return [
        Usage(project=p, user=u, gpu_hours=round(h, 6), running_gpus=running.get((p, u), 0))
        for (p, u), h in sorted(hours.items(), key=lambda item: (item[0][0], item[0][1] or ""))
    ]


def running_gpus(*, session: Session) -> dict[int | None, int]:
    """GPUs each project's work holds now, by project id."""
    from sqlalchemy import func

    from training_platform.jobs.models import Job
    from training_platform.scheduling.models import DeviceLease

    rows = session.exec(
        select(Job.project_id, func.count())
        .join(DeviceLease, col(DeviceLease.job_id) == col(Job.id))
        .where(col(DeviceLease.kind) == "gpu", col(DeviceLease.released_at).is_(None))
        .group_by(col(Job.project_id))
    ).all()
    return {project_id: int(count) for project_id, count in rows}
