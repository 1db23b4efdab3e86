"""Tables of the evaluation context: an evaluation, its generations (stored once) and the
scores each scorer gave them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Float, ForeignKey, Integer, PrimaryKeyConstraint, String, Text
from sqlmodel import Field, SQLModel

from training_platform.core.types import JSONType, UTCDateTime, utcnow


class Evaluation(SQLModel, table=True):
    """One model judged on one dataset: a generation job, then scores computed from its rows.

    status: pending (its job has not ended), succeeded (generations stored and scored), failed
    or cancelled (as its job ended, or why its generations could not be stored).
    """

    __tablename__ = "evaluations"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    # What was evaluated: a catalog model (a job's final model is registered as one). Lineage,
    # not foreign keys, as for a model's producer job: the catalog stays independent.
    model_id: int | None = Field(default=None, index=True)  # None for an endpoint
    model_name: str = Field(max_length=200)  # or the endpoint's name
    endpoint: str | None = Field(default=None, max_length=200)
    dataset_id: int = Field(index=True)
    dataset_name: str = Field(max_length=200)
    dataset_version: int | None = None  # the version number it evaluated on (pinned)
    # The job that generates; its log, progress and cancel are the evaluation's.
    job_id: int | None = Field(default=None, index=True, unique=True)
    engine: str = Field(max_length=16)  # as asked: auto | transformers | vllm
    engine_used: str | None = Field(default=None, max_length=16)  # as it ran
    # Generation settings as the job ran them (max_new_tokens, max_samples, batch_size, ...).
    params: dict[str, Any] = Field(sa_type=JSONType)
    scorer: str = Field(max_length=256)  # the scorer shown first; others are added by rescore
    # {scorer spec: Summary.to_dict()} for every scorer that scored it.
    summary: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    status: str = Field(max_length=16, index=True)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    samples: int = 0
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class EvaluationSample(SQLModel, table=True):
    """One generation: the prompt as the model saw it, its output and the reference."""

    __tablename__ = "evaluation_samples"
    __table_args__ = (PrimaryKeyConstraint("evaluation_id", "idx"),)

    evaluation_id: int = Field(
        sa_column=Column(Integer, ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False)
    )
    idx: int  # the row of the dataset: samples of two evaluations pair by it
    prompt: str = Field(sa_column=Column(Text, nullable=False))
    reference: str = Field(sa_column=Column(Text, nullable=False))
    output: str = Field(sa_column=Column(Text, nullable=False))  # the first completion
    labels: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    # All n completions when n > 1 were sampled per prompt (pass@k scores them); else None.
    outputs: list[str] | None = Field(default=None, sa_type=JSONType, nullable=True)


class EvaluationScore(SQLModel, table=True):
    """What one scorer gave one sample."""

    __tablename__ = "evaluation_scores"
    __table_args__ = (PrimaryKeyConstraint("evaluation_id", "scorer", "idx"),)

    evaluation_id: int = Field(
        sa_column=Column(Integer, ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False)
    )
    scorer: str = Field(sa_column=Column(String(256), nullable=False))
    idx: int
    score: float = Field(sa_column=Column(Float, nullable=False))
    # Why, where the scorer says: a judge's reply.
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class EvaluationScoring(SQLModel, table=True):
    """A scorer that runs on a worker (an uploaded file, an LLM judge) scoring the stored
    generations of one evaluation: queued, running, then succeeded or failed."""

    __tablename__ = "evaluation_scorings"
    __table_args__ = (PrimaryKeyConstraint("evaluation_id", "scorer"),)

    evaluation_id: int = Field(
        sa_column=Column(Integer, ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False)
    )
    scorer: str = Field(sa_column=Column(String(256), nullable=False))
    status: str = Field(max_length=16)
    attempt: int = 1  # a new attempt when the last one was lost (its worker died)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    done: int = 0  # samples scored so far
    requested_by: str = Field(max_length=200)
    requested_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Rubric(SQLModel, table=True):
    """What an LLM judge is asked about each sample: a text with {prompt}, {reference} and
    {output} in it, answered with a number from 0 to max_score."""

    __tablename__ = "rubrics"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    text: str = Field(sa_column=Column(Text, nullable=False))
    max_score: float = 10.0
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class EvalSuite(SQLModel, table=True):
    """A named set of datasets, each with its scorer, a model is evaluated on together (built
    by hand, or by `tp eval suites import-lm-eval` from lm-evaluation-harness tasks)."""

    __tablename__ = "eval_suites"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    # [{"dataset": name, "scorer": spec, "max_samples": int | None}]
    items: list[dict[str, Any]] = Field(sa_type=JSONType)
    description: str = Field(default="", max_length=1000)
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SuiteRun(SQLModel, table=True):
    """One model evaluated on every dataset of a suite: one evaluation per item."""

    __tablename__ = "suite_runs"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    suite: str = Field(max_length=200, index=True)
    model_name: str = Field(max_length=200)  # what was evaluated, as its evaluations name it
    evaluation_ids: list[int] = Field(sa_type=JSONType)  # in the suite's item order
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
