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
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.backends.base import get_backend
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.jobs import service
from training_platform.jobs.ingest import ingest
from training_platform.jobs.models import Job, JobEvent
from training_platform.jobs.state import (
    ACTIVE,
    HELD,
    SUSPEND,
    TERMINAL,
    WAITING,
    JobStatus,
    StaleJob,
    note,
    transition,
)
from training_platform.monitoring import alerts, live, telemetry
from training_platform.runners.base import Handle, Runner, RunState
from training_platform.runners.launcher import EXIT_STOPPED
from training_platform.scheduling.models import DeviceLease

log = logging.getLogger(__name__)
SUPERVISOR = "supervisor"
POLICY = "policy"  # the job's own policy acting: time limit, hang, automatic retry
SCHEDULER = "scheduler"  # the scheduler acting: a preemption for a job within its guarantee


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
    retried: list[int] = field(default_factory=list)


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
    if state.exit_code == EXIT_STOPPED:
        return "training process saved a checkpoint and stopped on request"
    return f"training process exited with code {state.exit_code}"


# Signals that come from outside the process (the OOM killer sends SIGKILL); any other fatal
# signal means the process itself crashed (SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE...).
_KILLED_BY = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def end_cause(state: RunState) -> str | None:
    """The retry policy's name for how a run ended; None for a clean exit."""
    if state.status == "lost":
        return "lost"
    if state.signal:
        return "killed" if state.signal in _KILLED_BY else "crashed"
    if state.exit_code == 0:
        return None
    if state.exit_code == EXIT_STOPPED:
        return "stopped"
    return "error"


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
        if job is None or not watched(job):
            return job
        try:
            return _reconcile(session, settings, job, runners, actor)
        except StaleJob:
            session.rollback()
            return session.get(Job, job_id)


def watched(job: Job) -> bool:
    """Whether the job may have a process that the supervisor must watch."""
    status = JobStatus(job.status)
    return status in ACTIVE or (status in HELD and job.pause_mode == SUSPEND)


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
            # Remote runners look in the run directory on the job's host.
            find_job = getattr(candidate, "find_job", None)
            found = find_job(job) if find_job is not None else candidate.find(run_dir)
            if found is not None and candidate.owns(found):
                finder = candidate
                break
        if found is not None and finder is not None:
            # The worker started the process but died before recording its handle.
            session.refresh(job)
            if job.runner_handle is None:
                node = str(found.get("host") or settings.node_name)
                job.runner_handle, job.runner, job.node = found, finder.kind, node
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
    publish = live.publisher(settings.broker_url)
    stored = ingest(session, job, runner, handle, final=state.status != "running", publish=publish)
    session.refresh(job)
    if not watched(job):
        return job  # another watcher (the worker, or a second tick) finished it meanwhile
    if stored.points and alerts.evaluate(
        session=session, job=job, points=stored.points, publish=publish
    ):
        session.refresh(job)
    if state.status == "running":
        if job.status == JobStatus.RUNNING.value and telemetry.due(
            session, job, settings.gpu_sample_interval_s
        ):
            read = telemetry.reader_for(settings, runner, job)
            taken = telemetry.sample(session=session, job=job, read=read, publish=publish)
            if taken:  # rules may watch the devices too: gpu/memory_used_fraction
                alerts.evaluate(
                    session=session,
                    job=job,
                    points=telemetry.as_points(taken, step=job.progress_step or 0),
                    publish=publish,
                )
            session.refresh(job)
        _while_running(session, settings, job, runner, handle, actor)
    else:
        _after_exit(session, settings, job, state, actor)
    return job


def _since(moment: datetime | None, now: datetime) -> float:
    return (now - moment).total_seconds() if moment is not None else 0.0


def _while_running(
    session: Session, settings: Settings, job: Job, runner: Runner, handle: Handle, actor: str
) -> None:
    status = JobStatus(job.status)
    now = utcnow()
    if status is JobStatus.STARTING:
        transition(
            session,
            job,
            JobStatus.RUNNING,
            actor=actor,
            reason="process found running; adopted",
            values={"last_progress_at": now},
        )
        session.commit()
    elif status is JobStatus.CANCELLING:
        requested = job.cancel_requested_at or job.updated_at
        runner.cancel(handle, force=_since(requested, now) > settings.cancel_grace_s)
    elif status is JobStatus.PAUSING:
        _pausing(session, settings, job, runner, handle, actor)
    elif status is JobStatus.STOPPING:
        _stopping(settings, job, runner, handle)
    elif status is JobStatus.RESUMING:  # a suspended run (watched() lets no other through)
        runner.resume(handle)
        transition(
            session,
            job,
            JobStatus.RUNNING,
            actor=actor,
            reason="process group continued (SIGCONT)",
            values={"pause_mode": None, "stop_requested_at": None, "last_progress_at": now},
        )
        session.commit()
    elif status in (JobStatus.RUNNING, JobStatus.STALLED):
        _check_limits(session, settings, job, runner, handle, actor)


def _pausing(
    session: Session, settings: Settings, job: Job, runner: Runner, handle: Handle, actor: str
) -> None:
    if job.pause_mode == SUSPEND:
        runner.suspend(handle)
        transition(
            session,
            job,
            JobStatus.PAUSED,
            actor=actor,
            reason="process group suspended (SIGSTOP); it keeps its devices",
        )
        session.commit()
        return
    # If it does not stop in time it is killed; resume goes on from its last checkpoint.
    _checkpoint_then_stop(settings, job, runner, handle)


def _stopping(settings: Settings, job: Job, runner: Runner, handle: Handle) -> None:
    if job.end_cause == "time_limit" and get_backend(job.backend, job.algorithm).graceful_stop:
        _checkpoint_then_stop(settings, job, runner, handle)
    else:
        waited = _since(job.stop_requested_at, utcnow())
        runner.cancel(handle, force=waited > settings.cancel_grace_s)


def _checkpoint_then_stop(settings: Settings, job: Job, runner: Runner, handle: Handle) -> None:
    """Ask for a checkpoint and exit; after TP_STOP_GRACE_S signal it as a cancel would."""
    runner.request_stop(handle)
    waited = _since(job.stop_requested_at, utcnow())
    if waited > settings.stop_grace_s:
        runner.cancel(handle, force=waited > settings.stop_grace_s + settings.cancel_grace_s)


def _check_limits(
    session: Session, settings: Settings, job: Job, runner: Runner, handle: Handle, actor: str
) -> None:
    """Time limit, then hang detection, as the job's policy says."""
    status = JobStatus(job.status)
    policy = service.policy_of(job)
    now = utcnow()
    if policy.max_runtime_s is not None and _since(job.started_at, now) > policy.max_runtime_s:
        graceful = get_backend(job.backend, job.algorithm).graceful_stop
        how = "asking the trainer to save a checkpoint and stop" if graceful else "stopping it"
        transition(
            session,
            job,
            JobStatus.STOPPING,
            actor=POLICY,
            reason=f"time limit of {policy.max_runtime_s:g} s reached; {how}",
            values={"end_cause": "time_limit", "stop_requested_at": now},
        )
        session.commit()
        _stopping(settings, job, runner, handle)
        return
    limit = policy.stall_timeout_s or settings.stall_timeout_s
    silent = _since(job.last_progress_at or job.started_at, now)
    if status is JobStatus.STALLED:
        if silent <= limit:
            transition(session, job, JobStatus.RUNNING, actor=actor, reason="output resumed")
            session.commit()
        return
    if silent <= limit:
        return
    dump = runner.stack_dump(handle)
    transition(
        session,
        job,
        JobStatus.STALLED,
        actor=actor,
        reason=f"no log or metrics output for {silent:.0f} s (stall timeout {limit:g} s)",
        detail=dump or "no stack dump: py-spy is not installed on this host",
    )
    message = f"no log or metrics output for {silent:.0f} s"
    if policy.on_stall == "keep":
        note(session, job, actor=POLICY, reason="on_stall is keep: left running")
        session.commit()
        alerts.stalled(
            session=session, job=job, message=message, action="notify", result="left running"
        )
        return
    transition(
        session,
        job,
        JobStatus.STOPPING,
        actor=POLICY,
        reason=f"on_stall is {policy.on_stall}: stopping the stalled process",
        values={"end_cause": "stalled", "stop_requested_at": now},
    )
    session.commit()
    alerts.stalled(
        session=session,
        job=job,
        message=message,
        action="stop",
        result=f"stopped (on_stall {policy.on_stall})",
    )
    _stopping(settings, job, runner, handle)


def _after_exit(
    session: Session, settings: Settings, job: Job, state: RunState, actor: str
) -> None:
    status = JobStatus(job.status)
    if status in TERMINAL:
        return  # already finished by another watcher: a job that is final is done
    ending = describe_end(state)
    cause = end_cause(state)
    finished = state.status == "exited" and state.exit_code == 0
    if status is JobStatus.CANCELLING:
        transition(
            session,
            job,
            JobStatus.CANCELLED,
            actor=actor,
            reason=f"cancelled; {ending}",
            values={"exit_code": state.exit_code},
        )
    elif status is JobStatus.PAUSING and job.pause_mode != SUSPEND and not finished:
        if cause == "stopped" or (cause == "killed" and _killed_by_us(settings, job)):
            checkpoint = service.latest_checkpoint(session=session, settings=settings, job=job)
            where = (
                f"the checkpoint at step {checkpoint.step}"
                if checkpoint
                else "the start (no checkpoint yet)"
            )
            reason = (
                f"paused: {ending}; resume goes on from {where}"
                if cause == "stopped"
                else f"paused: did not stop within {settings.stop_grace_s:g} s and was killed; "
                f"resume goes on from {where}"
            )
            paused = transition(
                session,
                job,
                JobStatus.PAUSED,
                actor=actor,
                reason=reason,
                values={"exit_code": state.exit_code},
            )
            if paused.preempted_at is not None and paused.id is not None:
                # Paused to make room for a job within its project's guarantee: back in the
                # queue at once, to go on from that checkpoint when GPUs are free again.
                service.resume(
                    session=session, settings=settings, job_id=paused.id, actor=SCHEDULER
                )
        else:
            _fail(session, settings, job, state, actor, ending, cause)
    elif status is JobStatus.STOPPING and not finished:
        why = "time limit reached" if job.end_cause == "time_limit" else "stalled"
        _fail(session, settings, job, state, POLICY, f"{why}; {ending}", job.end_cause)
    elif finished and (short := _work_not_done(job)):
        transition(
            session,
            job,
            JobStatus.FAILED,
            actor=actor,
            reason=short,
            values={"exit_code": 0, "error": f"{ending}, but {short}", "end_cause": "error"},
        )
    elif finished:
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
            values={"exit_code": 0, "outputs": outputs, "pause_mode": None},
        )
    else:
        if status in HELD:
            ending += " while it was suspended"
        _fail(session, settings, job, state, actor, ending, cause)
    session.commit()


def _killed_by_us(settings: Settings, job: Job) -> bool:
    return _since(job.stop_requested_at, utcnow()) > settings.stop_grace_s


def _fail(
    session: Session,
    settings: Settings,
    job: Job,
    state: RunState,
    actor: str,
    reason: str,
    cause: str | None,
) -> None:
    """End the attempt FAILED; the retry policy may schedule the next one."""
    tail = service.log_tail(session=session, job_id=job.id, attempt=job.attempt)  # type: ignore[arg-type]
    message = f"{reason}\n--- last lines of the log ---\n{tail}" if tail else reason
    delay = _retry_delay(session, job, cause)
    values: dict[str, object] = {
        "exit_code": state.exit_code,
        "error": message,
        "end_cause": cause,
        "pause_mode": None,
    }
    if delay is not None:
        values["retry_at"] = utcnow() + timedelta(seconds=delay)
        reason += f"; the retry policy starts attempt {job.attempt + 1} in {delay:g} s"
    transition(session, job, JobStatus.FAILED, actor=actor, reason=reason, values=values)


def _retry_delay(session: Session, job: Job, cause: str | None) -> float | None:
    """Seconds until the policy's next attempt, or None when it does not retry."""
    policy = service.policy_of(job)
    if cause is None or policy.max_attempts < 2:
        return None
    if cause == "stalled":
        if policy.on_stall != "retry":
            return None
    elif cause not in policy.retry_on:
        return None
    failures = (
        session.exec(
            select(func.count())
            .select_from(JobEvent)
            .where(JobEvent.job_id == job.id, JobEvent.to_status == JobStatus.FAILED.value)
        ).one()
        + 1  # this one
    )
    if failures >= policy.max_attempts:
        return None
    return float(policy.retry_backoff_s * 2 ** (failures - 1))


def _work_not_done(job: Job) -> str | None:
    """Why an attempt that exited 0 still did not do its work, if it did not.

    A run past its step count is wrong whatever its exit code (a resumed run that trained a
    step more than it was asked); a resumed one must advance past its checkpoint, unless the
    checkpoint already held every step, and reach its step count.
    """
    last, total = job.progress_step, job.progress_total
    if last is not None and total is not None and last > total:
        return f"the run went past its step count: step {last} of {total}"
    resume = (job.inputs or {}).get("resume_from")
    if not resume:
        return None
    start = int(resume["step"])
    if last is not None and total is not None and last == total:
        return None  # done: trained to the end, or only exported a checkpoint that was
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
            select(Job.id).where(col(Job.status).in_([s.value for s in ACTIVE | HELD]))
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
    report.retried = retry_due(engine, settings, dispatch)
    report.redispatched = _redispatch_lost(engine, settings, broker, dispatch)
    return report


def retry_due(engine: Engine, settings: Settings, dispatch: Callable[[int], None]) -> list[int]:
    """Start the next attempt of every failed job whose policy retry is due."""
    now = utcnow()
    with Session(engine) as session:
        due = session.exec(
            select(Job.id).where(
                Job.status == JobStatus.FAILED.value,
                col(Job.retry_at).is_not(None),
                col(Job.retry_at) <= now,
            )
        ).all()
    started = []
    for job_id in due:
        assert job_id is not None
        with Session(engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            if job is None or job.retry_at is None or job.status != JobStatus.FAILED.value:
                continue
            try:
                service.retry(
                    session=session,
                    settings=settings,
                    job_id=job_id,
                    actor=POLICY,
                    from_checkpoint=None,  # from the newest checkpoint if there is one
                )
                session.commit()
            except StaleJob:
                continue
        dispatch(job_id)
        started.append(job_id)
    return started


def _redispatch_lost(
    engine: Engine,
    settings: Settings,
    broker: BrokerView | None,
    dispatch: Callable[[int], None],
) -> list[int]:
    cutoff = utcnow() - timedelta(seconds=settings.dispatch_grace_s)
    waiting = [JobStatus.PENDING.value, *(s.value for s in WAITING)]
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
        if job.pause_mode == SUSPEND:
            continue  # a suspended run is continued in place, never started again
        if job.status != JobStatus.PENDING.value and job.id not in leased:
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
            waiting = (JobStatus.PENDING, *WAITING)
            if job is None or JobStatus(job.status) not in waiting:
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
