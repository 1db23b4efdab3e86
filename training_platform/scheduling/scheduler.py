"""The scheduling pass: give queued jobs devices, in priority order, then fair share, then age.

Rule (docs/scheduling.md): jobs are taken by priority (9 first), then by their project's
fair share (scheduling/quota.py: recent GPU-hours against its share; the least served
first), then by the time they were queued. A job whose project (or user) is at its GPU
maximum waits; one placed above its project's guarantee is preemptible, and a job within its
guarantee that does not fit has the newest such jobs of other projects paused at a
checkpoint and requeued. A job that does not fit now is skipped and smaller jobs behind it
may start on the free devices (backfill) - until it has waited longer than
TP_BACKFILL_AGE_LIMIT_S. From then on the devices it needs are held back from the jobs
behind it until it fits, so a big job is never starved either.

Safe to run in several processes at once: a lease is a row the database refuses twice for
one device (partial unique index), and the job's dispatch counter is compared-and-set in the
same transaction, so one job is never placed twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.jobs.models import Job
from training_platform.scheduling import quota, service
from training_platform.scheduling.models import DeviceLease
from training_platform.scheduling.placement import Demand, Slot, choose

log = logging.getLogger(__name__)
# Statuses of jobs waiting for devices (jobs.state.WAITING; scheduling does not import jobs.state).
WAITING = ("queued", "resuming")
SHARDED_BACKENDS = ("verl",)


@dataclass
class PassReport:
    """What one pass did."""

    placed: list[int] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)


def _key(slot: Slot) -> tuple[str, str, int]:
    return (slot.host, slot.kind, slot.index)


@dataclass(frozen=True)
class MemoryNeed:
    """A job's GPU memory per device as the compute estimator sized it (0: not sized)."""

    per_device_mb: int
    how: str


def _estimate(
    session: Session, settings: Settings, job: Job, sized_now: list[tuple[Job, Any]]
) -> MemoryNeed:
    """The prediction stored at submission, or the job sized now (submitted without one; added
    to `sized_now`, to be kept)."""
    from training_platform.compute import service as compute

    prediction = compute.prediction_row(session=session, job_id=job.id)  # type: ignore[arg-type]
    if prediction is not None:
        return MemoryNeed(prediction.predicted_mb, compute.how(prediction.breakdown))
    sized = compute.size_job(session=session, settings=settings, job=job)
    if sized is None:
        return MemoryNeed(0, "not sized")
    return MemoryNeed(
        sized.estimate.device_mb, compute.how(compute.public_estimate(sized.estimate))
    )


def _keep_predictions(engine: Engine, sized_now: list[tuple[Job, Any]]) -> None:
    """Keep the predictions of jobs sized in this pass: the next passes read them."""
    from training_platform.compute import service as compute

    with Session(engine) as session:
        try:
            for job, sized in sized_now:
                compute.record_prediction(
                    session=session,
                    job_id=job.id,  # type: ignore[arg-type]
                    sized=sized,
                    backend=job.backend,
                    algorithm=job.algorithm,
                )
            session.commit()
        except IntegrityError:
            session.rollback()  # another pass kept them first; the next pass reads them


def _why(demand: Demand, available: list[Slot], estimate: MemoryNeed) -> str:
    if demand.gpus == 0:
        return "waiting for a free CPU training slot"
    if choose(demand, available, check_memory=False) is not None:
        best = max((s.memory_free_mb for s in available if s.kind == "gpu"), default=0)
        return (
            f"waiting for GPU memory: needs ~{demand.memory_per_device_mb} MB per GPU "
            f"({estimate.how}); the free devices have at most {best} MB free"
        )
    free_gpus = sum(1 for s in available if s.kind == "gpu")
    return f"waiting for {demand.gpus} GPU(s); {free_gpus} free now"


def _lease(engine: Engine, job: Job, slots: list[Slot], preemptible: bool = False) -> Job | None:
    with Session(engine, expire_on_commit=False) as session:
        try:
            leases = [
                DeviceLease(
                    job_id=job.id,  # type: ignore[arg-type]
                    attempt=job.attempt,
                    host=slot.host,
                    kind=slot.kind,
                    device_index=slot.index,
                    simulated=slot.simulated,
                )
                for slot in slots
            ]
            session.add_all(leases)
            session.flush()
            # Stamped once the inserts went through: they may have waited for the write lock
            # (or for the release of the same device) to commit, and a lease is acquired when
            # it exists, not when the pass decided on it.
            now = utcnow()
            for lease in leases:
                lease.acquired_at = now
            moved = session.execute(
                update(Job)
                .where(
                    col(Job.id) == job.id,
                    col(Job.attempt) == job.attempt,
                    col(Job.status).in_(WAITING),
                    col(Job.dispatch_count) == job.dispatch_count,
                )
                .values(
                    node=slots[0].host,
                    dispatch_count=job.dispatch_count + 1,
                    dispatched_at=now,
                    wait_reason=None,
                    queue_position=None,
                    preemptible=preemptible,
                )
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()  # cancelled, or placed by another pass meanwhile
                return None
            session.commit()
        except IntegrityError:
            session.rollback()  # a device was leased by another pass first
            return None
        return session.get(Job, job.id)


def schedule(engine: Engine, settings: Settings, *, dispatch: Callable[[Job], None]) -> PassReport:
    """One pass over the queue; `dispatch` sends the start message of each placed job."""
    report = PassReport()
    now = utcnow()
    age_limit = timedelta(seconds=settings.backfill_age_limit_s)
    with Session(engine, expire_on_commit=False) as session:
        leased = set(
            session.exec(
                select(DeviceLease.job_id).where(col(DeviceLease.released_at).is_(None))
            ).all()
        )
        shares = quota.read(session, now, settings.fair_share_half_life_h)
        queued = [
            job
            for job in session.exec(
                select(Job)
                .where(col(Job.status).in_(WAITING), col(Job.pause_mode).is_(None))
                .order_by(col(Job.priority).desc(), col(Job.id))
            ).all()
            if job.id not in leased
        ]
        # Priority, then fair share (the project's decayed GPU-hours against its share), then
        # age, counted from submission (not from the end of the dataset's preparation, which
        # finishes in any order): a stable sort keeps the submission order within each.
        queued.sort(key=lambda j: (-j.priority, shares.standing(j.project_id)))
        free = service.free_slots(session)
        every = service.all_slots(session)
        sized_now: list[tuple[Job, Any]] = []
        estimates = {job.id: _estimate(session, settings, job, sized_now) for job in queued}
    if sized_now:
        _keep_predictions(engine, sized_now)
    held_back: set[tuple[str, str, int]] = set()
    reserving = False
    for job in queued:
        assert job.id is not None
        estimate = estimates[job.id]
        demand = service.demand_of(job.spec.get("resources", {}), estimate.per_device_mb)
        over = shares.over_limit(job, demand.gpus)
        if over is not None:
            report.waiting[job.id] = over
            continue
        available = [s for s in free if _key(s) not in held_back]
        chosen = choose(demand, available)
        if chosen is not None:
            preemptible = shares.above_guarantee(job, demand.gpus)
            placed = _lease(engine, job, chosen, preemptible)
            if placed is not None:
                taken = {_key(s) for s in chosen}
                free = [s for s in free if _key(s) not in taken]
                shares.hold(job, demand.gpus)
                report.placed.append(job.id)
                try:
                    dispatch(placed)
                except Exception:  # stored and leased: the supervisor resends the message
                    log.warning("job %s: start message not sent; the supervisor will", job.id)
                continue
            reason = "waiting: the devices were taken by another scheduling pass"
        else:
            reason = _why(demand, available, estimate)
            if demand.gpus and not shares.above_guarantee(job, demand.gpus):
                reason += quota.preempt_for(engine, job, demand.gpus, available, shares)
            waited = now - (job.queued_at or job.created_at)
            if not reserving and waited > age_limit:
                whole = choose(demand, every, check_memory=False)
                if whole is not None:
                    held_back |= {_key(s) for s in whole}
                    reserving = True
                    reason += (
                        f"; waiting longer than {int(age_limit.total_seconds())} s, so "
                        f"{', '.join(f'{s.host}:{s.kind}{s.index}' for s in whole)} are held "
                        "back for it"
                    )
        report.waiting[job.id] = reason
    _note(engine, report.waiting)
    return report


def _note(engine: Engine, waiting: dict[int, str]) -> None:
    """Write each waiting job's place in the queue and why it waits, in one transaction."""
    if not waiting:
        return
    with Session(engine) as session:
        for position, (job_id, reason) in enumerate(waiting.items(), start=1):
            session.execute(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.status).in_(WAITING))
                .values(queue_position=position, wait_reason=reason)
                .execution_options(synchronize_session=False)
            )
        session.commit()
