"""Tables of projects: a project's GPU quota, and who belongs to it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from training_platform.core.types import UTCDateTime, utcnow

# Every job belongs to a project; work submitted without one goes here. Every user is a
# member of it, and it has no guarantee: the project of a single team.
DEFAULT_PROJECT = "default"


class Project(SQLModel, table=True):
    """Work that shares a GPU quota: `guaranteed_gpus` it may always claim (taking them back
    from work above its own guarantee), at most `max_gpus` at once (None: no limit), at most
    `user_max_gpus` per member (None: no limit). Its share of the fair-share order is its
    guarantee (a project without one counts as one GPU)."""

    __tablename__ = "projects"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True)
    description: str = Field(default="", max_length=1000)
    guaranteed_gpus: int = 0
    max_gpus: int | None = None
    user_max_gpus: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ProjectMember(SQLModel, table=True):
    """A user's membership of a project."""

    __tablename__ = "project_members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=Column(Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)
    )
    user_id: int = Field(
        sa_column=Column(Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    )
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
