"""Tables of the catalog: the models and datasets jobs may name."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Integer, PrimaryKeyConstraint
from sqlmodel import Field, SQLModel

from training_platform.core.types import JSONType, UTCDateTime, utcnow


class ModelEntry(SQLModel, table=True):
    """A base model jobs can start from, stored inside the managed models root."""

    __tablename__ = "models"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    source: str = Field(max_length=16)  # builtin | local | hub | job | merge
    path: str = Field(max_length=500)  # relative to TP_HOME for managed models
    description: str = Field(default="", max_length=1000)
    parameters: int | None = Field(default=None, sa_type=BigInteger)
    # The job whose final model this is (source "job"): lineage, not a foreign key, so that
    # the catalog does not depend on the jobs tables.
    job_id: int | None = Field(default=None, index=True)
    # Whose model it is: the producing job's project, or the one it was registered to (None:
    # the default project's, as the bundled models are).
    project_id: int | None = Field(default=None, index=True)
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
    # The project it was uploaded to (None: the default project's, as the bundled ones are).
    project_id: int | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The newest version (datasets.models.DatasetVersion); path, format, rows, size and sha256
    # above are that version's.
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})


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


class ModelLineage(SQLModel, table=True):
    """Where a model came from, beyond the job that trained it (ModelEntry.job_id): one row
    per parent of a merge or soup, or the checkpoint a selection chose.

    relation: merged (an input of a merge), base (a merge's base model), soup (a checkpoint
    averaged into a soup), selected (the checkpoint a selection chose). `detail` holds the
    parent's part: its weight and density, or the rule a selection applied.
    """

    __tablename__ = "model_lineage"
    __table_args__ = (PrimaryKeyConstraint("model_id", "parent_id"),)

    model_id: int = Field(
        sa_column=Column(Integer, ForeignKey("models.id", ondelete="CASCADE"), nullable=False)
    )
    parent_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    relation: str = Field(max_length=16)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
