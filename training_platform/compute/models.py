"""Tables of the compute context: what the estimator predicted for a job, and what it used."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, ForeignKey, Integer
from sqlmodel import Field, SQLModel

from training_platform.core.types import JSONType, UTCDateTime, utcnow


class MemoryPrediction(SQLModel, table=True):
    """A GPU job's predicted peak memory per GPU, and once it has run, the measured one.

    The measured peak is the job's largest GPU memory sample (monitoring); the pairs of
    finished jobs are the estimator's error band per (GPU model, backend, algorithm).
    """

    __tablename__ = "memory_predictions"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, unique=True
        )
    )
    backend: str = Field(max_length=32)
    algorithm: str = Field(max_length=32)
    predicted_mb: int  # as a device reading would show it (context and rounding included)
    breakdown: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    gpu_name: str | None = Field(default=None, max_length=200)
    measured_mb: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    measured_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
