"""Request and response models of the compute context."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from training_platform.jobs.schemas import Ref, Resources


class EstimateCreate(BaseModel):
    """A job as the New job form holds it: what to size."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "tiny-qwen2",
                    "backend": "trl",
                    "algorithm": "sft",
                    "dataset": "tiny-sft",
                    "hyperparameters": {"per_device_train_batch_size": 8, "max_length": 512},
                    "resources": {"gpus": 1},
                }
            ]
        },
    )

    model: Ref = Field(..., description="Catalog model name or id (local models only).")
    backend: str = Field(
        ...,
        min_length=1,
        max_length=32,
        examples=["trl"],
        description="As a job's: trl, verl or builtin (GET /api/v1/backends).",
    )
    algorithm: str = Field(
        ..., min_length=1, max_length=32, examples=["sft"], description="As a job's, e.g. sft."
    )
    dataset: str | None = Field(
        None,
        min_length=1,
        max_length=210,
        description="Dataset name or name@version: with an analysis in the model's tokens, "
        "rows are sized as long as its longest (at most max_length).",
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="As a job's; left out: the pair's defaults."
    )
    resources: Resources = Field(
        default_factory=Resources, description="As a job's: the GPUs it may use."
    )


class EstimatePart(BaseModel):
    """An estimate in MB: the peak, the phase that sets it and its parts."""

    peak_mb: int = Field(..., description="Peak of the tensors per GPU.")
    device_mb: int = Field(
        ...,
        description="What the GPU would show: the peak, the allocator's rounding (5%) "
        "and the CUDA context (600 MB).",
    )
    phase: str
    breakdown_mb: dict[str, int]
    basis: list[str]


class DevicesPublic(BaseModel):
    """The largest GPU the job can be placed on, and how many its host has."""

    name: str
    memory_mb: int
    count: int
    host: str


class OptionPublic(BaseModel):
    """A configuration that fits: the form fields it changes and its memory per GPU."""

    summary: str
    changes: dict[str, Any]
    gpus: int
    device_mb: int
    estimate: EstimatePart


class ErrorBand(BaseModel):
    """The estimator's error on finished GPU jobs of one GPU model, backend and algorithm."""

    gpu: str
    backend: str
    algorithm: str
    points: int
    median_pct: float
    low_pct: float
    high_pct: float


class AccuracyPublic(BaseModel):
    """The estimator's error bands, and how many GPU jobs it sized."""

    bands: list[ErrorBand]
    predictions: int


class EstimatePublic(BaseModel):
    """A job sized before it runs."""

    sized: bool
    reason: str | None = Field(None, description="Why it was not sized.")
    architecture: str | None = None
    parameters: int | None = None
    estimate: EstimatePart | None = None
    devices: DevicesPublic | None = None
    fits: bool | None = Field(None, description="Whether it fits the largest device it may use.")
    headroom_mb: int | None = None
    error_band: ErrorBand | None = Field(
        None, description="The estimator's error on finished jobs like this one, if any ran."
    )
    recommendations: list[OptionPublic] = Field(default_factory=list)


class FitPublic(BaseModel):
    """Whether one use of a model fits a GPU, and its memory."""

    mb: int
    fits: bool
    gpus: int | None = None


class ModelAdvice(BaseModel):
    """A catalog model on one kind of GPU."""

    model: str
    parameters: int
    inference: FitPublic
    lora: FitPublic
    full: FitPublic
    full_sharded: FitPublic


class GpuAdvice(BaseModel):
    """One host's kind of GPU and the catalog models that fit it."""

    host: str
    gpu: str
    memory_mb: int
    count: int
    models: list[ModelAdvice]


class PredictionPublic(BaseModel):
    """A GPU job's predicted peak memory per GPU, and the measured one once it has run."""

    job_id: int
    backend: str
    algorithm: str
    predicted_mb: int
    measured_mb: int | None
    error_pct: float | None
    gpu_name: str | None
    estimate: dict[str, Any]
