"""Starting a job on a worker: fence, plan, launch, record the handle, then watch it.

Only a job that holds the scheduler's lease on this node's devices is started; the worker then
watches it until the process ends. The process itself is detached: a worker that dies leaves
it running, and the supervisor keeps watching it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from training_platform.backends.base import LaunchContext, LaunchPlan
from training_platform.catalog.models import DatasetEntry, ModelEntry
from training_platform.core import processes
from training_platform.core.settings import Settings
from training_platform.jobs import service
from training_platform.jobs.models import Job
from training_platform.jobs.state import (
    SUSPEND,
    TERMINAL,
    WAITING,
    JobStatus,
    StaleJob,
    transition,
)
from training_platform.jobs.supervisor import reconcile_job
from training_platform.runners.base import Runner
from training_platform.scheduling import service as scheduling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a start message led to."""

    job_id: int
    action: str  # skipped | failed | finished
    status: str | None = None


def _startable(job: Job | None, attempt: int) -> bool:
    # Queued, or resumed from a checkpoint; a suspended run is continued, never restarted.
    return (
        job is not None
        and job.attempt == attempt
        and JobStatus(job.status) in WAITING
        and job.pause_mode != SUSPEND
    )


def _due(engine: Engine, job_id: int, attempt: int) -> bool:
    with Session(engine) as session:
        return _startable(session.get(Job, job_id), attempt)


def run_job(
    engine: Engine,
    settings: Settings,
    runner: Runner,
    runners: Mapping[str, Runner],
    *,
    job_id: int,
    attempt: int,
    actor: str,
    poll_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    node: str | None = None,
    stage: Callable[[LaunchContext], LaunchContext] | None = None,
    watch: bool = True,
) -> Outcome:
    """Start the job's attempt if it is still due, and watch it until it ends.

    `node` is the host the devices were leased on (default: this one); a remote host's runner
    has a `run_root` there, and `stage` moves the inputs to it. Without `watch` the call
    returns once the process runs and the supervisor watches it.
    """
    node = node or settings.node_name
    if not _due(engine, job_id, attempt):
        return Outcome(job_id, "skipped")
    with Session(engine) as session:
        leases = scheduling.active_leases(session=session, job_id=job_id)
        if not leases or any(lease.attempt != attempt or lease.host != node for lease in leases):
            # Only the scheduler's lease on this node's devices entitles a worker to start it.
            return Outcome(job_id, "skipped")
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        if job is None or not _startable(job, attempt):
            return Outcome(job_id, "skipped")
        try:
            transition(
                session,
                job,
                JobStatus.STARTING,
                actor=actor,
                reason="taken by a worker",
                values={"node": node, "runner": runner.kind},
            )
            session.commit()
        except StaleJob:
            return Outcome(job_id, "skipped")  # another delivery of the message won
        try:
            run_root = getattr(runner, "run_root", None)
            run_dir = (
                f"{run_root}/{job_id}/attempt-{attempt}"
                if run_root
                else str(service.run_dir_for(settings, job))
            )
            plan = _plan(session, settings, job, runner, run_dir, stage)
            handle = runner.submit(plan, run_dir)
        except Exception as error:
            log.exception("job %s could not start", job_id)
            session.rollback()
            session.refresh(job)
            transition(
                session,
                job,
                JobStatus.FAILED,
                actor=actor,
                reason="could not start",
                values={"error": f"could not start: {error}"},
            )
            session.commit()
            return Outcome(job_id, "failed", JobStatus.FAILED.value)
        # The handle is stored before anything else can happen, whatever the status now is.
        session.execute(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.attempt) == attempt)
            .values(runner_handle=handle, plan=plan.to_dict())
            .execution_options(synchronize_session=False)
        )
        session.commit()
        session.refresh(job)
        try:
            transition(session, job, JobStatus.RUNNING, actor=actor, reason="process started")
            session.commit()
        except Exception:
            session.rollback()
            session.refresh(job)
            if JobStatus(job.status) is not JobStatus.RUNNING:
                # Cancelled (or requeued) while we launched: the process, seconds old, must
                # not live on.
                runner.cancel(handle, force=True)
    if not watch:
        return Outcome(job_id, "started", JobStatus.RUNNING.value)
    # React to the run's output as it is written (live views), where the runner can tell.
    make_waiter = getattr(runner, "output_waiter", None)
    waiter = make_waiter(handle, poll_s) if make_waiter is not None else None
    try:
        pause = waiter.wait if waiter is not None else lambda: sleep(poll_s)
        # Watching (ingesting the run's output) is bookkeeping: it yields the CPU to the
        # trainer and the API, so that a burst of metrics never slows either.
        return processes.at_low_priority(
            lambda: _watch(engine, settings, runners, job_id, attempt, pause, actor),
            name=f"watch-job-{job_id}",
        )
    finally:
        if waiter is not None:
            waiter.close()


def _plan(
    session: Session,
    settings: Settings,
    job: Job,
    runner: Runner,
    run_dir: str,
    stage: Callable[[LaunchContext], LaunchContext] | None,
) -> LaunchPlan:
    model = session.get(ModelEntry, job.model_id) if job.model_id is not None else None
    dataset = session.get(DatasetEntry, job.dataset_id) if job.dataset_id is not None else None
    if (model is None and job.model_id is not None) or (
        dataset is None and job.dataset_id is not None
    ):
        raise RuntimeError("the job's model or dataset was removed from the catalog")
    python = getattr(runner, "python", "python3")
    return service.plan_for_job(
        session=session, settings=settings, job=job, python=python, run_dir=run_dir, stage=stage
    )


def _watch(
    engine: Engine,
    settings: Settings,
    runners: Mapping[str, Runner],
    job_id: int,
    attempt: int,
    pause: Callable[[], None],
    actor: str,
) -> Outcome:
    while True:
        job = reconcile_job(engine, settings, job_id, runners, actor=actor)
        if job is None or job.attempt != attempt or JobStatus(job.status) in TERMINAL:
            return Outcome(job_id, "finished", job.status if job else None)
        if JobStatus(job.status) is JobStatus.QUEUED:
            return Outcome(job_id, "finished", job.status)
        if JobStatus(job.status) is JobStatus.PAUSED and job.pause_mode != SUSPEND:
            return Outcome(job_id, "finished", job.status)  # its devices are free again
        pause()
