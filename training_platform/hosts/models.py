"""Tables of the hosts context: remote GPU servers the platform trains on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from training_platform.core.types import JSONType, UTCDateTime, utcnow


class RemoteHost(SQLModel, table=True):
    """A server reached over SSH (or a Ray cluster), with its credential encrypted.

    `secret` is a Fernet token (core/secrets.py) of the password or private key; it never
    leaves the services that open connections. The host key is pinned on registration
    after the user confirmed its fingerprint; a different key is refused from then on.
    """

    __tablename__ = "remote_hosts"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True)
    runner: str = Field(max_length=8)  # ssh | ray
    address: str = Field(max_length=253)
    port: int = 22
    user: str = Field(max_length=32)
    auth: str = Field(max_length=16)  # password | key
    secret: str = Field(sa_column=Column(Text, nullable=False))
    host_key_type: str = Field(max_length=64)
    host_key: str = Field(sa_column=Column(Text, nullable=False))  # base64 of the public key
    host_key_fingerprint: str = Field(max_length=100)
    work_root: str = Field(max_length=1000)
    python: str = Field(max_length=1000)  # interpreter of the platform's environment there
    environment: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    labels: list[str] = Field(default_factory=list, sa_type=JSONType)
    cpu_slots: int = 1
    ray_address: str | None = Field(default=None, max_length=300)
    ray_token: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_check: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    bootstrap: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
