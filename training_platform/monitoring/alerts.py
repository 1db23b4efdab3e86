"""Alerts: rules checked on every ingestion of a job's metrics, and what they do.

Every job has its own rules (`alerts` in its spec) plus the platform's default: notify when
a loss is NaN or infinite. A rule raises one alert per attempt (a unique row); the alert is
stored, published to live views, and acted on: notify only, pause (checkpoint and stop), or
stop (cancel). Acting goes through the job state machine like any user request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from sqlmodel import Session, col, select

from training_platform.core.db import insert_for
from training_platform.core.errors import DomainError, NotFound
from training_platform.core.types import utcnow
from training_platform.jobs import service as jobs
from training_platform.jobs.models import Job
from training_platform.jobs.schemas import AlertRule
from training_platform.jobs.state import note
from training_platform.monitoring.live import Publisher
from training_platform.monitoring.models import Alert

log = logging.getLogger(__name__)
ACTOR = "alert"
DEFAULT_RULE = AlertRule(rule="nan", key="*loss*", action="notify")


def rules_of(job: Job) -> list[tuple[int, AlertRule]]:
    """The job's rules with their index; the default NaN rule (-1) unless the job has one."""
    own = [(i, AlertRule.model_validate(r)) for i, r in enumerate(job.spec.get("alerts") or [])]
    if not any(rule.rule == "nan" for _, rule in own):
        own.append((-1, DEFAULT_RULE))
    return own


def _holds(rule: AlertRule, value: float) -> bool:
    if rule.rule == "nan":
        return not math.isfinite(value)
    if not math.isfinite(value):
        return False
    assert rule.threshold is not None
    return value > rule.threshold if rule.rule == "above" else value < rule.threshold


def _describe(rule: AlertRule, key: str, step: int, value: float) -> tuple[str, str]:
    if rule.rule == "nan":
        return "critical", f"{key} is {value} at step {step}"
    side = "above" if rule.rule == "above" else "below"
    return "warning", f"{key} = {value:.6g} at step {step}, {side} {rule.threshold:g}"


def evaluate(
    *,
    session: Session,
    job: Job,
    points: Sequence[tuple[int, str, float]],
    publish: Publisher | None = None,
) -> list[Alert]:
    """Raise the alerts that these freshly stored points trigger, and act on them; commits."""
    if not points:
        return []
    assert job.id is not None
    raised: list[Alert] = []
    for index, rule in rules_of(job):
        hit = next(
            (
                (step, key, value)
                for step, key, value in points
                if fnmatchcase(key, rule.key) and _holds(rule, value)
            ),
            None,
        )
        if hit is None:
            continue
        step, key, value = hit
        severity, message = _describe(rule, key, step, value)
        alert = _insert_once(
            session, job, index, rule.rule, rule.action, key, step, value, severity, message
        )
        if alert is not None:
            raised.append(alert)
    for alert in raised:
        alert.action_result = _act(session, job, alert)
        session.add(alert)
        session.commit()
        log.warning("job %s: alert %s (%s)", job.id, alert.message, alert.action_result)
        if publish is not None:
            publish.alert(job.id, public(alert))
    return raised


def _insert_once(
    session: Session,
    job: Job,
    index: int,
    rule: str,
    action: str,
    key: str,
    step: int | None,
    value: float,
    severity: str,
    message: str,
) -> Alert | None:
    statement = (
        insert_for(session, Alert)
        .values(
            job_id=job.id,
            attempt=job.attempt,
            rule_index=index,
            rule=rule,
            key=key,
            step=step,
            value=value if math.isfinite(value) else None,
            severity=severity,
            message=message,
            action=action,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["job_id", "attempt", "rule_index"])
        .returning(col(Alert.id))
    )
    alert_id = session.execute(statement).scalar_one_or_none()
    if alert_id is None:
        session.rollback()
        return None  # raised before, by this process or another
    session.commit()
    return session.get(Alert, alert_id)


def _act(session: Session, job: Job, alert: Alert) -> str:
    assert job.id is not None
    try:
        if alert.action in ("stop", "pause"):
            session.refresh(job)
            note(session, job, actor=f"{ACTOR}:{alert.id}", reason=f"alert: {alert.message}")
        if alert.action == "stop":
            jobs.cancel(session=session, job_id=job.id, actor=f"{ACTOR}:{alert.id}")
            session.commit()
            return "stop requested"
        if alert.action == "pause":
            jobs.pause(session=session, job_id=job.id, actor=f"{ACTOR}:{alert.id}")
            session.commit()
            return "pause requested"
    except DomainError as error:  # the job ended or moved meanwhile
        session.rollback()
        return f"not done: {error.message}"
    return "notified"


def public(alert: Alert) -> dict[str, Any]:
    """An alert as the API and live views show it."""
    return {
        "id": alert.id,
        "job_id": alert.job_id,
        "attempt": alert.attempt,
        "rule": alert.rule,
        "key": alert.key,
        "step": alert.step,
        "value": alert.value,
        "severity": alert.severity,
        "message": alert.message,
        "action": alert.action,
        "action_result": alert.action_result,
        "created_at": alert.created_at.isoformat(),
        "acknowledged_at": alert.acknowledged_at.isoformat() if alert.acknowledged_at else None,
        "acknowledged_by": alert.acknowledged_by,
    }


def list_alerts(
    *, session: Session, job_id: int | None = None, unacknowledged: bool = False, limit: int = 100
) -> Sequence[Alert]:
    """Alerts, newest first."""
    query = select(Alert)
    if job_id is not None:
        query = query.where(Alert.job_id == job_id)
    if unacknowledged:
        query = query.where(col(Alert.acknowledged_at).is_(None))
    return session.exec(query.order_by(col(Alert.id).desc()).limit(limit)).all()


def acknowledge(*, session: Session, alert_id: int, actor: str) -> Alert:
    """Mark an alert seen; commits."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFound(f"alert {alert_id} not found")
    if alert.acknowledged_at is None:
        alert.acknowledged_at, alert.acknowledged_by = utcnow(), actor
        session.add(alert)
        session.commit()
        session.refresh(alert)
    return alert


STALLED_RULE = -2  # the index of the supervisor's hang detection among a job's rules


def stalled(*, session: Session, job: Job, message: str, action: str, result: str) -> Alert | None:
    """Record the supervisor's hang detection as an alert (once per attempt); commits.

    The job's policy has already acted (on_stall); the alert says what it did.
    """
    alert = _insert_once(
        session, job, STALLED_RULE, "stalled", action, "output", None, math.nan, "warning", message
    )
    if alert is not None:
        alert.action_result = result
        session.add(alert)
        session.commit()
    return alert
