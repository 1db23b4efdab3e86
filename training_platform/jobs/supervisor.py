"""The supervisor: reconciles what the database says with what the runners see.

Every function here re-reads the database, is idempotent, and is safe to run in several
processes at once (the worker watching its own job and the periodic tick both call
reconcile_job). Status changes go through the state machine's compare-and-set.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.jobs import service
from training_platform.jobs.ingest import ingest
from training_platform.jobs.models import Job
from training_platform.jobs.state import ACTIVE, TERMINAL, JobStatus, StaleJob, transition
from training_platform.runners.base import Runner, RunState
from training_platform.scheduling.models import DeviceLease

log = logging.getLogger(__name__)
SUPERVISOR = "supervisor"


class BrokerView(Protocol):
    """What the supervisor asks of the broker: which start messages still exist."""

    def pending_task_ids(self) -> set[str] | None:
        """Ids of start messages waiting or in flight; None if the broker cannot tell."""
        ...


@dataclass
class TickReport:
    """What one tick did."""

    reconciled: int = 0
    finished: list[int] = field(default_factory=list)
    redispatched: list[int] = field(default_factory=list)


def describe_end(state: RunState) -> str:
    """A sentence for how a run ended."""
    if state.status == "lost":
        return f"training process vanished ({state.detail or 'no exit status'})"
    if state.signal:
        try:
            name = signal.Signals(state.signal).name
        except ValueError:
            name = f"signal {state.signal}"
        return f"training process was killed by {name}"
    return f"training process exited with code {state.exit_code}"


def reconcile_job(
    engine: Engine,
    settings: Settings,
    job_id: int,
    runners: Mapping[str, Runner],
    *,
    actor: str = SUPERVISOR,
) -> Job | None:
    """Bring one job's status in line with its run; returns the job as it now stands."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status) not in ACTIVE:
            return job
        try:
            return _reconcile(session, settings, job, runners, actor)
        except StaleJob:
            session.rollback()
            return session.get(Job, job_id)


def _reconcile(
    session: Session, settings: Settings, job: Job, runners: Mapping[str, Runner], actor: str
) -> Job:
    status = JobStatus(job.status)
    handle = job.runner_handle
    now = utcnow()
    if handle is None:
        run_dir = str(service.run_dir_for(settings, job))
        found, finder = None, None
        for candidate in runners.values():
            found = candidate.find(run_dir)
            if found is not None and candidate.owns(found):
                finder = candidate
                break
        if found is not None and finder is not None:
            # The worker started the process but died before recording its handle.
            session.refresh(job)
            if job.runner_handle is None:
                job.runner_handle, job.runner, job.node = found, finder.kind, settings.node_name
                session.add(job)
                session.commit()
            handle = found
        elif status is JobStatus.CANCELLING:
            transition(session, job, JobStatus.CANCELLED, actor=actor, reason="cancelled")
            session.commit()
            return job
        else:
            if status is JobStatus.STARTING and now - job.updated_at > timedelta(
                seconds=settings.start_timeout_s
            ):
                transition(
                    session,
                    job,
                    JobStatus.QUEUED,
                    actor=actor,
                    reason="start interrupted before the process was launched; requeued",
                    values={"queued_at": now, "dispatched_at": None},
                )
                session.commit()
            return job
    runner = runners.get(str(handle.get("runner")))
    if runner is None or not runner.owns(handle):
        return job  # another node's supervisor watches this run
    state = runner.poll(handle)
    ingest(session, job, runner, handle, final=state.status != "running")
    session.refresh(job)
    status = JobStatus(job.status)
    if state.status == "running":
        if status is JobStatus.STARTING:
            transition(
                session,
                job,
                JobStatus.RUNNING,
                actor=actor,
                reason="process found running; adopted",
            )
            session.commit()
        elif status is JobStatus.CANCELLING:
            requested = job.cancel_requested_at or job.updated_at
            force = now - requested > timedelta(seconds=settings.cancel_grace_s)
            runner.cancel(handle, force=force)
        return job
    ending = describe_end(state)
    if status is JobStatus.CANCELLING:
        transition(
            session,
            job,
            JobStatus.CANCELLED,
            actor=actor,
            reason=f"cancelled; {ending}",
            values={"exit_code": state.exit_code},
        )
    elif state.status == "exited" and state.exit_code == 0 and (short := _resume_fell_short(job)):
        transition(
            session,
            job,
            JobStatus.FAILED,
            actor=actor,
            reason=short,
            values={"exit_code": 0, "error": f"{ending}, but {short}"},
        )
    elif state.status == "exited" and state.exit_code == 0:
        outputs = dict(job.outputs or {})
        final = [c for c in service.checkpoints(session=session, job_id=job.id) if c.final]  # type: ignore[arg-type]
        final = [c for c in final if c.attempt == job.attempt]
        if final:
            outputs["model"] = final[-1].path
        transition(
            session,
            job,
            JobStatus.SUCCEEDED,
            actor=actor,
            reason=ending,
            values={"exit_code": 0, "outputs": outputs},
        )
    else:
        tail = service.log_tail(session=session, job_id=job.id, attempt=job.attempt)  # type: ignore[arg-type]
        message = f"{ending}\n--- last lines of the log ---\n{tail}" if tail else ending
        transition(
            session,
            job,
            JobStatus.FAILED,
            actor=actor,
            reason=ending,
            values={"exit_code": state.exit_code, "error": message},
        )
    session.commit()
    return job


def _resume_fell_short(job: Job) -> str | None:
    """Why a resumed attempt that exited 0 still did not do its work, if it did not."""
    resume = (job.inputs or {}).get("resume_from")
    if not resume:
        return None
    start, last, total = int(resume["step"]), job.progress_step, job.progress_total
    if last is None or last <= start:
        return f"the resumed run never advanced past its checkpoint (step {start})"
    if total is not None and last < total:
        return f"the resumed run ended at step {last} of {total}"
    return None


def tick(
    engine: Engine,
    settings: Settings,
    runners: Mapping[str, Runner],
    *,
    broker: BrokerView | None,
    dispatch: Callable[[int], None],
) -> TickReport:
    """One pass: reconcile every active job, resend prepare/start messages the broker lost."""
    report = TickReport()
    with Session(engine) as session:
        active = session.exec(
            select(Job.id).where(col(Job.status).in_([s.value for s in ACTIVE]))
        ).all()
    for job_id in active:
        if job_id is None:
            continue
        try:
            job = reconcile_job(engine, settings, job_id, runners)
        except Exception:  # one broken run must not stop the others from being watched
            log.exception("reconciling job %s failed", job_id)
            continue
        report.reconciled += 1
        if job is not None and JobStatus(job.status) in TERMINAL:
            report.finished.append(job_id)
    report.redispatched = _redispatch_lost(engine, settings, broker, dispatch)
    return report


def _redispatch_lost(
    engine: Engine,
    settings: Settings,
    broker: BrokerView | None,
    dispatch: Callable[[int], None],
) -> list[int]:
    cutoff = utcnow() - timedelta(seconds=settings.dispatch_grace_s)
    waiting = [JobStatus.PENDING.value, JobStatus.QUEUED.value]
    with Session(engine) as session:
        queued = session.exec(
            select(Job).where(col(Job.status).in_(waiting)).order_by(col(Job.id))
        ).all()
    if not queued:
        return []
    pending = broker.pending_task_ids() if broker is not None else None
    with Session(engine) as session:
        leased = set(
            session.exec(
                select(DeviceLease.job_id).where(col(DeviceLease.released_at).is_(None))
            ).all()
        )
    resent = []
    for job in queued:
        if job.status == JobStatus.QUEUED.value and job.id not in leased:
            continue  # no start message is due before the scheduler gives it devices
        never_sent = job.dispatched_at is None
        if not never_sent:
            if job.dispatched_at is not None and job.dispatched_at > cutoff:
                continue  # give a fresh message time to be picked up
            if pending is None or message_id(job) in pending:
                continue
        assert job.id is not None
        dispatch(job.id)
        resent.append(job.id)
    return resent


def resender(engine: Engine, dispatcher: service.Dispatcher) -> Callable[[int], None]:
    """A `dispatch` for tick(): record a new send of a queued job's start, commit, send it."""

    def resend(job_id: int) -> None:
        with Session(engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            if job is None or job.status not in (JobStatus.PENDING.value, JobStatus.QUEUED.value):
                return
            service.record_dispatch(session=session, job=job)
            session.commit()
        dispatcher.dispatch(job)
        log.info("job %s: start message resent (send %s)", job_id, job.dispatch_count)

    return resend


def message_id(job: Job) -> str:
    """The Celery task id of the message the job waits for now (prepare, or start)."""
    step = "prepare" if job.status == JobStatus.PENDING.value else "start"
    return f"job-{job.id}-attempt-{job.attempt}-{step}-{job.dispatch_count}"
