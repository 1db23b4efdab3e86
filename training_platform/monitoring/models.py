"""Tables of monitoring: alerts raised on jobs, webhooks and their deliveries, platform settings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from training_platform.core.types import JSONType, UTCDateTime, utcnow


class Alert(SQLModel, table=True):
    """A rule that held on a job's metrics; raised once per rule and attempt."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "rule_index", name="uq_alerts_rule_attempt"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    attempt: int
    # Position in the job's rules; -1: the platform's default NaN rule; -2: hang detection.
    rule_index: int
    rule: str = Field(max_length=16)  # nan | above | below | stalled
    key: str = Field(max_length=200)  # the metric key that triggered it
    step: int | None = None
    value: float | None = None  # None for NaN/inf
    severity: str = Field(max_length=16)  # warning | critical
    message: str = Field(sa_column=Column(Text, nullable=False))
    action: str = Field(max_length=16)  # notify | pause | stop
    action_result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_by: str | None = Field(default=None, max_length=200)


class Webhook(SQLModel, table=True):
    """Where to send notifications; the URL is a secret (Slack's carry a token): encrypted."""

    __tablename__ = "webhooks"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True)
    url: str = Field(sa_column=Column(Text, nullable=False))  # Fernet token of the URL
    url_hint: str = Field(max_length=300)  # scheme://host, for display
    format: str = Field(max_length=8)  # json | slack
    events: list[str] = Field(default_factory=list, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WebhookDelivery(SQLModel, table=True):
    """One notification to one webhook: created once per (webhook, source), retried."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "source", name="uq_webhook_deliveries_source"),
    )

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    source: str = Field(max_length=64)  # event:<job event id> | alert:<alert id>
    event: str = Field(max_length=32)  # job.succeeded | job.failed | job.stalled | alert ...
    payload: dict[str, Any] = Field(sa_type=JSONType)
    status: str = Field(default="pending", max_length=8, index=True)  # pending | sent | failed
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class NotificationCursor(SQLModel, table=True):
    """How far the notifier has read the job events and alerts (one row)."""

    __tablename__ = "notification_cursor"

    id: int = Field(default=1, primary_key=True)
    last_event_id: int = 0
    last_alert_id: int = 0


class GpuSample(SQLModel, table=True):
    """One reading of one device a running job holds (real devices only, never simulated)."""

    __tablename__ = "gpu_samples"
    __table_args__ = (Index("ix_gpu_samples_job_taken", "job_id", "taken_at"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(
        sa_column=Column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    )
    attempt: int
    host: str = Field(max_length=200)
    device_index: int
    taken_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    memory_used_mb: int
    memory_total_mb: int
    utilization_pct: int | None = None
    power_w: float | None = None
    temperature_c: int | None = None


class PlatformSetting(SQLModel, table=True):
    """A platform-wide setting edited through the API, stored as JSON under its key.

    Today one key: `default_alert_rules`, the rules a job gets when its spec sets none.
    """

    __tablename__ = "platform_settings"

    key: str = Field(max_length=63, primary_key=True)
    value: Any = Field(sa_type=JSONType, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
