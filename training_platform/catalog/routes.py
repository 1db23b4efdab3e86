"""HTTP routes of the catalog: models and reward files jobs can name."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from training_platform.api.deps import CurrentToken, SessionDep, SettingsDep, api_router
from training_platform.catalog import rewards, service
from training_platform.catalog.models import RewardFileEntry
from training_platform.catalog.names import CatalogName
from training_platform.core.types import DB_INT_MAX
from training_platform.jobs import service as jobs

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
    """A model to register: a directory inside a model root, or a Hugging Face id."""

    model_config = ConfigDict(extra="forbid")

    name: CatalogName
    path: str | None = Field(
        None, max_length=4096, description="Inside TP_HOME/models or TP_MODEL_ROOTS."
    )
    hub_id: str | None = Field(
        None, max_length=200, description="owner/name, for hosts that reach the hub."
    )
    job_id: int | None = Field(
        None, ge=1, le=DB_INT_MAX, description="A succeeded job whose final model to use."
    )
    description: str = Field("", max_length=1000)


class RewardFilePublic(BaseModel):
    """An uploaded reward file."""

    id: int
    name: str
    sha256: str
    size_bytes: int
    description: str
    created_at: datetime


@router.get("/models")
def list_models(session: SessionDep, _: CurrentToken) -> list[ModelPublic]:
    """Models jobs can start from."""
    return [
        ModelPublic.model_validate(m, from_attributes=True)
        for m in service.list_models(session=session)
    ]


@router.post("/models", status_code=status.HTTP_201_CREATED)
def register_model(
    body: ModelRegister, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> ModelPublic:
    """Register a model by directory (inside a model root), Hugging Face id, or job output."""
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
    _: CurrentToken,
    name: Annotated[CatalogName, Query(description="Jobs choose it as reward=file:<name>.")],
    description: Annotated[str, Query(max_length=1000)] = "",
) -> RewardFilePublic:
    """Upload a Python reward file with compute_score(data_source, solution_str, ground_truth)."""
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
