"""Request and response shapes of the evaluation context."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training_platform.core.types import DB_INT_MAX
from training_platform.datasets.schemas import ValidationSplit
from training_platform.jobs.schemas import JobName, Ref, Resources
from training_platform.projects.schemas import ProjectField
from training_platform.worker.queues import PRIORITY_MAX, PRIORITY_MIN

ScorerSpec = Field(
    "numeric",
    min_length=1,
    max_length=256,
    description="exact, numeric, contains, choice, bleu, rouge_l, regex:PATTERN, "
    "pass@K:SCORER (of n >= K completions per prompt), reward:NAME (a builtin reward), "
    "file:NAME (an uploaded reward file, on a worker) or judge:ENDPOINT:RUBRIC (an LLM judge, "
    "on a worker).",
)
# Work that runs as a job (an evaluation, a merge, a server) runs at the job's priority.
JOB_PRIORITY = (
    f"Its job's priority, {PRIORITY_MIN}-{PRIORITY_MAX} (higher starts first); "
    "a value outside that is refused."
)


class Generation(BaseModel):
    """How the outputs are generated (greedy unless temperature > 0)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"max_new_tokens": 64, "max_samples": 100, "batch_size": 16},
                {"max_new_tokens": 256, "temperature": 0.8, "top_p": 0.95, "n": 8, "seed": 1},
            ]
        },
    )

    max_new_tokens: int = Field(32, ge=1, le=4096, description="Most tokens per completion.")
    max_samples: int | None = Field(None, ge=1, le=1_000_000, description="First N rows only.")
    batch_size: int = Field(
        16, ge=1, le=1024, description="Prompts generated together (a progress step each batch)."
    )
    engine: Literal["auto", "transformers", "vllm", "api"] = Field(
        "auto",
        description="auto: vLLM on GPUs where installed, transformers otherwise; "
        "api (the only one) for an endpoint.",
    )
    enforce_eager: bool = Field(
        False, description="vLLM: no torch.compile or graph capture (starts sooner, runs slower)."
    )
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: the top mass kept.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="For sampling (temperature > 0).")
    n: int = Field(
        1,
        ge=1,
        le=64,
        description="Completions per prompt (sampled: needs temperature > 0); pass@k scores them.",
    )

    @model_validator(mode="after")
    def _sampled(self) -> Generation:
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 completions per prompt need a temperature > 0 (sampling)")
        return self


class CheckpointRef(BaseModel):
    """A checkpoint a job wrote, by the job and the step it was saved at."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"job": 12, "step": 200}]}
    )

    job: int = Field(..., ge=1, le=DB_INT_MAX, description="The job's id.")
    step: int = Field(
        ...,
        ge=0,
        le=DB_INT_MAX,
        description="The step it was saved at (GET /api/v1/jobs/{id}/checkpoints lists them).",
    )


class EvaluationCreate(BaseModel):
    """Evaluate a catalog model, a job's final model or one of its checkpoints on a dataset."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "tiny-qwen2 on math",
                    "model": "tiny-qwen2",
                    "dataset": "tiny-math-eval",
                    "scorer": "numeric",
                    "generation": {"max_new_tokens": 32, "max_samples": 50},
                },
                {
                    "name": "step 200 of job 12",
                    "checkpoint": {"job": 12, "step": 200},
                    "dataset": "tiny-math-eval",
                    "scorer": "pass@4:numeric",
                    "generation": {"temperature": 0.8, "n": 4},
                    "resources": {"gpus": 1},
                },
            ]
        },
    )

    name: JobName = Field(description="Shown in lists; need not be unique (1-200 characters).")
    model: Ref | None = Field(None, description="A registered model, by name or id.")
    job: int | None = Field(
        None, ge=1, le=DB_INT_MAX, description="Or: the final model of this succeeded job."
    )
    checkpoint: CheckpointRef | None = Field(
        None, description="Or: a checkpoint of a job (registered as job-N-step-S)."
    )
    endpoint: str | None = Field(
        None, min_length=1, max_length=200, description="Or: an endpoint, by name (api engine)."
    )
    dataset: Ref = Field(..., description="A prompt/answer dataset, by name or id.")
    validation: ValidationSplit | None = Field(
        None, description="Score only the rows this split holds out (as a training job did)."
    )
    scorer: str = ScorerSpec
    generation: Generation = Field(
        default_factory=Generation, description="How outputs are generated; default: greedy."
    )
    resources: Resources = Field(
        default_factory=Resources, description="What its job needs; default: CPU only."
    )
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description=JOB_PRIORITY)
    project: ProjectField = None

    @model_validator(mode="after")
    def _one_target(self) -> EvaluationCreate:
        targets = (self.model, self.job, self.checkpoint, self.endpoint)
        if sum(x is not None for x in targets) != 1:
            raise ValueError("name exactly one of model, job, checkpoint and endpoint")
        return self


class Rescore(BaseModel):
    """Score the stored generations again with another scorer."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"scorer": "contains"}]}
    )

    scorer: str = ScorerSpec


class ScoringPublic(BaseModel):
    """A scorer running on a worker for this evaluation (an uploaded file, an LLM judge)."""

    scorer: str
    status: Literal["queued", "running", "succeeded", "failed"]
    error: str | None
    done: int  # samples scored so far
    attempt: int
    requested_by: str
    requested_at: datetime
    updated_at: datetime


class RubricCreate(BaseModel):
    """What an LLM judge is asked about each sample."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "correct",
                    "text": "Question: {prompt}\nReference: {reference}\nAnswer: {output}\n"
                    "Score the answer's correctness from 0 to 10.",
                    "max_score": 10,
                }
            ]
        },
    )

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$",
        description="Unique; scorers name it as judge:ENDPOINT:NAME.",
    )
    text: str = Field(
        ...,
        min_length=1,
        max_length=20_000,
        description="The question, with {output} and optionally {prompt} and {reference} in "
        "it; the judge answers with a number from 0 to max_score.",
    )
    max_score: float = Field(
        10.0,
        gt=0,
        le=1000,
        description="Top of the judge's scale: a score is its reply's last number over this "
        "(clipped to 0-1).",
    )


class RubricPublic(BaseModel):
    id: int
    name: str
    text: str
    max_score: float
    created_by: str
    created_at: datetime


class EvaluationPublic(BaseModel):
    id: int
    name: str
    model: str  # the model's catalog name, or the endpoint's name
    model_id: int | None  # None for an endpoint
    endpoint: str | None
    dataset: str
    dataset_id: int
    dataset_version: int | None = None  # the version it evaluated on
    job_id: int | None
    engine: str
    engine_used: str | None
    params: dict[str, Any]
    scorer: str
    summary: dict[str, Any]
    status: str
    error: str | None
    samples: int
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    scorings: list[ScoringPublic] = Field(
        default_factory=list, description="Scorers queued or run on a worker."
    )


class EvaluationsPublic(BaseModel):
    items: list[EvaluationPublic]
    total: int


class SamplePublic(BaseModel):
    idx: int
    prompt: str
    reference: str
    output: str
    outputs: list[str] | None  # all n completions, when the evaluation sampled n > 1
    labels: dict[str, Any]
    scores: dict[str, float]
    details: dict[str, str] = Field(
        default_factory=dict, description="Why, by scorer, where it says: a judge's reply."
    )


class SamplesPublic(BaseModel):
    items: list[SamplePublic]
    total: int


class LabelGroup(BaseModel):
    value: str
    n: int
    mean: float | None
    stderr: float | None
    ci_low: float | None
    ci_high: float | None
    interval: str


class BreakdownPublic(BaseModel):
    """One scorer's result by the value of a dataset label (e.g. difficulty)."""

    scorer: str
    label: str | None
    labels: list[str]  # the label keys the samples have
    groups: list[LabelGroup]


class PairedSample(BaseModel):
    idx: int
    prompt: str
    reference: str
    output_a: str
    output_b: str
    score_a: float
    score_b: float
    change: Literal["improved", "regressed", "unchanged"]


class ComparisonPublic(BaseModel):
    """B against A on the samples both have, by one scorer."""

    a: int
    b: int
    scorer: str
    stats: dict[str, Any]
    samples: list[PairedSample]
    total: int  # samples matching the filter (the page holds at most `limit`)


class RankedCandidate(BaseModel):
    evaluation: int
    name: str
    model: str
    stats: dict[str, Any]  # the paired test against the baseline, as in a compare
    p_adjusted: float | None  # Benjamini-Hochberg over all the candidates
    significant: bool  # on the adjusted p-value


class RankingPublic(BaseModel):
    """N candidates against one baseline on the same samples, best mean first."""

    baseline: int
    baseline_name: str
    baseline_mean: float | None
    scorer: str
    candidates: list[RankedCandidate]


class SuiteItem(BaseModel):
    """One dataset of a suite and how it is scored."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"dataset": "tiny-math-eval", "scorer": "numeric", "max_samples": 50}]
        },
    )

    dataset: Ref = Field(..., description="A prompt/answer dataset, by name or id.")
    scorer: str = ScorerSpec
    max_samples: int | None = Field(None, ge=1, le=1_000_000, description="First N rows only.")


class SuiteCreate(BaseModel):
    """A named set of datasets a model is evaluated on together."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "math",
                    "items": [
                        {"dataset": "tiny-math-eval", "scorer": "numeric"},
                        {"dataset": "tiny-math", "scorer": "contains", "max_samples": 100},
                    ],
                    "description": "Arithmetic, held-out and training questions.",
                }
            ]
        },
    )

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$", description="Unique suite name."
    )
    items: list[SuiteItem] = Field(
        ..., min_length=1, max_length=50, description="The datasets, 1 to 50: one evaluation each."
    )
    description: str = Field("", max_length=1000, description="What the suite measures.")


class SuitePublic(BaseModel):
    id: int
    name: str
    items: list[dict[str, Any]]
    description: str
    created_by: str
    created_at: datetime


class SuiteRunCreate(BaseModel):
    """Evaluate one model on every dataset of a suite (one evaluation each)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "tiny-qwen2 on math", "model": "tiny-qwen2"},
                {"name": "job 12", "job": 12, "generation": {"max_new_tokens": 64}},
            ]
        },
    )

    name: JobName = Field(description="Shown in lists; need not be unique (1-200 characters).")
    model: Ref | None = Field(None, description="A registered model, by name or id.")
    job: int | None = Field(None, ge=1, le=DB_INT_MAX, description="Or: a job's final model.")
    checkpoint: CheckpointRef | None = Field(None, description="Or: a job's checkpoint.")
    endpoint: str | None = Field(None, min_length=1, max_length=200, description="Or: an endpoint.")
    generation: Generation = Field(
        default_factory=Generation, description="How outputs are generated; default: greedy."
    )
    resources: Resources = Field(
        default_factory=Resources, description="What each evaluation's job needs."
    )
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX, description=JOB_PRIORITY)
    project: ProjectField = None

    @model_validator(mode="after")
    def _one_target(self) -> SuiteRunCreate:
        targets = (self.model, self.job, self.checkpoint, self.endpoint)
        if sum(x is not None for x in targets) != 1:
            raise ValueError("name exactly one of model, job, checkpoint and endpoint")
        return self


class SuiteRunItem(BaseModel):
    dataset: str
    scorer: str
    evaluation: int
    status: str
    summary: dict[str, Any] | None  # the evaluation's summary under the item's scorer


class SuiteRunPublic(BaseModel):
    """A suite run: each dataset's result, and their unweighted mean once all succeeded."""

    id: int
    name: str
    suite: str
    model: str
    status: Literal["pending", "succeeded", "failed"]  # failed: one of them failed
    mean: float | None  # the mean of the items' means (each dataset counts once)
    items: list[SuiteRunItem]
    created_by: str
    created_at: datetime


class SuiteRunsPublic(BaseModel):
    items: list[SuiteRunPublic]
    total: int
