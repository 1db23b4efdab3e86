"""Request and response shapes of the serving context."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from training_platform.core.types import DB_INT_MAX
from training_platform.evaluation.schemas import JOB_PRIORITY, CheckpointRef
from training_platform.jobs.schemas import JobName, Ref, Resources
from training_platform.projects.schemas import ProjectField
from training_platform.worker.queues import PRIORITY_MAX, PRIORITY_MIN


class EndpointCreate(BaseModel):
    """Register an OpenAI-compatible server; its key is stored encrypted and never shown."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "gpt-judge",
                    "base_url": "https://api.openai.com/v1",
                    "model": "gpt-4o-mini",
                    "api_key": "sk-...",
                    "concurrency": 4,
                    "rate_limit": 2,
                },
                {"name": "local-vllm", "base_url": "http://10.0.0.7:8000/v1", "model": "qwen"},
            ]
        },
    )

    name: JobName = Field(
        description="Unique; evaluations and judge scorers name the endpoint by it."
    )
    base_url: str = Field(
        ..., min_length=8, max_length=2000, description="Up to /v1, e.g. https://host/v1."
    )
    model: str = Field(
        ..., min_length=1, max_length=200, description="The model name sent in requests."
    )
    api_key: SecretStr | None = Field(
        None, min_length=1, max_length=4096, description="Sent as Authorization: Bearer."
    )
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    max_retries: int = Field(
        3, ge=0, le=10, description="Retries on 429, 5xx and connection errors, with backoff."
    )
    rate_limit: float | None = Field(
        None, gt=0, le=10_000, description="Most requests started per second; absent: no limit."
    )
    timeout_s: float = Field(120.0, gt=0, le=3600, description="Per request.")


class EndpointPublic(BaseModel):
    """An endpoint as clients see it: whether it has a key, never the key."""

    id: int
    name: str
    base_url: str
    model: str
    has_api_key: bool
    concurrency: int
    max_retries: int
    rate_limit: float | None
    timeout_s: float
    job_id: int | None
    engine: str | None
    created_by: str
    created_at: datetime


class ServeCreate(BaseModel):
    """Serve a catalog model or a job's checkpoint until the serve job is cancelled."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "tiny-qwen2"},
                {
                    "name": "serve job 12",
                    "job": 12,
                    "engine": "vllm",
                    "max_model_len": 4096,
                    "resources": {"gpus": 1},
                },
            ]
        },
    )

    name: JobName | None = Field(None, description="The job's name; default: serve MODEL.")
    model: Ref | None = Field(None, description="A registered model, by name or id.")
    job: int | None = Field(
        None, ge=1, le=DB_INT_MAX, description="Or: the final model of this job."
    )
    checkpoint: CheckpointRef | None = Field(None, description="Or: a checkpoint of a job.")
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="auto: vLLM's OpenAI server where vLLM is installed on the host, otherwise "
        "`transformers serve`.",
    )
    max_model_len: int | None = Field(
        None, ge=16, le=1 << 20, description="vLLM: longest prompt + completion, in tokens."
    )
    enforce_eager: bool = Field(
        False, description="vLLM: no torch.compile or graph capture (starts sooner, runs slower)."
    )
    resources: Resources = Field(
        default_factory=Resources, description="What the server needs; default: CPU only."
    )
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description=JOB_PRIORITY)
    project: ProjectField = None

    @model_validator(mode="after")
    def _one_target(self) -> ServeCreate:
        if sum(x is not None for x in (self.model, self.job, self.checkpoint)) != 1:
            raise ValueError("name exactly one of model, job and checkpoint")
        return self


class ServedPublic(BaseModel):
    """A serve job and whether its server answers through the platform."""

    job_id: int
    name: str
    model: str
    status: str
    ready: bool
    engine: str | None
    url: str  # the platform's path to its OpenAI-compatible API, up to /v1
