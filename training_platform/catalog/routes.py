"""HTTP routes of the catalog: models and reward files jobs can name."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from training_platform.api.deps import (
    CodeCaller,
    CurrentToken,
    SessionDep,
    SettingsDep,
    api_router,
)
from training_platform.catalog import rewards, service
from training_platform.catalog.models import RewardFileEntry
from training_platform.catalog.names import CatalogName
from training_platform.core.types import DB_INT_MAX
from training_platform.jobs import service as jobs
from training_platform.projects.schemas import ProjectField

router = api_router(tags=["catalog"])


class ModelPublic(BaseModel):
    """A registered model."""

    id: int
    name: str
    source: str
    description: str
    parameters: int | None
    job_id: int | None = Field(None, description="The job that produced it (source job).")
    created_at: datetime


class ModelRegister(BaseModel):
    """A model to register: a directory inside a model root, a Hugging Face id, or a job's
    final model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "qwen2.5-0.5b", "hub_id": "Qwen/Qwen2.5-0.5B-Instruct"},
                {"name": "my-sft", "job_id": 12, "description": "SFT on our support chats."},
            ]
        },
    )

    name: CatalogName = Field(
        description="Unique; 1-128 letters, digits, '.', '_' or '-', not all digits."
    )
    path: str | None = Field(
        None, max_length=4096, description="Inside TP_HOME/models or TP_MODEL_ROOTS."
    )
    hub_id: str | None = Field(
        None, max_length=200, description="owner/name, for hosts that reach the hub."
    )
    job_id: int | None = Field(
        None, ge=1, le=DB_INT_MAX, description="A succeeded job whose final model to use."
    )
    description: str = Field("", max_length=1000, description="Shown with the model.")
    project: ProjectField = None


class RewardFilePublic(BaseModel):
    """An uploaded reward file."""

    id: int
    name: str
    sha256: str
    size_bytes: int
    description: str
    created_at: datetime


@router.get("/models")
def list_models(session: SessionDep, token: CurrentToken) -> list[ModelPublic]:
    """Models jobs can start from: the caller's projects' (an admin: all)."""
    from training_platform.projects.service import visible_project_ids

    projects = visible_project_ids(session=session, caller=token)
    return [
        ModelPublic.model_validate(m, from_attributes=True)
        for m in service.list_models(session=session, projects=projects)
    ]


@router.post("/models", status_code=status.HTTP_201_CREATED)
def register_model(
    body: ModelRegister, session: SessionDep, settings: SettingsDep, token: CurrentToken
) -> ModelPublic:
    """Register a model by directory (inside a model root), Hugging Face id, or job output
    (then it is the job's project's)."""
    from training_platform.projects.service import check_visible, project_for_submit

    project = project_for_submit(session=session, caller=token, name=body.project)
    if body.job_id is not None:
        what = f"job {body.job_id}"
        owner = jobs.project_of(session, body.job_id)
        check_visible(session=session, caller=token, project_id=owner, what=what)
    job_output = (
        jobs.final_model_path(session=session, settings=settings, job_id=body.job_id)
        if body.job_id is not None
        else None
    )
    entry = service.register_model(
        session=session,
        settings=settings,
        name=body.name,
        path=body.path,
        hub_id=body.hub_id,
        description=body.description,
        job_output=job_output,
        job_id=body.job_id,
        project_id=project.id,
    )
    session.commit()
    return ModelPublic.model_validate(entry, from_attributes=True)


@router.get("/rewards")
def list_rewards(session: SessionDep, _: CurrentToken) -> dict[str, object]:
    """Builtin reward functions and uploaded reward files."""
    return {
        "builtin": rewards.builtin_names(),
        "files": [
            RewardFilePublic.model_validate(r, from_attributes=True)
            for r in rewards.list_files(session=session)
        ],
    }


@router.post("/rewards", status_code=status.HTTP_201_CREATED)
async def upload_reward(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: CodeCaller,
    name: Annotated[CatalogName, Query(description="Jobs choose it as reward=file:<name>.")],
    description: Annotated[str, Query(max_length=1000)] = "",
) -> RewardFilePublic:
    """Upload a Python reward file with compute_score(data_source, solution_str, ground_truth).

    A reward file is code that trainings run: uploading one needs the admin role or the code
    permission."""
    source = bytearray()
    async for chunk in request.stream():
        source.extend(chunk)
        if len(source) > rewards.MAX_REWARD_FILE_BYTES:
            break

    def register() -> RewardFileEntry:
        entry = rewards.register(
            session=session,
            home=settings.home,
            name=name,
            source=bytes(source),
            description=description,
        )
        session.commit()
        return entry

    entry = await run_in_threadpool(register)
    return RewardFilePublic.model_validate(entry, from_attributes=True)
