"""The live message schema: what /api/v1/ws/jobs/{id} sends and accepts (version 1).

Every server message carries `v` (the schema version) and `type`. A client resumes after a
reconnect by sending the last step it saw; it then receives exactly the points after it.
`GET /api/v1/ws/schema` serves the JSON Schema of both directions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from training_platform.monitoring.live import SCHEMA_VERSION as SCHEMA_VERSION  # re-exported


class Point(BaseModel):
    """One metric value; null where the trainer reported NaN or an infinity."""

    step: int
    key: str
    value: float | None


class JobState(BaseModel):
    """A job's state as the live view shows it."""

    id: int
    name: str
    status: str
    attempt: int
    version: int
    progress_step: int | None = None
    progress_total: int | None = None
    error: str | None = None
    updated_at: datetime | None = None
    project_id: int | None = None  # whose work it is: the overview sends members only theirs


class PipelineState(BaseModel):
    """A pipeline as the overview socket reports its changes (a stage's too)."""

    id: int
    name: str
    status: str
    version: int
    updated_at: datetime | None = None
    project_id: int | None = None


class JobProgress(BaseModel):
    """A running job's progress, as the overview socket reports its changes."""

    id: int
    progress_step: int | None = None
    progress_total: int | None = None
    project_id: int | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    job_id: int


class Snapshot(_Message):
    """First message: the job, the points after the client's last step (a long run thinned,
    as GET /jobs/{id}/metrics?max_steps= thins it), the log tail."""

    type: Literal["snapshot"] = "snapshot"
    job: JobState
    series: dict[str, list[tuple[int, float | None]]] = Field(
        description="[step, value] pairs per key, by step; null where NaN or an infinity."
    )
    thinned: bool = Field(
        description="True when evenly spaced steps stand for the run up to `last_step` (the "
        "first and last included): the metrics route has every point."
    )
    last_step: int | None = Field(description="The highest step sent so far (resume from it).")
    log_attempt: int
    log_offset: int = Field(description="Log bytes of the attempt before `log` messages start.")
    log_tail: str


class Metrics(_Message):
    """New points, as ingested."""

    type: Literal["metrics"] = "metrics"
    attempt: int
    points: list[Point]
    last_step: int


class Status(_Message):
    """The job changed state (or progress)."""

    type: Literal["status"] = "status"
    job: JobState


class Log(_Message):
    """New log text of an attempt, from a byte offset."""

    type: Literal["log"] = "log"
    attempt: int
    offset: int
    text: str


class Alert(_Message):
    """An alert was raised for the job."""

    type: Literal["alert"] = "alert"
    alert: dict[str, Any]


class Gpu(_Message):
    """Samples of the job's devices (memory, utilisation, power, temperature)."""

    type: Literal["gpu"] = "gpu"
    samples: list[dict[str, Any]]


class Error(_Message):
    """Why the server closes the connection."""

    type: Literal["error"] = "error"
    message: str


ServerMessage = Annotated[
    Snapshot | Metrics | Status | Log | Gpu | Alert | Error, Field(discriminator="type")
]


class Hello(BaseModel):
    """The first client message: the token, and where to resume."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hello"] = "hello"
    token: str | None = Field(None, max_length=512)
    last_step: int | None = Field(None, ge=-1, description="Resume after this step.")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of both directions, for docs and clients."""
    return {
        "version": SCHEMA_VERSION,
        "server": TypeAdapter(ServerMessage).json_schema(),
        "client": Hello.model_json_schema(),
    }


class FlowerLink(BaseModel):
    """Where the dashboard links to Flower, and (admins only) how to log in there."""

    enabled: bool = Field(description="Whether `tp up` starts Flower (TP_FLOWER).")
    url: str = Field(
        description="Flower's address (TP_FLOWER_URL).", examples=["http://127.0.0.1:5555"]
    )
    user: str | None = Field(None, description="Flower's basic-auth user; admins only.")
    password: str | None = Field(
        None,
        description="Flower's password (TP_FLOWER_PASSWORD, else TP_HOME/flower-password); "
        "admins only, and null where none was set or generated yet.",
    )
