"""Request and response shapes of the projects API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from training_platform.auth.schemas import TokenName, _check_name

ProjectName = Annotated[str, Field(min_length=1, max_length=63), AfterValidator(_check_name)]
# The project a submission goes to (work of any kind: jobs, pipelines, evaluations, merges).
ProjectField = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=63,
        description="The project the work belongs to and whose GPU quota it uses (the caller "
        "must be a member; default: the default project).",
    ),
]
# GPU counts: bounded by what the database holds.
Gpus = Annotated[int, Field(ge=0, le=1_000_000)]


class ProjectCreate(BaseModel):
    """A new project and its GPU quota."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "vision", "guaranteed_gpus": 2, "max_gpus": 4}]},
    )

    name: ProjectName = Field(
        description="Unique; 1-63 letters, digits, '.', '_' or '-', starting with a letter or "
        "digit."
    )
    description: str = Field("", max_length=1000, description="What the project is for.")
    guaranteed_gpus: Gpus = Field(
        0,
        description="GPUs the project may always claim: a job within them takes GPUs back "
        "from other projects' work above their own guarantee (paused at a checkpoint, "
        "requeued). Also its share in the fair-share order (none: counts as one).",
    )
    max_gpus: Gpus | None = Field(
        None, description="At most this many GPUs at once (none: no limit)."
    )
    user_max_gpus: Gpus | None = Field(
        None, description="At most this many GPUs per member at once (none: no limit)."
    )


class ProjectUpdate(BaseModel):
    """Changes to a project's description or quota (null clears a limit)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"max_gpus": 8, "user_max_gpus": 2}, {"max_gpus": None}]},
    )

    description: str | None = Field(
        None, max_length=1000, description="New description; null or left out: unchanged."
    )
    guaranteed_gpus: Gpus | None = Field(
        None, description="New guarantee; null: 0; left out: unchanged."
    )
    max_gpus: Gpus | None = Field(
        None, description="New limit on GPUs at once; null: no limit; left out: unchanged."
    )
    user_max_gpus: Gpus | None = Field(
        None, description="New limit per member; null: no limit; left out: unchanged."
    )


class MemberAdd(BaseModel):
    """A user to add to a project."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user": "alice"}]})

    user: TokenName = Field(description="An existing user, by name.")


class ProjectPublic(BaseModel):
    """A project, its quota, its members and the GPUs its work holds now."""

    name: str
    description: str
    guaranteed_gpus: int
    max_gpus: int | None
    user_max_gpus: int | None
    members: list[str] = Field(description="Empty for the default project: everyone.")
    running_gpus: int
    created_at: datetime


class ProjectsPublic(BaseModel):
    """The projects the caller sees (an admin: every one)."""

    items: list[ProjectPublic]


class UsageRow(BaseModel):
    """GPU-hours of a project's user in the window."""

    project: str
    user: str | None
    gpu_hours: float
    running_gpus: int


class UsagePublic(BaseModel):
    """GPU-hours per project and user from `since` to `until`."""

    since: datetime
    until: datetime
    items: list[UsageRow]
    by_project: dict[str, float]
