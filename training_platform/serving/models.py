"""Tables of the serving context: the OpenAI-compatible endpoints the platform knows."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from training_platform.core.types import UTCDateTime, utcnow


class Endpoint(SQLModel, table=True):
    """An OpenAI-compatible server: one a user registered, or one a serve job runs.

    `api_key` is a Fernet token (core/secrets.py) of the key sent as `Authorization: Bearer`;
    it never leaves the database but into the 0600 file of the run that calls the endpoint.
    A serve job's endpoint (`job_id` set) is registered by the serving tick once its server
    answers, listens on the loopback of the job's node and is removed when the job ends.
    """

    __tablename__ = "endpoints"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True, index=True)
    base_url: str = Field(max_length=2000)  # up to /v1
    # The model name sent in requests (a serve job's: its model's path, shown as its name).
    model: str = Field(max_length=2000)
    api_key: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    concurrency: int = 8  # requests in flight at once
    max_retries: int = 3  # on 429, 5xx and connection errors, with exponential backoff
    rate_limit: float | None = None  # most requests started per second; None: no limit
    timeout_s: float = 120.0
    job_id: int | None = Field(default=None, unique=True, index=True)
    job_attempt: int | None = None
    engine: str | None = Field(default=None, max_length=16)  # a serve job's server
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
