"""HTTP route listing the (backend, algorithm) pairs and their parameters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from training_platform.api.deps import CurrentToken
from training_platform.backends.base import all_backends

router = APIRouter(tags=["backends"])


class BackendPublic(BaseModel):
    """One pair, with the JSON Schema of its hyperparameters (types, defaults, limits)."""

    backend: str
    algorithm: str
    description: str
    requires_gpu: bool
    dataset_formats: list[str]
    parameters: dict[str, Any]


@router.get("/backends")
def list_backends(_: CurrentToken) -> list[BackendPublic]:
    """Every supported pair; clients build their forms from this, never from a fixed list."""
    return [
        BackendPublic(
            backend=b.backend,
            algorithm=b.algorithm,
            description=b.description,
            requires_gpu=b.requires_gpu,
            dataset_formats=list(b.dataset_formats),
            parameters=b.parameters.model_json_schema(),
        )
        for b in all_backends()
    ]
