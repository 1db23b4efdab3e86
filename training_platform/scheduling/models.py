"""Tables of scheduling: hosts, their devices, and leases of devices to jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, ForeignKey, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from training_platform.core.types import JSONType, UTCDateTime, utcnow


class Host(SQLModel, table=True):
    """A machine that runs trainings, as its last inventory described it."""

    __tablename__ = "hosts"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    # Where the GPU list came from: nvml | nvidia-smi | simulated | none (no GPU found).
    gpu_source: str = Field(max_length=16)
    cpu_slots: int = 1
    info: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class GpuDevice(SQLModel, table=True):
    """One GPU of a host, with its memory and what else runs on it."""

    __tablename__ = "gpu_devices"
    __table_args__ = (UniqueConstraint("host_id", "index", name="uq_gpu_devices_host_index"),)

    id: int | None = Field(default=None, primary_key=True)
    host_id: int = Field(
        sa_column=Column(ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    index: int
    uuid: str = Field(default="", max_length=100)
    name: str = Field(max_length=200)
    memory_total_mb: int
    memory_used_mb: int = 0
    utilization_pct: int | None = None
    # Processes the platform did not start; a device with any is occupied and never leased.
    foreign_processes: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONType)
    simulated: bool = False
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DeviceLease(SQLModel, table=True):
    """A device (GPU, or a CPU training slot) held by one attempt of a job.

    At most one lease per device is active (released_at IS NULL): a partial unique index
    makes the database refuse a second one, whatever the processes racing for it.
    """

    __tablename__ = "device_leases"
    __table_args__ = (
        Index(
            "uq_device_leases_active",
            "host",
            "kind",
            "device_index",
            unique=True,
            sqlite_where=text("released_at IS NULL"),
            postgresql_where=text("released_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(
        sa_column=Column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    attempt: int
    host: str = Field(max_length=200)
    kind: str = Field(max_length=8)  # gpu | cpu
    device_index: int
    simulated: bool = False
    acquired_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    released_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    release_reason: str | None = Field(default=None, max_length=200)
