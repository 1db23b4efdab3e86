"""Tables of auth: API tokens, stored only as hashes."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from training_platform.core.types import UTCDateTime, utcnow


class ApiToken(SQLModel, table=True):
    """A bearer token; the secret itself is never stored, only its SHA-256."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    token_hash: str = Field(max_length=64, unique=True)
    role: str = Field(default="admin", max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
