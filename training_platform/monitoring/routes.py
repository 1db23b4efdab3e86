"""Live views: WebSocket /api/v1/ws/jobs/{id} and the JSON Schema of its messages.

Authentication: a first `hello` message with the token within AUTH_TIMEOUT_S; a missing or
wrong token closes the socket with code 4401. Never in the URL: URLs reach access logs and
proxies' logs, so a socket whose URL carries a `token` is closed with 4401 too. The client may
give `last_step` (in the URL or in `hello`): it then receives the points after that step, a
long stretch thinned as the metrics route thins it (the snapshot says so), then every new
point exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from training_platform.api.deps import (
    CurrentToken,
    IdPath,
    SessionDep,
    SettingsDep,
    api_router,
    project_scoped,
)
from training_platform.auth.service import authenticate
from training_platform.core.errors import DomainError, NotFound
from training_platform.core.types import DB_INT_MAX
from training_platform.jobs import service as jobs
from training_platform.jobs.schemas import AlertRule
from training_platform.monitoring import alerts, defaults, service, telemetry, webhooks
from training_platform.monitoring.hub import OVERVIEW, RAW, LiveHub, Subscription, encoded
from training_platform.monitoring.schemas import FlowerLink, Hello, json_schema

router = api_router(tags=["live"], authenticated=False)  # WebSockets authenticate below
AUTH_TIMEOUT_S = 10.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_SLOW = 4008  # the client lagged too far behind; reconnect with last_step


@router.get("/ws/schema")
def live_schema(_: CurrentToken) -> dict[str, Any]:
    """The JSON Schema of the live messages (server and client), version included."""
    return json_schema()


def _refusal(websocket: WebSocket, token: str | None, job_id: int) -> tuple[int, str] | None:
    """Why the caller may not watch: an invalid token, or a job of a project the caller does
    not see (refused as one that does not exist is); None when they may."""
    from training_platform.jobs.models import Job
    from training_platform.projects.service import check_visible

    with Session(websocket.app.state.engine) as session:
        try:
            caller = authenticate(session=session, token=token)
        except DomainError:
            return CLOSE_UNAUTHORIZED, "invalid or missing token"
        job = session.get(Job, job_id) if job_id and not caller.at_least("admin") else None
        try:
            if job is not None:
                check_visible(
                    session=session, caller=caller, project_id=job.project_id, what=f"job {job_id}"
                )
        except DomainError as error:
            return CLOSE_NOT_FOUND, error.message
    return None


async def _close(websocket: WebSocket, job_id: int, code: int, message: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_json({"v": 1, "type": "error", "job_id": job_id, "message": message})
        await websocket.close(code=code, reason=message[:120])


class _Stream:
    """What one client has been sent: the highest step per key, the log position."""

    def __init__(self, last_step: int | None, attempt: int, log_offset: int) -> None:
        self.floor = last_step if last_step is not None else -1
        self.steps: dict[str, int] = {}
        self.attempt = attempt
        self.log_offset = log_offset

    def fresh_points(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        fresh = []
        for point in message.get("points", []):
            key, step = str(point["key"]), int(point["step"])
            if step > self.steps.get(key, self.floor):
                self.steps[key] = step
                fresh.append(point)
        return fresh


async def _send_snapshot(websocket: WebSocket, job_id: int, last_step: int | None) -> _Stream:
    def read() -> Any:
        with Session(websocket.app.state.engine) as session:
            # The state first, in the same session: the status poller reports every change
            # from it, so nothing between this read and the poller's first falls through.
            seen = service.read_state(session=session, job_id=job_id)
            return seen, service.snapshot(session=session, job_id=job_id, last_step=last_step)

    seen, snapshot = await run_in_threadpool(read)
    stream = _Stream(last_step, snapshot.log_attempt, snapshot.log_offset)
    for key, pairs in snapshot.series.items():
        if pairs:
            stream.steps[key] = pairs[-1][0]  # by step: the last is the highest
    await websocket.send_text(snapshot.model_dump_json())
    hub: LiveHub = websocket.app.state.live_hub
    hub.watch_status(job_id, seen)
    return stream


async def _log_gap(websocket: WebSocket, job_id: int, attempt: int, start: int, end: int) -> str:
    def read() -> bytes:
        with Session(websocket.app.state.engine) as session:
            _, _, data, _ = jobs.read_log(
                session=session, job_id=job_id, attempt=attempt, offset=start, limit=end - start
            )
            return data

    return (await run_in_threadpool(read)).decode("utf-8", errors="replace")


async def _forward(
    websocket: WebSocket, subscription: Subscription, stream: _Stream, job_id: int
) -> None:
    while True:
        message = await subscription.queue.get()
        kind = message.get("type")
        if kind == "status" and message["job"]["attempt"] != stream.attempt:
            # A new attempt: its curve and log start over; send it whole.
            stream = await _send_snapshot(websocket, job_id, None)
            continue
        if kind == "metrics":
            points = stream.fresh_points(message)
            if not points:
                continue
            if len(points) != len(message["points"]):  # only part of it is new to this client
                message = {
                    **{k: v for k, v in message.items() if k != RAW},
                    "points": points,
                    "last_step": max(p["step"] for p in points),
                }
        elif kind == "log":
            if message["attempt"] != stream.attempt:
                continue
            offset, text = int(message["offset"]), str(message["text"])
            size = len(text.encode())
            if offset + size <= stream.log_offset:
                continue  # already in the snapshot
            if offset > stream.log_offset:  # missed while subscribing: fill from the database
                gap = await _log_gap(websocket, job_id, stream.attempt, stream.log_offset, offset)
                text, offset = gap + text, stream.log_offset
            elif offset < stream.log_offset:
                text = text.encode()[stream.log_offset - offset :].decode("utf-8", "replace")
                offset = stream.log_offset
            stream.log_offset = offset + len(text.encode())
            if offset != int(message["offset"]) or text != message["text"]:
                message = {
                    **{k: v for k, v in message.items() if k != RAW},
                    "offset": offset,
                    "text": text,
                }
        await websocket.send_text(encoded(message))


async def _drain_client(websocket: WebSocket) -> None:
    # A handler that only sends never notices a disconnect: read until the client leaves.
    while True:
        await websocket.receive_text()


async def _admit(
    websocket: WebSocket, job_id: int, last_step: int | None
) -> tuple[bool, int | None]:
    """Check the token of the `hello` message; (admitted, the step to resume after)."""
    await websocket.accept()
    if "token" in websocket.query_params:
        await _close(
            websocket,
            job_id,
            CLOSE_UNAUTHORIZED,
            "the token goes in the first message ({type: hello, token}), never in the URL",
        )
        return False, None
    try:
        hello = Hello.model_validate_json(
            await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_S)
        )
    except (TimeoutError, ValidationError, WebSocketDisconnect):
        await _close(websocket, job_id, CLOSE_UNAUTHORIZED, "send {type: hello, token}")
        return False, None
    refused = await run_in_threadpool(_refusal, websocket, hello.token, job_id)
    if refused is not None:
        await _close(websocket, job_id, *refused)
        return False, None
    websocket.state.token = hello.token
    last_step = hello.last_step if hello.last_step is not None else last_step
    return True, last_step


async def _serve(
    websocket: WebSocket,
    hub: LiveHub,
    subscription: Subscription,
    forward: Any,
    job_id: int,
) -> None:
    """Forward until the client leaves or lags too far; then clean up."""
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(forward),
        asyncio.create_task(_drain_client(websocket)),
        asyncio.create_task(subscription.dropped.wait()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[2] in done:
            await _close(
                websocket, job_id, CLOSE_TOO_SLOW, "too slow: reconnect with your last_step"
            )
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        hub.unsubscribe(subscription)


@router.websocket("/ws/jobs/{job_id}")
async def job_live(
    websocket: WebSocket,
    job_id: IdPath,
    last_step: int | None = Query(None, ge=-1),
) -> None:
    """A job's live view: a snapshot, then metrics, log lines, status changes and alerts."""
    admitted, last_step = await _admit(websocket, job_id, last_step)
    if not admitted:
        return
    hub: LiveHub = websocket.app.state.live_hub
    subscription = hub.subscribe(job_id)  # before the snapshot: nothing falls in between
    try:
        stream = await _send_snapshot(websocket, job_id, last_step)
    except NotFound as error:
        hub.unsubscribe(subscription)
        await _close(websocket, job_id, CLOSE_NOT_FOUND, error.message)
        return
    except (WebSocketDisconnect, RuntimeError):
        hub.unsubscribe(subscription)
        return
    await _serve(
        websocket, hub, subscription, _forward(websocket, subscription, stream, job_id), job_id
    )


def _seen(message: dict[str, Any], visible: set[int] | None) -> bool:
    """Whether an overview message is for this client: every message for an admin (None),
    else counts and the changes of jobs and pipelines of the client's projects (or of none)."""
    project_id = (message.get("job") or message.get("pipeline") or {}).get("project_id")
    return visible is None or project_id is None or project_id in visible


async def _forward_overview(
    websocket: WebSocket, subscription: Subscription, visible: set[int] | None
) -> None:
    while True:
        message = await subscription.queue.get()
        if _seen(message, visible):
            await websocket.send_text(encoded(message))


@router.websocket("/ws/overview")
async def overview_live(websocket: WebSocket) -> None:
    """Every job at a glance: counts by status and recent jobs, then each change as it happens
    (a member: the jobs of their projects; the counts are everyone's)."""
    admitted, _ = await _admit(websocket, 0, None)
    if not admitted:
        return
    hub: LiveHub = websocket.app.state.live_hub
    subscription = hub.subscribe(OVERVIEW)

    def read() -> tuple[Any, dict[str, Any], set[int] | None]:
        from training_platform.projects.service import visible_project_ids

        with Session(websocket.app.state.engine) as session:
            caller = authenticate(session=session, token=websocket.state.token)
            visible = visible_project_ids(session=session, caller=caller)
            # The mark first: a change after it and before the snapshot is reported twice at
            # worst, never lost.
            mark = service.newest_mark(session=session)
            snapshot = service.overview(session=session)
        snapshot["jobs"] = [j for j in snapshot["jobs"] if _seen({"job": j}, visible)]
        return mark, snapshot, visible

    try:
        mark, snapshot, visible = await run_in_threadpool(read)
        hub.watch_overview(mark)
        await websocket.send_json({"v": 1, "type": "overview", "job_id": 0, **snapshot})
    except (WebSocketDisconnect, RuntimeError):
        hub.unsubscribe(subscription)
        return
    forward = _forward_overview(websocket, subscription, visible)
    await _serve(websocket, hub, subscription, forward, 0)


# --- alerts and Prometheus ---------------------------------------------------------------

alerts_router = api_router("/alerts", tags=["alerts"])


@alerts_router.get("")
def list_alerts(
    session: SessionDep,
    _: CurrentToken,
    job_id: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None,
    unacknowledged: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Alerts, newest first (of one job, or only those nobody acknowledged)."""
    found = alerts.list_alerts(
        session=session, job_id=job_id, unacknowledged=unacknowledged, limit=limit
    )
    return [alerts.public(a) for a in found]


@alerts_router.post("/{alert_id}/acknowledge")
def acknowledge_alert(alert_id: IdPath, session: SessionDep, token: CurrentToken) -> dict[str, Any]:
    """Mark an alert seen."""
    alert = alerts.acknowledge(session=session, alert_id=alert_id, actor=token.actor)
    return alerts.public(alert)


metrics_router = APIRouter(tags=["monitoring"])  # /metrics, outside /api/v1


@metrics_router.get("/metrics", response_class=PlainTextResponse)
def prometheus_metrics(request: Request, _: CurrentToken) -> PlainTextResponse:
    """The platform's own metrics in Prometheus text format (bearer token required)."""
    registry = request.app.state.prometheus_registry
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


# --- the platform's default alert rules ----------------------------------------------------

alert_rules_router = api_router("/alert-rules", tags=["alerts"])


class AlertRulesUpdate(BaseModel):
    """The platform's default alert rules, replaced as a whole."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"rule": "nan", "key": "*loss*", "action": "pause"},
                        {"rule": "above", "key": "*kl*", "threshold": 1.0, "action": "notify"},
                    ]
                }
            ]
        },
    )

    items: list[AlertRule] = Field(
        max_length=defaults.MAX_RULES,
        description="Copied into every job submitted without `alerts` (an explicit empty list "
        "keeps none); the notify rule for NaN losses applies to every job anyway.",
    )


class AlertRulesPublic(BaseModel):
    """The default alert rules and when they were last set (null: never)."""

    items: list[AlertRule]
    updated_at: datetime | None


@alert_rules_router.get("", response_model=AlertRulesPublic)
def get_alert_rules(session: SessionDep, _: CurrentToken) -> AlertRulesPublic:
    """The rules a job gets when its submission sets no `alerts`."""
    rules, updated_at = defaults.default_rules(session=session)
    return AlertRulesPublic(items=rules, updated_at=updated_at)


@alert_rules_router.put("", response_model=AlertRulesPublic)
def set_alert_rules(
    body: AlertRulesUpdate, session: SessionDep, _: CurrentToken
) -> AlertRulesPublic:
    """Replace the default rules; jobs submitted before keep the rules they got."""
    rules, updated_at = defaults.set_default_rules(session=session, rules=body.items)
    session.commit()
    return AlertRulesPublic(items=rules, updated_at=updated_at)


# --- webhooks ------------------------------------------------------------------------------

webhooks_router = api_router("/webhooks", tags=["alerts"], read="admin", write="admin")


class WebhookCreate(BaseModel):
    """A receiver of notifications: a generic JSON POST, or a Slack incoming webhook."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "team-slack",
                    "url": "https://hooks.slack.com/services/T000/B000/XXXX",
                    "format": "slack",
                    "events": ["job.failed", "alert"],
                },
                {"name": "ci", "url": "https://ci.example.com/hooks/training"},
            ]
        },
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Unique webhook name.",
    )
    url: SecretStr = Field(description="http(s) URL; stored encrypted, never shown again.")
    format: Literal["json", "slack"] = Field(
        "json",
        description="json: the notification as a JSON object; slack: a Slack incoming-webhook "
        "message ({text}).",
    )
    events: list[Literal[webhooks.EVENTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["job.succeeded", "job.failed", "job.stalled", "alert"],
        min_length=1,
        description="What it is sent: job.succeeded, job.failed, job.stalled, job.cancelled "
        "(a job's end or stall) and alert (an alert raised).",
    )


@webhooks_router.post("", status_code=201)
def create_webhook(
    body: WebhookCreate, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> dict[str, Any]:
    """Register a webhook; notifications start with the next event."""
    hook = webhooks.create(
        session=session,
        settings=settings,
        name=body.name,
        url=body.url.get_secret_value(),
        format=body.format,
        events=list(body.events),
    )
    return webhooks.public(hook, session)


@webhooks_router.get("")
def list_webhooks(session: SessionDep, _: CurrentToken) -> list[dict[str, Any]]:
    """Every webhook (URLs shown by host only) with its delivery counts."""
    return [webhooks.public(h, session) for h in webhooks.list_webhooks(session=session)]


@webhooks_router.delete("/{name}", status_code=204)
def remove_webhook(name: str, session: SessionDep, _: CurrentToken) -> Response:
    """Forget a webhook."""
    webhooks.remove(session=session, name=name)
    return Response(status_code=204)


@webhooks_router.post("/{name}/test")
def test_webhook(
    name: str, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> dict[str, Any]:
    """Send a test notification now."""
    return webhooks.send_test(session=session, settings=settings, name=name)


# --- GPU telemetry -------------------------------------------------------------------------

telemetry_router = api_router(
    "/jobs", tags=["jobs"], scoped=project_scoped("job_id", "job", jobs.project_of)
)


@telemetry_router.get("/{job_id}/gpu")
def job_gpu_samples(
    job_id: IdPath,
    session: SessionDep,
    _: CurrentToken,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 2000,
) -> dict[str, Any]:
    """Samples of the job's GPUs (newest `limit`, oldest first) and its peak memory.

    Empty on CPU jobs and simulated devices: there is nothing real to measure.
    """
    jobs.get_job(session=session, job_id=job_id)
    rows = telemetry.samples(session=session, job_id=job_id, limit=limit)
    return {
        "samples": [telemetry.public(r) for r in rows],
        "peak_memory_mb": telemetry.peak_memory_mb(session=session, job_id=job_id),
        "note": None if rows else "no GPU samples (a CPU job, simulated devices, or not yet)",
    }


# --- queues --------------------------------------------------------------------------------

flower_router = api_router("/flower", tags=["monitoring"])


@flower_router.get("", response_model=FlowerLink)
def flower(settings: SettingsDep, caller: CurrentToken) -> FlowerLink:
    """Where Flower is; its user and password for admins only (others see null)."""
    return service.flower_link(settings, admin=caller.at_least("admin"))


queues_router = api_router(tags=["monitoring"])


@queues_router.get("/queues")
def queue_depths(request: Request, session: SessionDep, _: CurrentToken) -> dict[str, Any]:
    """Jobs waiting per queue and priority (from the database), and broker messages per queue
    and priority (from Redis): what Flower cannot see in Redis priority queues."""
    settings = request.app.state.settings
    return service.queue_depths(session=session, redis_url=settings.broker_url)
