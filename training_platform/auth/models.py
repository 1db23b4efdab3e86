"""Tables of auth: users with their role, and their API tokens, stored only as hashes."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from training_platform.core.types import UTCDateTime, utcnow

# Each role may do what the ones before it may: viewers read, members also submit and change
# work, admins also manage users, hosts, secrets, webhooks and settings.
ROLES = ("viewer", "member", "admin")


def rank(role: str) -> int:
    """The role's place in ROLES (an unknown role ranks below every one)."""
    return ROLES.index(role) if role in ROLES else -1


class User(SQLModel, table=True):
    """Someone who uses the platform: a role, and whether they may upload code."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True)
    role: str = Field(default="member", max_length=16)
    # Reward files run as code inside trainings: uploading one needs admin or this.
    can_run_code: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiToken(SQLModel, table=True):
    """A bearer token of a user; the secret itself is never stored, only its SHA-256. Its role
    caps what it may do: the effective role is the lower of the token's and its user's."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    token_hash: str = Field(max_length=64, unique=True)
    role: str = Field(default="admin", max_length=16)
    user_id: int | None = Field(default=None, foreign_key="users.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AuditEvent(SQLModel, table=True):
    """Who did what among the actions an admin (or the code permission) allows: users, tokens,
    hosts, secrets, webhooks, reward files. Jobs and pipelines keep their own events."""

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    user: str = Field(max_length=63)
    token: str = Field(max_length=200)
    method: str = Field(max_length=8)
    route: str = Field(max_length=200)  # the route's template, e.g. /api/v1/users/{name}
    path: str = Field(max_length=1000)  # the path itself (never the query string)
    status: int
