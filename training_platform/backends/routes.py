"""HTTP route listing the (backend, algorithm) pairs and their parameters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from training_platform.api.deps import CurrentToken, api_router
from training_platform.backends.base import all_backends
from training_platform.datasets.formats import formats_for_task

router = api_router(tags=["backends"])


class BackendPublic(BaseModel):
    """One pair, with the JSON Schema of its hyperparameters (types, defaults, limits)."""

    backend: str
    algorithm: str
    description: str
    hosts: Literal["gpu", "any"]
    requires_gpu: bool
    data_task: str | None  # None: the pair takes no dataset (serve)
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
            hosts="gpu" if b.requires_gpu else "any",
            requires_gpu=b.requires_gpu,
            data_task=b.data_task,
            dataset_formats=formats_for_task(b.data_task) if b.data_task else [],
            parameters=b.parameters.model_json_schema(),
        )
        for b in all_backends()
    ]
