"""HTTP routes of the catalog: the models and datasets jobs can name."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from training_platform.api.deps import CurrentToken, SessionDep
from training_platform.catalog import service

router = APIRouter(tags=["catalog"])


class ModelPublic(BaseModel):
    """A registered model."""

    id: int
    name: str
    source: str
    description: str
    parameters: int | None
    created_at: datetime


class DatasetPublic(BaseModel):
    """A registered dataset."""

    id: int
    name: str
    source: str
    format: str
    rows: int
    size_bytes: int
    sha256: str
    description: str
    created_at: datetime


@router.get("/models")
def list_models(session: SessionDep, _: CurrentToken) -> list[ModelPublic]:
    """Models jobs can start from."""
    return [
        ModelPublic.model_validate(m, from_attributes=True)
        for m in service.list_models(session=session)
    ]


@router.get("/datasets")
def list_datasets(session: SessionDep, _: CurrentToken) -> list[DatasetPublic]:
    """Datasets jobs can train on."""
    return [
        DatasetPublic.model_validate(d, from_attributes=True)
        for d in service.list_datasets(session=session)
    ]
