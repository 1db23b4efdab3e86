"""Webhook notifications: job succeeded, failed, stalled, cancelled, and alerts.

The job events table is the outbox: a periodic pass reads events and alerts after a stored
cursor, makes one delivery row per (webhook, event) (a unique row, so a pass that runs twice
sends nothing twice), and sends what is due, retrying failures with a growing delay. A
restart of anything loses no notification. URLs are stored encrypted: Slack's carry a token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import func
from sqlmodel import Session, col, select

from training_platform.core.db import insert_for
from training_platform.core.errors import Conflict, InvalidInput, NotFound
from training_platform.core.netguard import Pinned, Refused, pin
from training_platform.core.secrets import SecretBox
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.jobs.models import Job, JobEvent
from training_platform.monitoring.models import (
    Alert,
    NotificationCursor,
    Webhook,
    WebhookDelivery,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)
EVENTS = ("job.succeeded", "job.failed", "job.stalled", "job.cancelled", "alert")
FORMATS = ("json", "slack")
MAX_ATTEMPTS = 5
TIMEOUT_S = 5.0
BATCH = 500


def _check_url(url: str, settings: Settings) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(("body", "url"), "must be an http:// or https:// URL with a host")
    target = _target(url, settings)
    if isinstance(target, str):
        raise InvalidInput(("body", "url"), target)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def _target(url: str, settings: Settings) -> Pinned | str:
    """Where to send (the URL's host resolved once, every address allowed), or why nothing may
    be sent to it (an internal address)."""
    try:
        return pin(
            url, allow_private=settings.allow_private_urls, allowed=settings.allowed_networks
        )
    except Refused as refused:
        return f"{refused}: refused (TP_ALLOWED_NETWORKS can allow its network)"


def create(
    *, session: Session, settings: Settings, name: str, url: str, format: str, events: list[str]
) -> Webhook:
    """Store a webhook (its URL encrypted); commits."""
    hint = _check_url(url, settings)
    if session.exec(select(Webhook).where(Webhook.name == name)).first():
        raise Conflict(f"a webhook named {name!r} exists already")
    cursor = session.get(NotificationCursor, 1)
    if cursor is None:  # the first webhook: notify from now on, not the whole history
        cursor = NotificationCursor(
            id=1,
            last_event_id=int(session.exec(select(func.max(JobEvent.id))).one() or 0),
            last_alert_id=int(session.exec(select(func.max(Alert.id))).one() or 0),
        )
        session.add(cursor)
    hook = Webhook(
        name=name,
        url=SecretBox.for_settings(settings).encrypt(url),
        url_hint=hint,
        format=format,
        events=list(dict.fromkeys(events)),
    )
    session.add(hook)
    session.commit()
    session.refresh(hook)
    return hook


def list_webhooks(*, session: Session) -> Sequence[Webhook]:
    """Every webhook, by name."""
    return session.exec(select(Webhook).order_by(col(Webhook.name))).all()


def get(*, session: Session, name: str) -> Webhook:
    """A webhook by name, or NotFound."""
    hook = session.exec(select(Webhook).where(Webhook.name == name)).first()
    if hook is None:
        raise NotFound(f"webhook {name!r} not found")
    return hook


def remove(*, session: Session, name: str) -> None:
    """Forget a webhook and its deliveries; commits."""
    session.delete(get(session=session, name=name))
    session.commit()


def public(hook: Webhook, session: Session) -> dict[str, Any]:
    """A webhook as the API shows it: the URL's host only, and how its deliveries went."""
    counts = dict(
        session.exec(
            select(WebhookDelivery.status, func.count())
            .where(WebhookDelivery.webhook_id == hook.id)
            .group_by(col(WebhookDelivery.status))
        ).all()
    )
    last_error = session.exec(
        select(WebhookDelivery.last_error)
        .where(WebhookDelivery.webhook_id == hook.id, col(WebhookDelivery.last_error).is_not(None))
        .order_by(col(WebhookDelivery.id).desc())
    ).first()
    return {
        "name": hook.name,
        "url": hook.url_hint + "/...",
        "format": hook.format,
        "events": hook.events,
        "deliveries": {
            status: int(counts.get(status, 0)) for status in ("pending", "sent", "failed")
        },
        "last_error": last_error,
        "created_at": hook.created_at.isoformat(),
    }


# --- what to say ---------------------------------------------------------------------------


def _job_summary(job: Job | None) -> dict[str, Any]:
    if job is None:
        return {}
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "attempt": job.attempt,
        "node": job.node,
        "error": job.error,
        "end_cause": job.end_cause,
    }


def payload(
    event: str, job: Job | None, reason: str, alert: dict[str, Any] | None
) -> dict[str, Any]:
    """The generic JSON body of a notification."""
    return {
        "event": event,
        "at": utcnow().isoformat(),
        "job": _job_summary(job),
        "reason": reason,
        "alert": alert,
    }


def slack_body(body: dict[str, Any]) -> dict[str, Any]:
    """The same notification as a Slack incoming-webhook message."""
    job = body.get("job") or {}
    title = f"job {job.get('id')} '{job.get('name')}'" if job else "training_platform"
    if body["event"] == "alert" and body.get("alert"):
        text = f":rotating_light: {title}: alert: {body['alert']['message']}"
    else:
        what = body["event"].split(".", 1)[-1]
        icon = {"succeeded": ":white_check_mark:", "failed": ":x:"}.get(what, ":warning:")
        text = f"{icon} {title} {what}: {body['reason']}"
    return {"text": text}


# --- the outbox pass -----------------------------------------------------------------------


def _insert_delivery(
    session: Session, hook: Webhook, source: str, event: str, body: dict[str, Any]
) -> None:
    session.execute(
        insert_for(session, WebhookDelivery)
        .values(
            webhook_id=hook.id,
            source=source,
            event=event,
            payload=body,
            status="pending",
            attempts=0,
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["webhook_id", "source"])
    )


def collect(*, session: Session) -> int:
    """Turn new job events and alerts into deliveries; commits. Returns how many were read."""
    hooks = list_webhooks(session=session)
    cursor = session.get(NotificationCursor, 1)
    if not hooks or cursor is None:
        return 0
    events = session.exec(
        select(JobEvent)
        .where(col(JobEvent.id) > cursor.last_event_id)
        .order_by(col(JobEvent.id))
        .limit(BATCH)
    ).all()
    alerts = session.exec(
        select(Alert)
        .where(col(Alert.id) > cursor.last_alert_id)
        .order_by(col(Alert.id))
        .limit(BATCH)
    ).all()
    for event in events:
        name = f"job.{event.to_status}"
        if event.from_status == event.to_status or name not in EVENTS:
            continue
        body = payload(name, session.get(Job, event.job_id), event.reason, None)
        for hook in hooks:
            if name in hook.events:
                _insert_delivery(session, hook, f"event:{event.id}", name, body)
    for alert in alerts:
        from training_platform.monitoring.alerts import public as alert_public

        body = payload("alert", session.get(Job, alert.job_id), alert.message, alert_public(alert))
        for hook in hooks:
            if "alert" in hook.events:
                _insert_delivery(session, hook, f"alert:{alert.id}", "alert", body)
    if events:
        cursor.last_event_id = int(events[-1].id or cursor.last_event_id)
    if alerts:
        cursor.last_alert_id = int(alerts[-1].id or cursor.last_alert_id)
    session.add(cursor)
    session.commit()
    return len(events) + len(alerts)


def _due(now: datetime) -> tuple[Any, Any]:
    return WebhookDelivery.status == "pending", col(WebhookDelivery.next_attempt_at) <= now


def due_count(*, session: Session) -> int:
    """How many deliveries are waiting to be sent now."""
    return int(session.exec(select(func.count()).where(*_due(utcnow()))).one())


def send(
    *, session: Session, settings: Settings, client: httpx.Client | None = None
) -> dict[str, int]:
    """Send due deliveries; a failure is retried later (5 s, 10 s, 20 s...), then given up."""
    import httpx

    now = utcnow()
    due = session.exec(
        select(WebhookDelivery).where(*_due(now)).order_by(col(WebhookDelivery.id)).limit(BATCH)
    ).all()
    report = {"sent": 0, "failed": 0, "retrying": 0}
    if not due:
        return report
    box = SecretBox.for_settings(settings)
    targets: dict[int | None, Pinned | str] = {}
    own = client is None
    http = client or httpx.Client(timeout=TIMEOUT_S, follow_redirects=False)
    try:
        for delivery in due:
            hook = session.get(Webhook, delivery.webhook_id)
            if hook is None:
                continue
            body = slack_body(delivery.payload) if hook.format == "slack" else delivery.payload
            delivery.attempts += 1
            url = box.decrypt(hook.url)
            if hook.id not in targets:  # resolved once per webhook and pass
                targets[hook.id] = _target(url, settings)
            target = targets[hook.id]
            if isinstance(target, str):
                ok, problem = False, target
            else:
                try:
                    answer = http.post(
                        target.url, json=body, headers=target.headers, extensions=target.extensions
                    )
                    ok, problem = answer.is_success, f"HTTP {answer.status_code}"
                except httpx.HTTPError as error:
                    # The URL (a secret) must not reach the logs: name only the kind of failure.
                    ok, problem = False, type(error).__name__
            if ok:
                delivery.status, delivery.sent_at, delivery.last_error = "sent", utcnow(), None
                report["sent"] += 1
            elif delivery.attempts >= MAX_ATTEMPTS:
                delivery.status, delivery.last_error = "failed", problem
                report["failed"] += 1
            else:
                delivery.last_error = problem
                delivery.next_attempt_at = utcnow() + timedelta(
                    seconds=5 * 2 ** (delivery.attempts - 1)
                )
                report["retrying"] += 1
            session.add(delivery)
            session.commit()
    finally:
        if own:
            http.close()
    if report["failed"] or report["retrying"]:
        log.warning("webhooks: %s", report)
    return report


def send_test(*, session: Session, settings: Settings, name: str) -> dict[str, Any]:
    """Send a test notification now; says whether the receiver accepted it, and nothing more
    of the answer (a status or a kind of failure would tell a caller what listens where)."""
    import httpx

    hook = get(session=session, name=name)
    body = payload("test", None, "a test notification from training_platform", None)
    body = slack_body({**body, "event": "test.sent"}) if hook.format == "slack" else body
    url = SecretBox.for_settings(settings).decrypt(hook.url)
    target = _target(url, settings)
    if isinstance(target, str):
        return {"delivered": False, "error": target}
    try:
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as http:
            answer = http.post(
                target.url, json=body, headers=target.headers, extensions=target.extensions
            )
        return {"delivered": answer.is_success}
    except httpx.HTTPError:
        return {"delivered": False}
