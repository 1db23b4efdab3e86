"""Tables of the datasets context: the versions of a dataset, and the analyses of a version."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from training_platform.core.types import JSONType, UTCDateTime, utcnow


class DatasetVersion(SQLModel, table=True):
    """One content of a dataset: the file (content-addressed) and its manifest.

    A dataset's name points to its newest version (`datasets.version`); jobs and evaluations
    record the number of the version they used, and a version is never changed.
    """

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    number: int
    path: str = Field(max_length=500)  # relative to TP_HOME: datasets/uploads/<sha256>.<suffix>
    format: str = Field(max_length=32)
    rows: int
    size_bytes: int = Field(sa_type=BigInteger)
    sha256: str = Field(max_length=64)
    origin: str = Field(max_length=16)  # builtin | upload | dedup
    parent: int | None = None  # the version number this one was derived from
    manifest: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DatasetAnalysis(SQLModel, table=True):
    """Statistics of one dataset version, computed by a task on the preprocessing queue."""

    __tablename__ = "dataset_analyses"

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    version: int
    status: str = Field(default="pending", max_length=16)  # pending | running | succeeded | failed
    # model (catalog name and id), max_length, label_fields, bins
    options: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    result: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    error: str = Field(default="", max_length=2000)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DatasetDedup(SQLModel, table=True):
    """A deduplication of one version (or its contamination by another dataset): computed by a
    task, reviewed by a user, and only then, when accepted, written as a new version."""

    __tablename__ = "dataset_dedups"

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    version: int
    # pending | running | review | accepted | discarded | failed
    status: str = Field(default="pending", max_length=16)
    # stages, near_threshold, semantic_threshold, against ({id, name, version} or None)
    options: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    review: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    accepted_version: int | None = None  # the version accepting it wrote
    error: str = Field(default="", max_length=2000)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
