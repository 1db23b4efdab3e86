"""Tables of the surgery context: merges and soups, each run as a job whose model is
registered in the catalog when it succeeds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from training_platform.core.types import JSONType, UTCDateTime, utcnow


class Merge(SQLModel, table=True):
    """A merge (or a soup: a uniform average of one job's checkpoints) of catalog models.

    status: pending (its job has not ended), succeeded (the model is registered as `name`),
    failed or cancelled (as its job ended, or why its model could not be registered).
    """

    __tablename__ = "merges"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, index=True)  # the merged model's catalog name
    kind: str = Field(max_length=16)  # merge | soup
    method: str = Field(max_length=32)
    # [{"model_id", "name", "role": base | input, "weight", ...}]: the parents, by catalog id
    # and name, as the request gave them.
    inputs: list[dict[str, Any]] = Field(sa_type=JSONType)
    parameters: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    dtype: str | None = Field(default=None, max_length=16)
    tokenizer: str = Field(max_length=16)
    # What the merge was expected to need (ram_bytes, disk_bytes, time_class, ...).
    estimate: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    description: str = Field(default="", max_length=1000)
    job_id: int | None = Field(default=None, index=True, unique=True)
    model_id: int | None = Field(default=None, index=True)  # the result, once registered
    status: str = Field(max_length=16, index=True)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Sweep(SQLModel, table=True):
    """A grid of merges over one or two parameters, each candidate evaluated on one dataset;
    the best (by the declared rule) is registered as `name`.

    candidates: [{"index", "values": {axis: value}, "merge_id", "evaluation_id", "score",
    "status"}] in grid order; status of the sweep: pending until every candidate is merged and
    evaluated (or failed), then succeeded (the best registered) or failed (none could be).
    """

    __tablename__ = "merge_sweeps"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, index=True)
    method: str = Field(max_length=32)
    grid: dict[str, Any] = Field(sa_type=JSONType)
    # How each candidate is evaluated: {"dataset", "scorer", "generation", "resources"}.
    evaluate: dict[str, Any] = Field(sa_type=JSONType)
    mode: str = Field(max_length=8)  # max | min
    candidates: list[dict[str, Any]] = Field(sa_type=JSONType)
    model_id: int | None = Field(default=None, index=True)  # the best, once registered
    status: str = Field(max_length=16, index=True)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class GreedySoup(SQLModel, table=True):
    """A greedy soup of one job's checkpoints: ranked by their own evaluations, then, best
    first, each is added to the soup only if the soup's evaluation does not get worse.

    state: {"singles": [{"step", "model_id", "evaluation_id", "score"}], "order": [steps,
    best first], "soup": [steps kept], "score": the soup's, "soup_model_id", "trial": the
    checkpoint being tried ({"step", "merge_id", "evaluation_id"}) or None, "trials": [{"step",
    "merge_id", "evaluation_id", "score", "kept"}]}.
    """

    __tablename__ = "greedy_soups"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, index=True)
    job_id: int = Field(index=True)  # the job whose checkpoints are souped
    evaluate: dict[str, Any] = Field(sa_type=JSONType)
    mode: str = Field(max_length=8)
    state: dict[str, Any] = Field(sa_type=JSONType)
    model_id: int | None = Field(default=None, index=True)
    status: str = Field(max_length=16, index=True)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
