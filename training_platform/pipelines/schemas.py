"""Request and response shapes of the pipelines API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training_platform.jobs.schemas import JobName
from training_platform.pipelines.definition import Scalar
from training_platform.projects.schemas import ProjectField
from training_platform.worker.queues import PRIORITY_MAX, PRIORITY_MIN

MAX_YAML_BYTES = 256 * 1024


class PipelineSubmit(BaseModel):
    """A pipeline to run: a shipped template, a definition object, or definition YAML text."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"template": "sft-grpo-evaluate", "parameters": {"sft_steps": 200}},
                {
                    "definition": {
                        "name": "sft then evaluate",
                        "stages": {
                            "sft": {
                                "job": {
                                    "algorithm": "sft",
                                    "model": "tiny-qwen2",
                                    "dataset": "tiny-sft",
                                    "hyperparameters": {"max_steps": 100},
                                }
                            },
                            "evaluate": {
                                "depends_on": ["sft"],
                                "evaluate": {
                                    "model": "${stages.sft.outputs.checkpoint}",
                                    "dataset": "tiny-math-eval",
                                },
                            },
                        },
                    },
                    "priority": 7,
                },
            ]
        },
    )

    template: str | None = Field(None, max_length=100, description="A template's name.")
    definition: dict[str, Any] | None = Field(
        None, description="The definition as JSON: name, parameters, priority, stages."
    )
    yaml: str | None = Field(
        None, max_length=MAX_YAML_BYTES, description="The definition as YAML text."
    )
    name: JobName | None = Field(None, description="Overrides the definition's name.")
    priority: int | None = Field(
        None, ge=PRIORITY_MIN, le=PRIORITY_MAX, description="Overrides the definition's."
    )
    parameters: dict[str, Scalar] = Field(
        default_factory=dict, max_length=100, description="Values for declared parameters."
    )
    project: ProjectField = None

    @model_validator(mode="after")
    def _one_source(self) -> PipelineSubmit:
        given = [s for s in ("template", "definition", "yaml") if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of template, definition or yaml")
        return self


class RetryRequest(BaseModel):
    """Where a retry starts."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{}, {"from_stage": "grpo"}]}
    )

    from_stage: str | None = Field(
        None,
        max_length=64,
        description="Rerun this stage and everything downstream of it; by default every "
        "stage that did not succeed and what depends on it.",
    )


class KeyMetric(BaseModel):
    """The one number a stage is judged by (loss, reward, accuracy)."""

    name: str
    value: float | None


class StagePublic(BaseModel):
    """A stage as clients see it."""

    name: str
    kind: str
    position: int
    depends_on: list[str]
    when: list[dict[str, Any]]
    status: str
    run: int
    job_id: int | None
    job_status: str | None
    jobs: list[int] = Field(description="Every job that ran the stage, oldest first.")
    outputs: dict[str, Any] | None
    reason: str | None
    skipped_by_condition: bool
    key_metric: KeyMetric | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None


class PipelinePublic(BaseModel):
    """A pipeline with its stages (the DAG: each stage lists what it depends on)."""

    id: int
    name: str
    description: str
    template: str | None
    status: str
    priority: int
    parameters: dict[str, Any]
    created_by: str
    project: str = Field("default", description="Whose work it is: its stages' jobs are.")
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    stages: list[StagePublic]


class PipelineSummary(BaseModel):
    """A pipeline in a list."""

    id: int
    name: str
    template: str | None
    status: str
    priority: int
    stages: dict[str, int] = Field(description="How many stages are in each status.")
    created_at: datetime
    finished_at: datetime | None


class PipelinesPublic(BaseModel):
    """A page of pipelines."""

    items: list[PipelineSummary]
    total: int
    limit: int
    offset: int


class PipelineEventPublic(BaseModel):
    """A status change of the pipeline (stage None) or of one stage."""

    id: int
    stage: str | None
    from_status: str | None
    to_status: str
    actor: str
    reason: str
    created_at: datetime


class TemplatePublic(BaseModel):
    """A shipped pipeline template."""

    name: str
    description: str
    parameters: dict[str, Any]
    stages: dict[str, list[str]] = Field(description="Each stage with what it depends on.")
    yaml: str


class ValidationPublic(BaseModel):
    """A definition that passed every check, as it would run."""

    name: str
    priority: int
    parameters: dict[str, Any]
    order: list[str] = Field(description="The stages in an order that respects dependencies.")
    definition: dict[str, Any]


class ArtifactPublic(BaseModel):
    """Something a job wrote: a checkpoint or its final model."""

    kind: str
    step: int
    attempt: int
    path: str = Field(description="Relative to the attempt's run directory.")
    registered_as: str | None = Field(None, description="Its model name in the catalog.")


class LineagePublic(BaseModel):
    """Where a job's inputs came from and what it produced."""

    job: dict[str, Any]
    pipeline: dict[str, Any] | None
    model: dict[str, Any]
    dataset: dict[str, Any]
    resumed_from: dict[str, Any] | None
    artifacts: list[ArtifactPublic]
    consumers: list[dict[str, Any]] = Field(
        description="Jobs that started from a model this job produced."
    )
