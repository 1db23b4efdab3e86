"""Request and response bodies of the datasets API (never a server path)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class DatasetPublic(BaseModel):
    """A registered dataset: its newest version's file."""

    id: int
    name: str
    source: str
    format: str
    task: str | None
    rows: int
    size_bytes: int
    sha256: str
    version: int = Field(description="The newest version's number: what the bare name means.")
    description: str
    created_at: datetime


class DatasetUploaded(DatasetPublic):
    """An upload: the dataset, and the rule that chose its format."""

    detected_by: str = Field(description="The detection rule that fired, or 'given'.")


class RowProblem(BaseModel):
    """A row that does not fit the format."""

    row: int
    message: str


class DatasetPreview(BaseModel):
    """What an upload would be: the format and why, the first rows normalised, bad rows."""

    format: str
    detected_by: str
    task: str
    rows: int
    bad_rows: int
    errors: list[RowProblem]
    preview: list[dict[str, Any]] = Field(description="The first rows as the trainer reads them.")


class DatasetVersionPublic(BaseModel):
    """One version of a dataset and its manifest."""

    number: int
    format: str
    rows: int
    size_bytes: int
    sha256: str
    origin: str
    parent: int | None
    manifest: dict[str, Any]
    created_at: datetime


class NumberedRow(BaseModel):
    """A source row with its number (line of a JSONL file, position otherwise)."""

    row: int
    data: dict[str, Any]


class DatasetDiff(BaseModel):
    """Rows of `other` that `base` lacks (added) and rows of `base` gone from `other`."""

    base: int
    other: int
    added: int
    removed: int
    unchanged: int
    added_rows: list[NumberedRow]
    removed_rows: list[NumberedRow]


class RowsPage(BaseModel):
    """A page of a version's rows, optionally those whose text contains a query."""

    version: int
    total: int = Field(description="Rows that match (all rows without a query).")
    offset: int
    rows: list[NumberedRow]
