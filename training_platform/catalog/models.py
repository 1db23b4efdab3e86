"""Tables of the catalog: the models and datasets jobs may name."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel

from training_platform.core.types import UTCDateTime, utcnow


class ModelEntry(SQLModel, table=True):
    """A base model jobs can start from, stored inside the managed models root."""

    __tablename__ = "models"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    source: str = Field(max_length=16)  # builtin | local | hub | job
    path: str = Field(max_length=500)  # relative to TP_HOME for managed models
    description: str = Field(default="", max_length=1000)
    parameters: int | None = Field(default=None, sa_type=BigInteger)
    # The job whose final model this is (source "job"): lineage, not a foreign key, so that
    # the catalog does not depend on the jobs tables.
    job_id: int | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DatasetEntry(SQLModel, table=True):
    """A dataset file inside the managed datasets root."""

    __tablename__ = "datasets"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    source: str = Field(max_length=16)  # builtin | upload
    path: str = Field(max_length=500)  # relative to TP_HOME
    format: str = Field(max_length=32)  # messages | prompt_response | preference | prompt_answer
    rows: int
    size_bytes: int = Field(sa_type=BigInteger)
    sha256: str = Field(max_length=64)
    description: str = Field(default="", max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RewardFileEntry(SQLModel, table=True):
    """A user reward file: Python with a `compute_score` function, checked without running it."""

    __tablename__ = "reward_files"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    path: str = Field(max_length=500)  # relative to TP_HOME
    sha256: str = Field(max_length=64)
    size_bytes: int = Field(sa_type=BigInteger)
    description: str = Field(default="", max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
