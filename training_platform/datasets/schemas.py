"""Request and response bodies of the datasets API (never a server path)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, model_validator

from training_platform.core.types import DB_INT_MAX

Ref = (
    Annotated[str, Field(min_length=1, max_length=210)] | Annotated[int, Field(ge=1, le=DB_INT_MAX)]
)


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


class AnalysisCreate(BaseModel):
    """What to compute: lengths with a model's tokenizer (characters without one), the share
    a max length truncates, the label fields to count by."""

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [{"model": "tiny-qwen2", "max_length": 512, "label_fields": ["difficulty"]}]
        },
    }

    version: int | None = Field(None, ge=1, le=DB_INT_MAX, description="Default: the newest.")
    model: Ref | None = Field(
        None, description="A catalog model whose tokenizer and chat template measure lengths."
    )
    max_length: int | None = Field(
        None, ge=1, le=1_048_576, description="Report the rows longer than this."
    )
    label_fields: list[str] = Field(
        default_factory=list, max_length=16, description="Fields to count values of."
    )
    bins: int = Field(20, ge=1, le=200, description="Histogram bins (equal width).")


class AnalysisPublic(BaseModel):
    """An analysis of one version: pending, running, then its statistics or why it failed."""

    id: int
    dataset: str
    version: int
    status: str
    options: dict[str, Any]
    result: dict[str, Any] | None
    error: str
    created_by: str
    created_at: datetime
    finished_at: datetime | None


class Segment(BaseModel):
    """A run of tokens of a rendered sample."""

    part: str = Field(description="'' for a conversation; prompt, chosen or rejected.")
    text: str
    tokens: int
    loss: bool = Field(description="Whether these tokens count toward the loss.")
    truncated: bool = Field(description="Whether max_length cuts these tokens off.")


class RenderedSample(BaseModel):
    """One row as the trainer sees it: its chat template's text with the loss mask."""

    row: int
    task: str
    tokens: int
    loss_tokens: int
    note: str
    segments: list[Segment]


class DedupCreate(BaseModel):
    """Which stages to run and their thresholds; with `against`, a contamination report."""

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [
                {"stages": ["exact", "near"], "near_threshold": 0.8},
                {"stages": ["exact"], "against": "tiny-math-eval"},
            ]
        },
    }

    version: int | None = Field(None, ge=1, le=DB_INT_MAX, description="Default: the newest.")
    stages: list[str] = Field(
        default_factory=lambda: ["exact", "near", "semantic"],
        min_length=1,
        description="Any of exact, near, semantic (run in that order).",
    )
    near_threshold: float = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard similarity of 5-grams for a near pair."
    )
    semantic_threshold: float = Field(
        0.9, gt=0, le=1, description="Cosine similarity of MiniLM embeddings for a semantic pair."
    )
    against: Ref | None = Field(
        None,
        description="Another dataset (e.g. the evaluation set, name@N pins a version): report "
        "and drop the rows of this one that match it.",
    )


class DedupPublic(BaseModel):
    """A dedup: pending, running, then its review (clusters with kept and dropped rows)."""

    id: int
    dataset: str
    version: int
    status: str
    options: dict[str, Any]
    review: dict[str, Any] | None
    accepted_version: int | None
    error: str
    created_by: str
    created_at: datetime
    finished_at: datetime | None


class SearchRequest(BaseModel):
    """Rows like a text, or like one of the dataset's rows."""

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [{"query": "what is 7 times 8?", "limit": 5}, {"row": 3}]
        },
    }

    query: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="Rows whose embedding is nearest this text's (give query or row).",
    )
    row: int | None = Field(
        None, ge=1, le=DB_INT_MAX, description="Rows like this row (itself left out)."
    )
    version: int | None = Field(None, ge=1, le=DB_INT_MAX, description="Default: the newest.")
    limit: int = Field(10, ge=1, le=100, description="Most rows returned, best first.")


class SearchHit(BaseModel):
    """A row and its cosine similarity to the query."""

    row: int
    score: float
    data: dict[str, Any]


class SearchResult(BaseModel):
    """The nearest rows, best first."""

    version: int
    hits: list[SearchHit]


class ValidationSplit(BaseModel):
    """Rows held out for validation: a seeded random fraction, or the rows whose field has a
    value. Trainers train on the rest and validate on them; an evaluation scores only them."""

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [{"fraction": 0.1, "seed": 0}, {"field": "split", "value": "test"}]
        },
    }

    fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of rows held out, drawn at random (at least one row)."
    )
    seed: int = Field(0, ge=0, le=DB_INT_MAX, description="Which rows a fraction draws.")
    field: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Or: hold out the rows whose top-level field...",
    )
    value: bool | Annotated[int, Field(ge=-DB_INT_MAX, le=DB_INT_MAX)] | str | None = Field(
        None, description="...equals this value."
    )

    @model_validator(mode="after")
    def _one_rule(self) -> ValidationSplit:
        if (self.fraction is None) == (self.field is None):
            raise ValueError("give either fraction (and seed) or field and value")
        if self.field is not None and self.value is None:
            raise ValueError("value: the rows whose field has this value are held out")
        return self
