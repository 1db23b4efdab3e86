"""Request and response shapes of the jobs API."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from training_platform.core.types import DB_INT_MAX
from training_platform.datasets.schemas import ValidationSplit
from training_platform.projects.schemas import ProjectField
from training_platform.worker.queues import (
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TRAINING,
)

_BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def _check_name(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    for char in value:
        if unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS:
            raise ValueError(f"must not contain control characters (found {char!r})")
    return value


JobName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_name)]
Ref = (
    Annotated[str, Field(min_length=1, max_length=200)] | Annotated[int, Field(ge=1, le=DB_INT_MAX)]
)


class Resources(BaseModel):
    """What a job needs from the machine."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"gpus": 0},
                {"gpus": 2, "gpu_type": "H100", "min_gpu_memory_gb": 40},
                {"gpus": 1, "host": "gpu-1", "devices": [3]},
            ]
        },
    )

    gpus: int = Field(0, ge=0, le=64, description="GPUs on one host; 0 runs on CPU.")
    gpu_type: str | None = Field(
        None, min_length=1, max_length=100, description="Part of the GPU name, e.g. H100."
    )
    min_gpu_memory_gb: float | None = Field(
        None, gt=0, le=4096, description="Least memory per GPU, in GB."
    )
    host: str | None = Field(None, min_length=1, max_length=200, description="Run on this host.")
    devices: list[int] | None = Field(
        None, max_length=64, description="Exactly these device indices (needs host)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Resources:
        if self.gpus == 0 and (self.gpu_type or self.min_gpu_memory_gb or self.devices):
            raise ValueError("gpu_type, min_gpu_memory_gb and devices need gpus >= 1")
        if self.devices is not None:
            if self.host is None:
                raise ValueError("devices need a host")
            if len(set(self.devices)) != len(self.devices) or len(self.devices) != self.gpus:
                raise ValueError(f"devices must list {self.gpus} distinct indices")
            if any(d < 0 for d in self.devices):
                raise ValueError("device indices start at 0")
        return self


# How an attempt ended, as the retry policy names it.
EndCause = Literal["killed", "crashed", "lost", "error", "stalled", "time_limit"]
END_CAUSES: tuple[str, ...] = ("killed", "crashed", "lost", "error", "stalled", "time_limit")


def _default_retry_causes() -> list[EndCause]:
    return ["killed", "crashed", "lost", "stalled"]


class JobPolicy(BaseModel):
    """What the platform does on its own when an attempt fails, hangs or runs too long."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "max_attempts": 3,
                    "retry_on": ["killed", "crashed", "lost", "stalled"],
                    "retry_backoff_s": 60,
                    "stall_timeout_s": 1800,
                    "on_stall": "retry",
                    "max_runtime_s": 86400,
                }
            ]
        },
    )

    max_attempts: int = Field(
        1,
        ge=1,
        le=20,
        description="Attempts in all, the first included; more than 1 retries failed attempts "
        "whose cause is in retry_on, from the last checkpoint when there is one.",
    )
    retry_on: list[EndCause] = Field(
        default_factory=_default_retry_causes,
        max_length=len(END_CAUSES),
        description="killed: SIGKILL (the OOM killer's signal); crashed: SIGSEGV, SIGBUS, "
        "SIGABRT and other fatal signals; lost: no exit status (host reboot); error: a non-zero "
        "exit code; stalled: stopped by hang detection; time_limit: stopped at max_runtime_s.",
    )
    retry_backoff_s: float = Field(
        30.0, ge=0, le=86400, description="Wait before the first retry; doubles each time."
    )
    stall_timeout_s: float | None = Field(
        None,
        gt=0,
        le=30 * 86400,
        description="Flag the job stalled when its log and metrics have not grown for this long "
        "(default: the platform's TP_STALL_TIMEOUT_S).",
    )
    on_stall: Literal["keep", "retry", "fail"] = Field(
        "keep",
        description="keep: flag it and let it run; retry: stop it and start the next attempt "
        "(within max_attempts); fail: stop it and end the job failed.",
    )
    max_runtime_s: float | None = Field(
        None,
        gt=0,
        le=365 * 86400,
        description="Longest an attempt may run; then it checkpoints if its trainer can, stops, "
        "and the job fails with cause time_limit.",
    )

    @model_validator(mode="after")
    def _retry_needs_attempts(self) -> JobPolicy:
        if self.on_stall == "retry" and self.max_attempts < 2:
            raise ValueError("on_stall 'retry' needs max_attempts of 2 or more")
        return self


class AlertRule(BaseModel):
    """A condition on the job's metrics, checked as they are ingested, and what to do then.

    nan: a metric whose key matches `key` is NaN or infinite; above/below: it crosses
    `threshold` (a KL that runs away, a reward that collapses). `key` may use * wildcards.
    Each rule raises one alert per attempt.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"rule": "nan", "key": "*loss*", "action": "pause"},
                {"rule": "above", "key": "kl", "threshold": 0.5, "action": "stop"},
            ]
        },
    )

    rule: Literal["nan", "above", "below"] = Field(
        description="nan: a value is NaN or infinite; above/below: a finite value is strictly "
        "above/below threshold."
    )
    key: str = Field(
        "*loss*",
        min_length=1,
        max_length=200,
        description="Metric keys the rule watches; * matches any characters (case-sensitive).",
    )
    threshold: float | None = Field(
        None, allow_inf_nan=False, description="Needed by above and below; nan takes none."
    )
    action: Literal["notify", "pause", "stop"] = Field(
        "notify", description="notify: alert only; pause: checkpoint and pause; stop: cancel."
    )

    @model_validator(mode="after")
    def _threshold(self) -> AlertRule:
        if self.rule in ("above", "below") and self.threshold is None:
            raise ValueError(f"rule {self.rule!r} needs a threshold")
        if self.rule == "nan" and self.threshold is not None:
            raise ValueError("rule 'nan' takes no threshold")
        return self


class JobCreate(BaseModel):
    """A job as submitted: what to train, on what, how, and how urgently."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "sft tiny-qwen2",
                    "backend": "trl",
                    "algorithm": "sft",
                    "model": "tiny-qwen2",
                    "dataset": "tiny-sft",
                    "hyperparameters": {"max_steps": 200, "learning_rate": 0.005},
                    "resources": {"gpus": 0},
                    "priority": 5,
                },
                {
                    "name": "grpo on 2 GPUs",
                    "backend": "verl",
                    "algorithm": "grpo",
                    "model": "tiny-qwen2",
                    "dataset": "tiny-math@1",
                    "hyperparameters": {"total_steps": 100},
                    "validation": {"fraction": 0.1, "seed": 0},
                    "resources": {"gpus": 2, "gpu_type": "H100"},
                    "policy": {"max_attempts": 3},
                    "alerts": [{"rule": "above", "key": "*kl*", "threshold": 1.0}],
                },
            ]
        },
    )

    name: JobName = Field(
        description="Shown in lists and searched by them; need not be unique (1-200 characters)."
    )
    backend: str = Field(
        "trl",
        max_length=32,
        description="trl, verl or builtin (evaluate, serve, merge); GET /api/v1/backends lists "
        "every backend/algorithm pair.",
    )
    algorithm: str = Field(
        ...,
        max_length=32,
        description="sft, dpo, ppo, grpo or gspo (trl; verl: sft, ppo, grpo, gspo), or "
        "evaluate, serve, merge (builtin).",
    )
    model: Ref | None = Field(
        None,
        description="Registered model, by name or id; every job needs one but an evaluation "
        "of an endpoint (hyperparameters.endpoint).",
    )
    dataset: Ref | None = Field(
        None,
        description="Registered dataset, by name or id, its newest version; `name@N` pins "
        "version N. Every algorithm but serve needs one.",
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="The pair's parameters, checked against its schema (GET /api/v1/backends); "
        "left out: its defaults.",
    )
    validation: ValidationSplit | None = Field(
        None,
        description="Hold rows of the dataset out: the trainer validates on them (TRL SFT and "
        "DPO, verl), an evaluation scores only them.",
    )
    resources: Resources = Field(
        default_factory=Resources, description="What it needs; default: CPU only."
    )
    priority: int = Field(
        PRIORITY_DEFAULT,
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        description=f"{PRIORITY_MIN}-{PRIORITY_MAX}; higher starts first.",
    )
    policy: JobPolicy = Field(
        default_factory=JobPolicy,
        description="Retries, hang detection and time limit; default: one attempt, no time limit.",
    )
    alerts: list[AlertRule] = Field(
        default_factory=list,
        max_length=32,
        description="Alert rules; left out: the platform's default rules (GET "
        "/api/v1/alert-rules). Without a nan rule of its own a job also gets a notify-only "
        "rule for NaN losses.",
    )
    project: ProjectField = None


class PauseRequest(BaseModel):
    """How to pause a running job."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"mode": "checkpoint"}, {"mode": "suspend"}]},
    )

    mode: Literal["checkpoint", "suspend"] = Field(
        "checkpoint",
        description="checkpoint: the trainer saves a checkpoint and exits, freeing the devices; "
        "resume starts a new attempt from it. suspend: the whole process group is stopped "
        "(SIGSTOP) in place and keeps its devices and memory; resume continues it (SIGCONT).",
    )


class Progress(BaseModel):
    """How far the trainer says it is."""

    step: int | None
    total: int | None


class JobPublic(BaseModel):
    """A job as clients see it."""

    id: int
    name: str
    backend: str
    algorithm: str
    model: str | None  # None for an evaluation of an endpoint
    dataset: str | None  # None for an algorithm that takes no data (serve)
    dataset_version: int | None = None  # the version it was submitted on
    spec: dict[str, Any]
    priority: int
    queue: str
    status: str
    version: int
    attempt: int
    created_by: str
    project: str = Field("default", description="Whose GPU quota it uses.")
    preemptible: bool = Field(
        False,
        description="Placed above its project's guarantee: a job within its own project's "
        "guarantee may have it paused at a checkpoint and requeued.",
    )
    node: str | None
    runner: str | None
    exit_code: int | None
    error: str | None
    end_cause: str | None = Field(None, description="Why the last attempt ended (if it failed).")
    retry_at: datetime | None = Field(
        None, description="When the retry policy starts the next attempt of this failed job."
    )
    pause_mode: str | None = Field(None, description="checkpoint or suspend, while paused.")
    last_progress_at: datetime | None = Field(
        None, description="When the run's log or metrics last grew."
    )
    outputs: dict[str, Any] | None
    inputs: dict[str, Any] | None = Field(
        None, description="What the attempt runs on: prepared dataset hash and rows, resume step."
    )
    devices: list[str] = Field(
        default_factory=list, description="Leased now, as host:gpu<i> or host:cpu<i>."
    )
    queue_position: int | None = Field(None, description="Place among the waiting jobs (1 first).")
    wait_reason: str | None = Field(None, description="Why a queued job has not started yet.")
    estimated_wait_s: float | None = Field(
        None,
        description="Rough: the running jobs' remaining steps at their measured pace, then the "
        "jobs ahead at what finished jobs like them took; null where any of it is unknown.",
    )
    progress: Progress
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    """A page of jobs."""

    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class JobEventPublic(BaseModel):
    """One status change."""

    id: int
    attempt: int
    from_status: str | None
    to_status: str
    actor: str
    reason: str
    detail: str | None = Field(None, description="Evidence: a stack dump, a log tail.")
    created_at: datetime


class LogSlice(BaseModel):
    """Log bytes of one attempt from `offset`; ask again from `next_offset` for more (or with
    `before=offset` for the lines above)."""

    attempt: int
    offset: int = Field(description="Where `text` starts (0: the log's first byte).")
    next_offset: int = Field(description="Where `text` ends.")
    text: str
    complete: bool = Field(
        description="True when the attempt has ended and all was read (false with `before`)."
    )


class MetricPoint(BaseModel):
    """One value at one step."""

    step: int
    key: str
    value: float | None


class MetricsPublic(BaseModel):
    """Metrics after `since_step`, ordered by step."""

    points: list[MetricPoint]
    keys: list[str]
    last_step: int | None


class CheckpointPublic(BaseModel):
    """A checkpoint or final model of a job, with the metrics reported at its step."""

    id: int
    attempt: int
    step: int
    path: str
    final: bool
    size_bytes: int | None
    created_at: datetime
    metrics: dict[str, float | None] = Field(default_factory=dict)


class PlanPublic(BaseModel):
    """A launch plan: argv list, environment and files; no shell string anywhere."""

    backend: str
    algorithm: str
    argv: list[str]
    env: dict[str, str]
    files: dict[str, str]
    run_dir: str
    runner: str


QUEUE_FOR_JOBS = TRAINING
