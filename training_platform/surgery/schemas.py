"""Requests and answers of the surgery context: merges, soups, selections and lineage."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training_platform.backends.builtin.merge import (
    Dtype,
    InputParameters,
    Method,
    SharedParameters,
)
from training_platform.catalog.names import CatalogName
from training_platform.core.types import DB_INT_MAX
from training_platform.evaluation.schemas import JOB_PRIORITY, CheckpointRef, Generation
from training_platform.jobs.schemas import Ref, Resources
from training_platform.projects.schemas import ProjectField
from training_platform.worker.queues import PRIORITY_MAX, PRIORITY_MIN

MAX_SOUP = 32
# The work of a sweep or a greedy soup runs as several jobs (merges, evaluations).
JOBS_PRIORITY = JOB_PRIORITY.replace(
    "Its job's priority", "Its jobs' priority (merges, evaluations)"
)
MODEL_NAME = (
    "The catalog name it is registered as: unique, 1-128 letters, digits, '.', '_' or '-', "
    "not all digits."
)


class ModelRef(BaseModel):
    """A model by catalog name or id, a job's final model, or one of a job's checkpoints."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "tiny-qwen2"},
                {"job": 12},
                {"checkpoint": {"job": 12, "step": 200}},
            ]
        },
    )

    model: Ref | None = Field(None, description="A registered model, by name or id.")
    job: int | None = Field(
        None, ge=1, le=DB_INT_MAX, description="Or: the final model of this succeeded job."
    )
    checkpoint: CheckpointRef | None = Field(
        None, description="Or: a checkpoint of a job (registered as job-N-step-S)."
    )

    @model_validator(mode="after")
    def _one(self) -> ModelRef:
        if sum(x is not None for x in (self.model, self.job, self.checkpoint)) != 1:
            raise ValueError("name exactly one of model, job and checkpoint")
        return self


class MergeInput(ModelRef, InputParameters):
    """A model to merge and its own parameters (which ones apply depends on the method)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"job": 13, "weight": 0.5, "density": 0.7},
                {"checkpoint": {"job": 12, "step": 200}, "weight": 1.0},
            ]
        }
    )


class MergeCreate(BaseModel):
    """Merge models into a new catalog model named `name`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "sft-grpo-slerp",
                    "method": "slerp",
                    "base": {"job": 12},
                    "models": [{"job": 13}],
                    "parameters": {"t": 0.5},
                },
                {
                    "name": "ties-avg",
                    "method": "ties",
                    "base": {"model": "tiny-qwen2"},
                    "models": [
                        {"checkpoint": {"job": 12, "step": 200}, "weight": 0.5, "density": 0.5},
                        {"job": 13, "weight": 0.5, "density": 0.5},
                    ],
                    "dtype": "bfloat16",
                },
            ]
        },
    )

    name: CatalogName = Field(..., description="The merged model's catalog name (unique).")
    method: Method = Field(
        description="The mergekit method; GET /api/v1/merges/methods lists what each takes."
    )
    base: ModelRef | None = Field(
        None, description="The base model (every method but linear needs one)."
    )
    models: list[MergeInput] = Field(
        ...,
        min_length=1,
        max_length=16,
        description="The models merged besides the base, each with its own parameters.",
    )
    parameters: SharedParameters = Field(
        default_factory=SharedParameters, description="The method's global parameters."
    )
    dtype: Dtype | None = Field(None, description="Of the merged weights; default: the base's.")
    tokenizer: Literal["base", "union"] = Field(
        "base",
        description="base: the base's tokenizer (every model must share it); union: every "
        "token of every model.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="For the random drops of dare, della.")
    description: str = Field(
        "",
        max_length=1000,
        description="The merged model's catalog description (default: says how it was made).",
    )
    resources: Resources = Field(
        default_factory=Resources, description="What the merge job needs; default: CPU only."
    )
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description=JOB_PRIORITY)
    project: ProjectField = None


class InputPublic(BaseModel):
    """A parent of a merge as it was resolved."""

    model_id: int
    name: str
    role: Literal["base", "input"]
    adapter_of: str | None = Field(None, description="An adapter: the model it is merged into.")
    weight: float | None = None
    density: float | None = None
    gamma: float | None = None
    epsilon: float | None = None


class Estimate(BaseModel):
    """What a merge will need, from the sizes of its inputs' weight files."""

    parameters: int = Field(..., description="Of the merged model.")
    input_bytes: int = Field(..., description="Weight files read.")
    output_bytes: int = Field(..., description="The merged model's weights on disk.")
    disk_bytes: int = Field(..., description="Output plus adapters merged into their bases.")
    ram_bytes: int = Field(..., description="Peak memory, with tensors loaded one at a time.")
    largest_tensor_bytes: int
    time_class: Literal["seconds", "minutes", "hours"]


class MergePreview(BaseModel):
    """A merge request checked: its parents resolved, fitting together, and its needs."""

    inputs: list[InputPublic]
    estimate: Estimate
    checked: list[str] = Field(..., description="What was compared between the models.")


class MergePublic(BaseModel):
    """A merge or soup and its job."""

    id: int
    name: str
    kind: str
    method: str
    inputs: list[dict[str, Any]]
    parameters: dict[str, Any]
    dtype: str | None
    tokenizer: str
    estimate: dict[str, Any]
    description: str
    job_id: int | None
    model_id: int | None = Field(None, description="The merged model, once registered.")
    status: str
    error: str | None
    created_by: str
    created_at: datetime
    finished_at: datetime | None


class _Checkpoints(BaseModel):
    """Checkpoints of one job: these steps, or the last few."""

    model_config = ConfigDict(extra="forbid")

    name: CatalogName = Field(description=MODEL_NAME)
    job: int = Field(..., ge=1, le=DB_INT_MAX, description="The job whose checkpoints, by id.")
    steps: list[int] | None = Field(
        None, min_length=2, max_length=MAX_SOUP, description="These checkpoints, by step."
    )
    last: int | None = Field(
        None, ge=2, le=MAX_SOUP, description="Or: the last this many checkpoints."
    )
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description=JOB_PRIORITY)

    @model_validator(mode="after")
    def _which(self) -> _Checkpoints:
        if (self.steps is None) == (self.last is None):
            raise ValueError("give exactly one of steps and last")
        if self.steps is not None and len(set(self.steps)) != len(self.steps):
            raise ValueError("steps must not repeat")
        return self


class SoupCreate(_Checkpoints):
    """A uniform soup: the mean of checkpoints of one job, registered as `name`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "job-12-soup", "job": 12, "last": 3},
                {"name": "job-12-soup-late", "job": 12, "steps": [300, 400], "dtype": "bfloat16"},
            ]
        }
    )

    dtype: Dtype | None = Field(
        None, description="Of the soup's weights; default: the first checkpoint's."
    )
    description: str = Field(
        "",
        max_length=1000,
        description="The soup's catalog description (default: says how it was made).",
    )
    resources: Resources = Field(
        default_factory=Resources, description="What the merge job needs; default: CPU only."
    )


class SelectCreate(BaseModel):
    """Pick the best checkpoint of a job by a declared rule and register it as `name`.

    By a metric the job logged (its value at each checkpoint's step), or by the evaluations
    given (each of one checkpoint of the job, by their score under `scorer`). Ties go to the
    earlier step."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "job-12-best-loss", "job": 12, "metric": "loss", "mode": "min"},
                {"name": "job-12-best-eval", "job": 12, "evaluations": [31, 32, 33], "mode": "max"},
            ]
        },
    )

    name: CatalogName = Field(description=MODEL_NAME)
    job: int = Field(..., ge=1, le=DB_INT_MAX, description="The job whose checkpoints, by id.")
    metric: str | None = Field(
        None, min_length=1, max_length=200, description="A metric the job logged, e.g. loss."
    )
    evaluations: list[int] | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Or: evaluations by id, each of one checkpoint of the job.",
    )
    scorer: str | None = Field(
        None, max_length=256, description="With evaluations; default: each one's own scorer."
    )
    mode: Literal["min", "max"] = Field(..., description="Whether lower or higher is better.")
    description: str = Field(
        "",
        max_length=1000,
        description="The model's catalog description (default: says how it was made).",
    )

    @model_validator(mode="after")
    def _by(self) -> SelectCreate:
        if (self.metric is None) == (self.evaluations is None):
            raise ValueError("give exactly one of metric and evaluations")
        return self


class Candidate(BaseModel):
    """A checkpoint a selection considered."""

    step: int
    value: float | None
    evaluation_id: int | None = None


class SelectionPublic(BaseModel):
    """The checkpoint chosen, registered as a model, and what it was chosen among."""

    model_id: int
    name: str
    step: int
    value: float
    rule: str
    candidates: list[Candidate]


class LineageNode(BaseModel):
    """A model in a lineage graph."""

    id: int
    name: str
    source: str
    job_id: int | None


class LineageEdge(BaseModel):
    """`child` came from `parent`: merged, base, soup, selected or trained (by its job)."""

    child: int
    parent: int
    relation: str
    detail: dict[str, Any] = Field(default_factory=dict)


class ModelLineagePublic(BaseModel):
    """Every ancestor of a model and how each led to the next."""

    model_id: int
    nodes: list[LineageNode]
    edges: list[LineageEdge]


SWEEP_AXES = ("t", "lambda", "weight", "density", "gamma", "epsilon")
MAX_SWEEP_VALUES = 8
MAX_SWEEP_CANDIDATES = 16


class MergeTemplate(MergeCreate):
    """A merge without its name: each candidate of a sweep is this with the grid's values."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "method": "linear",
                    "models": [{"job": 12, "weight": 0.5}, {"job": 13, "weight": 0.5}],
                }
            ]
        }
    )

    name: CatalogName = Field("candidate", description="Unused: candidates are named NAME.i.")
    description: str = Field(
        "", max_length=1000, description="Unused: each candidate's description names its values."
    )
    priority: int = Field(
        0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description="Unused: the sweep's priority applies."
    )
    project: None = Field(None, description="Unused: a sweep's work is the default project's.")


class SweepEvaluation(BaseModel):
    """How every candidate is judged: one evaluation each, on the same data."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset": "tiny-math-eval",
                    "scorer": "numeric",
                    "generation": {"max_new_tokens": 32, "max_samples": 50},
                }
            ]
        },
    )

    dataset: Ref = Field(..., description="A prompt/answer dataset, by name or id.")
    scorer: str = Field(
        "numeric",
        max_length=256,
        description="An inline scorer (exact, numeric, contains, choice, bleu, rouge_l, "
        "regex:PATTERN, pass@K:SCORER, reward:NAME): not one that runs on a worker.",
    )
    generation: Generation = Field(
        default_factory=Generation, description="How outputs are generated; default: greedy."
    )
    resources: Resources = Field(
        default_factory=Resources, description="What each evaluation's job needs."
    )


class SweepCreate(BaseModel):
    """A grid over one or two merge parameters: every candidate merged, evaluated, ranked, and
    the best registered as `name` (candidates as NAME.1, NAME.2, ...).

    Grid keys: `t` and `lambda` (global), or `models.I.weight`, `models.I.density`,
    `models.I.gamma`, `models.I.epsilon` (of the I-th model, from 0)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "ab-mix",
                    "merge": {
                        "method": "linear",
                        "models": [{"job": 12, "weight": 0.5}, {"job": 13, "weight": 0.5}],
                    },
                    "grid": {"models.0.weight": [0.25, 0.5, 0.75]},
                    "evaluate": {"dataset": "tiny-math-eval", "generation": {"max_samples": 50}},
                    "mode": "max",
                }
            ]
        },
    )

    name: CatalogName = Field(description=MODEL_NAME + " The best candidate gets it.")
    merge: MergeTemplate = Field(description="The merge each candidate is, but for the grid.")
    grid: dict[str, list[float]] = Field(
        ...,
        min_length=1,
        max_length=2,
        description=f"Axis to its values: 1 or 2 axes, 1-{MAX_SWEEP_VALUES} distinct values "
        f"each, 2-{MAX_SWEEP_CANDIDATES} candidates in all.",
    )
    evaluate: SweepEvaluation = Field(description="How each candidate is scored.")
    mode: Literal["min", "max"] = Field("max", description="Whether a higher score is better.")
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description=JOBS_PRIORITY)


class LeaderboardRow(BaseModel):
    """A candidate of a sweep, ranked by its evaluation's score (ties to the earlier one)."""

    rank: int | None = Field(..., description="None when it could not be merged or evaluated.")
    index: int
    name: str
    values: dict[str, float]
    merge_id: int
    model_id: int | None
    evaluation_id: int | None
    score: float | None
    status: str


class SweepPublic(BaseModel):
    """A sweep and its leaderboard."""

    id: int
    name: str
    method: str
    grid: dict[str, list[float]]
    evaluate: dict[str, Any]
    mode: str
    status: str
    error: str | None
    model_id: int | None = Field(None, description="The best candidate, registered as name.")
    leaderboard: list[LeaderboardRow]
    created_by: str
    created_at: datetime
    finished_at: datetime | None


class GreedySoupCreate(_Checkpoints):
    """A greedy soup of a job's checkpoints: each evaluated, then added best first while the
    soup's evaluation does not get worse; the soup is registered as `name`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "job-12-greedy",
                    "job": 12,
                    "steps": [100, 200, 300],
                    "evaluate": {"dataset": "tiny-math-eval", "scorer": "numeric"},
                }
            ]
        }
    )

    evaluate: SweepEvaluation = Field(description="How each checkpoint and soup is scored.")
    mode: Literal["min", "max"] = Field("max", description="Whether a higher score is better.")
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description=JOBS_PRIORITY)


class GreedySoupPublic(BaseModel):
    """A greedy soup: the checkpoints' own scores, each trial, and the soup kept."""

    id: int
    name: str
    job_id: int
    evaluate: dict[str, Any]
    mode: str
    state: dict[str, Any]
    model_id: int | None
    status: str
    error: str | None
    created_by: str
    created_at: datetime
    finished_at: datetime | None
