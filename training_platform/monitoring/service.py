"""Reads for live views: a job's state, and the snapshot a (re)connecting client starts from."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from training_platform.core.settings import Settings
from training_platform.jobs import service as jobs
from training_platform.jobs.models import Job
from training_platform.monitoring.models import Alert
from training_platform.monitoring.schemas import (
    FlowerLink,
    JobProgress,
    JobState,
    PipelineState,
    Snapshot,
)
from training_platform.pipelines.models import Pipeline, PipelineStage

# The first message of a job's live view stays small (under 60 KB for a 2,000-step run of 20
# keys): the log's last 16 KB (earlier lines: GET .../logs?before=) and about this many points,
# the run thinned as GET .../metrics?max_steps= thins it (the page asks that route for the
# detail of the curves it shows).
LOG_TAIL_BYTES = 16 * 1024
SNAPSHOT_POINTS = 1200


def job_state(job: Job) -> dict[str, Any]:
    """The job as live messages carry it (JSON-ready)."""
    assert job.id is not None
    return JobState(
        id=job.id,
        name=job.name,
        status=job.status,
        attempt=job.attempt,
        version=job.version,
        progress_step=job.progress_step,
        progress_total=job.progress_total,
        error=job.error,
        updated_at=job.updated_at,
        project_id=job.project_id,
    ).model_dump(mode="json")


def read_state(*, session: Session, job_id: int) -> dict[str, Any] | None:
    """The job's live state, or None if it is gone."""
    job = session.get(Job, job_id)
    return job_state(job) if job is not None else None


def snapshot(*, session: Session, job_id: int, last_step: int | None) -> Snapshot:
    """The points after the client's last step (thinned to about SNAPSHOT_POINTS), and the
    end of the current attempt's log."""
    job = jobs.get_job(session=session, job_id=job_id)
    keys = jobs.metric_keys(session=session, job_id=job_id)
    max_steps = max(2, SNAPSHOT_POINTS // max(1, len(keys)))
    rows = jobs.read_metrics(
        session=session,
        job_id=job_id,
        since_step=last_step,
        keys=(),
        limit=(max_steps + 1) * max(1, len(keys)),  # the most thinning leaves: never cut
        max_steps=max_steps,
    )
    # Every key, even one the thinned steps miss (a validation score every 50 steps): the
    # page lists it, and reads its points from the metrics route when it is shown.
    series: dict[str, list[tuple[int, float | None]]] = {key: [] for key in keys}
    for step, key, value in rows:
        series.setdefault(key, []).append((step, value))
    end = job.log_offset
    start = max(0, end - LOG_TAIL_BYTES)
    _, _, data, _ = jobs.read_log(
        session=session, job_id=job_id, attempt=None, offset=start, limit=end - start
    )
    if start > 0 and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]  # start on a whole line
    return Snapshot(
        job_id=job_id,
        job=JobState.model_validate(job_state(job)),
        series=series,
        # read_metrics thins exactly when the range spans more than max_steps steps
        thinned=bool(rows) and rows[-1][0] - rows[0][0] + 1 > max_steps,
        last_step=rows[-1][0] if rows else last_step,
        log_attempt=job.attempt,
        log_offset=end,
        log_tail=data.decode("utf-8", errors="replace"),
    )


OVERVIEW_JOBS = 50
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHANGES_LIMIT = 500


def _counts(session: Session) -> dict[str, int]:
    rows = session.exec(select(Job.status, func.count()).group_by(col(Job.status))).all()
    return {status: int(count) for status, count in rows}


def overview(*, session: Session) -> dict[str, Any]:
    """Counts by status, the most recently changed jobs, unacknowledged alerts."""
    recent = session.exec(
        select(Job).order_by(col(Job.updated_at).desc(), col(Job.id).desc()).limit(OVERVIEW_JOBS)
    ).all()
    unacknowledged = session.exec(
        select(func.count()).select_from(Alert).where(col(Alert.acknowledged_at).is_(None))
    ).one()
    return {
        "counts": _counts(session),
        "jobs": [job_state(job) for job in recent],
        "alerts_unacknowledged": int(unacknowledged),
    }


class Mark(NamedTuple):
    """Where a watch of changes goes on from: the newest change seen, per table."""

    jobs: datetime
    pipelines: datetime

    def older(self, other: Mark) -> Mark:
        """The earlier of the two marks in each table."""
        return Mark(min(self.jobs, other.jobs), min(self.pipelines, other.pipelines))


@dataclass(frozen=True)
class Changes:
    """What changed after a mark: jobs (their state), pipelines (their own row or a stage's),
    the progress of active jobs (all of it: the hub reports what moved), and the counts."""

    jobs: list[dict[str, Any]]
    pipelines: list[dict[str, Any]]
    progress: dict[int, dict[str, Any]]
    counts: dict[str, int]
    mark: Mark


# Where a job's step can move: its process runs (or is being stopped).
PROGRESSING = ("running", "stalled", "pausing", "stopping", "cancelling")


def _newest_pipeline_change(session: Session) -> datetime | None:
    pipeline: datetime | None = session.exec(select(func.max(Pipeline.updated_at))).one()
    stage: datetime | None = session.exec(select(func.max(PipelineStage.updated_at))).one()
    return max((t for t in (pipeline, stage) if t is not None), default=None)


def newest_mark(*, session: Session) -> Mark:
    """Where a watch of changes starts: the newest changes so far."""
    jobs_newest: datetime | None = session.exec(select(func.max(Job.updated_at))).one()
    return Mark(jobs_newest or EPOCH, _newest_pipeline_change(session) or EPOCH)


def pipeline_state(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline as the overview socket carries it (JSON-ready)."""
    assert pipeline.id is not None
    return PipelineState(
        id=pipeline.id,
        name=pipeline.name,
        status=pipeline.status,
        version=pipeline.version,
        updated_at=pipeline.updated_at,
        project_id=pipeline.project_id,
    ).model_dump(mode="json")


def _progress(session: Session) -> dict[int, dict[str, Any]]:
    rows = session.exec(
        select(Job.id, Job.progress_step, Job.progress_total, Job.project_id).where(
            col(Job.status).in_(PROGRESSING)
        )
    ).all()
    return {
        job_id: JobProgress(
            id=job_id, progress_step=step, progress_total=total, project_id=project
        ).model_dump(mode="json")
        for job_id, step, total, project in rows
        if job_id is not None
    }


def changes_since(*, session: Session, mark: Mark | None) -> Changes:
    """Jobs and pipelines whose rows changed after `mark`, active jobs' progress, the counts
    by status, and the next mark."""
    now = newest_mark(session=session)
    counts, progress = _counts(session), _progress(session)
    if mark is None:  # the first look: only where to start from
        return Changes([], [], progress, counts, now)
    changed = session.exec(
        select(Job)
        .where(col(Job.updated_at) > mark.jobs)
        .order_by(col(Job.updated_at))
        .limit(CHANGES_LIMIT)
    ).all()
    moved = select(PipelineStage.pipeline_id).where(col(PipelineStage.updated_at) > mark.pipelines)
    pipelines = session.exec(
        select(Pipeline)
        .where(or_(col(Pipeline.updated_at) > mark.pipelines, col(Pipeline.id).in_(moved)))
        .order_by(col(Pipeline.updated_at))
        .limit(CHANGES_LIMIT)
    ).all()
    return Changes(
        [job_state(job) for job in changed],
        [pipeline_state(p) for p in pipelines],
        progress,
        counts,
        Mark(max(now.jobs, mark.jobs), max(now.pipelines, mark.pipelines)),
    )


WAITING_STATUSES = ("pending", "queued", "resuming")


def queue_depths(*, session: Session, redis_url: str) -> dict[str, Any]:
    """Waiting jobs per queue and priority (database) and messages per queue (Redis)."""
    from training_platform.worker.broker import RedisBrokerView
    from training_platform.worker.queues import ALL_QUEUES, PRIORITY_MAX

    rows = session.exec(
        select(Job.queue, Job.priority, Job.status, func.count())
        .where(col(Job.status).in_(WAITING_STATUSES))
        .group_by(col(Job.queue), col(Job.priority), col(Job.status))
        .order_by(col(Job.queue), col(Job.priority).desc())
    ).all()
    waiting = [
        {"queue": queue, "priority": priority, "status": status, "jobs": int(count)}
        for queue, priority, status, count in rows
    ]
    try:
        depths = RedisBrokerView(redis_url).depths(ALL_QUEUES)
        broker: dict[str, Any] | None = {
            queue: {str(PRIORITY_MAX - bucket): count for bucket, count in enumerate(buckets)}
            for queue, buckets in depths.items()
        }
    except Exception:  # Redis unreachable: the database part still answers
        broker = None
    return {"waiting": waiting, "broker": broker}


def flower_link(settings: Settings, *, admin: bool) -> FlowerLink:
    """Flower's address; for an admin also its user and password (never generated here:
    `tp up` writes TP_HOME/flower-password when it first starts Flower)."""
    link = FlowerLink(enabled=settings.flower, url=settings.resolved_flower_url)
    if not admin:
        return link
    password: str | None = None
    if settings.flower_password is not None:
        password = settings.flower_password.get_secret_value()
    else:
        with contextlib.suppress(OSError):
            password = (settings.home / "flower-password").read_text().strip() or None
    return link.model_copy(update={"user": settings.flower_user, "password": password})
