"""How long a queued job may wait, from what was measured; unknown rather than guessed.

A rough model, written down in docs/scheduling.md: each job that holds devices is a lane that
frees when that job ends; jobs of the same kind (GPU or CPU) wait in queue order, and each
takes the lane that frees first for as long as a job like it took. A running job ends after
its remaining steps at the pace its current attempt has kept so far; a job that has reported
no step yet, and a queued job, take as long as the finished jobs like it did (same backend,
algorithm, model, dataset, hyperparameters and GPUs). Where any of these is unknown, so is
the wait.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from training_platform.core.types import utcnow
from training_platform.jobs.models import Job, JobEvent
from training_platform.jobs.state import WAITING, JobStatus
from training_platform.scheduling.models import DeviceLease

_WAITING_VALUES = frozenset(s.value for s in WAITING)
_HISTORY = 200  # succeeded jobs read for the durations of jobs like a queued one


def wait_in_line(free_in: Sequence[float | None], ahead: Sequence[float | None]) -> float | None:
    """Seconds until a job gets a lane: the lanes free up after `free_in` seconds, and each
    job ahead takes the first free lane for its duration. None where a number is unknown."""
    if not free_in or any(s is None for s in free_in):
        return None
    lanes = sorted(max(float(s), 0.0) for s in free_in if s is not None)
    for duration in ahead:
        if duration is None:
            return None
        heapq.heappush(lanes, heapq.heappop(lanes) + duration)
    return lanes[0]


def remaining_s(
    job: Job, attempt_started_at: datetime | None, now: datetime, like_it: float | None
) -> float | None:
    """Seconds a job holding devices still needs: its steps left at its attempt's pace so
    far, else what a job like it took minus what it has run; None when neither is known."""
    elapsed = (now - attempt_started_at).total_seconds() if attempt_started_at else None
    step, total = job.progress_step, job.progress_total
    resumed_at = int(((job.inputs or {}).get("resume_from") or {}).get("step", 0))
    if elapsed is not None and step is not None and total is not None and step > resumed_at:
        return max(total - step, 0) * elapsed / (step - resumed_at)
    if like_it is not None and elapsed is not None and elapsed < like_it:
        return like_it - elapsed
    return None


def _kind(job: Job) -> str:
    return "gpu" if int((job.spec.get("resources") or {}).get("gpus") or 0) > 0 else "cpu"


def _likeness(
    backend: str, algorithm: str, model_id: int | None, dataset_id: int | None, spec: Any
) -> tuple[Any, ...]:
    hyper = sorted((spec.get("hyperparameters") or {}).items(), key=lambda kv: kv[0])
    gpus = (spec.get("resources") or {}).get("gpus") or 0
    return (backend, algorithm, model_id, dataset_id, repr(hyper), gpus)


def _like(job: Job) -> tuple[Any, ...]:
    return _likeness(job.backend, job.algorithm, job.model_id, job.dataset_id, job.spec)


def _durations(session: Session) -> dict[tuple[Any, ...], float]:
    """The median run time of recent succeeded jobs, by what makes jobs alike."""
    # Only the columns it needs: a job's plan may hold whole files.
    columns: list[Any] = [
        Job.backend,
        Job.algorithm,
        Job.model_id,
        Job.dataset_id,
        Job.spec,
        Job.started_at,
        Job.finished_at,
    ]
    done = session.execute(
        sa_select(*columns)
        .where(col(Job.status) == JobStatus.SUCCEEDED.value, col(Job.started_at).is_not(None))
        .order_by(col(Job.finished_at).desc())
        .limit(_HISTORY)
    ).all()
    by_kind: dict[tuple[Any, ...], list[float]] = {}
    for backend, algorithm, model_id, dataset_id, spec, started_at, finished_at in done:
        if started_at and finished_at:
            key = _likeness(backend, algorithm, model_id, dataset_id, spec or {})
            by_kind.setdefault(key, []).append((finished_at - started_at).total_seconds())
    return {key: statistics.median(values) for key, values in by_kind.items()}


def _attempt_starts(session: Session, jobs: Sequence[Job]) -> dict[int, datetime]:
    """When each job's current attempt began running (its last move to running)."""
    ids = [j.id for j in jobs if j.id is not None]
    if not ids:
        return {}
    rows = session.exec(
        select(JobEvent.job_id, JobEvent.attempt, JobEvent.created_at).where(
            col(JobEvent.job_id).in_(ids), JobEvent.to_status == JobStatus.RUNNING.value
        )
    ).all()
    attempts = {j.id: j.attempt for j in jobs}
    starts: dict[int, datetime] = {}
    for job_id, attempt, created_at in rows:
        if attempt == attempts.get(job_id) and created_at > starts.get(job_id, created_at):
            starts[job_id] = created_at
        elif attempt == attempts.get(job_id):
            starts.setdefault(job_id, created_at)
    return starts


def wait_estimates(
    *, session: Session, jobs: Sequence[Job], now: datetime | None = None
) -> dict[int, float]:
    """Seconds each queued job of `jobs` may still wait; a job whose wait is unknown is absent."""
    asked = [j for j in jobs if j.status in _WAITING_VALUES and j.queue_position and j.id]
    if not asked:
        return {}
    now = now or utcnow()
    holder_ids = set(
        session.exec(select(DeviceLease.job_id).where(col(DeviceLease.released_at).is_(None))).all()
    )
    holders = (
        session.exec(select(Job).where(col(Job.id).in_(holder_ids))).all() if holder_ids else []
    )
    line = session.exec(
        select(Job)
        .where(col(Job.status).in_(_WAITING_VALUES), col(Job.queue_position).is_not(None))
        .order_by(col(Job.queue_position))
    ).all()
    durations = _durations(session)
    starts = _attempt_starts(session, holders)
    free_in = {
        h.id: remaining_s(h, starts.get(h.id or 0), now, durations.get(_like(h))) for h in holders
    }
    waits: dict[int, float] = {}
    for job in asked:
        kind = _kind(job)
        lanes = [free_in[h.id] for h in holders if _kind(h) == kind]
        ahead = [
            durations.get(_like(j))
            for j in line
            if _kind(j) == kind and (j.queue_position or 0) < (job.queue_position or 0)
        ]
        wait = wait_in_line(lanes, ahead)
        if wait is not None and job.id is not None:
            waits[job.id] = wait
    return waits
