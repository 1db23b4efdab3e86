"""Celery tasks of the jobs context. Thin: each takes ids and calls the services."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore
from celery.signals import worker_process_init
from sqlalchemy.engine import Engine
from sqlmodel import Session

from training_platform.core import confine, processes
from training_platform.core.db import get_engine
from training_platform.core.settings import Settings, get_settings
from training_platform.hosts import service as hosts
from training_platform.hosts.models import RemoteHost
from training_platform.hosts.runners import RemoteRunners
from training_platform.jobs import execution, preparation, supervisor
from training_platform.jobs.models import Job
from training_platform.jobs.state import JobStatus
from training_platform.runners.base import Runner
from training_platform.runners.local import LocalRunner
from training_platform.worker.app import app
from training_platform.worker.broker import RedisBrokerView
from training_platform.worker.config import redis_url
from training_platform.worker.queues import (
    KEY_PREFIX,
    PREPROCESSING,
    PRIORITY_MAX,
    REMOTE,
    SUPERVISOR_HEARTBEAT_KEY,
    broker_priority,
    training_queue,
)

log = logging.getLogger(__name__)
TICK_LOCK = f"{KEY_PREFIX}supervisor:tick"


@lru_cache(maxsize=1)
def runners_here() -> dict[str, Runner]:
    """The runners of this node: its own runs, and remote hosts' over SSH or Ray."""
    settings = get_settings()
    return {
        "local": LocalRunner(
            node=settings.node_name,
            warm_dir=settings.warm_servers_dir,
            run_as=confine.prepare(settings),
        ),
        "ssh": RemoteRunners(_engine(), settings, "ssh"),
        "ray": RemoteRunners(_engine(), settings, "ray"),
    }


def _remote_host(node: str | None) -> RemoteHost | None:
    if not node or node == get_settings().node_name:
        return None
    with Session(_engine()) as session:
        return hosts.find_host(session=session, name=node)


def _engine() -> Engine:
    return get_engine(get_settings())


def _actor() -> str:
    """Who events of this worker name: its node, as TP_NODE_NAME says (the hostname if unset)."""
    return f"worker:{get_settings().node_name}"


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool process must not reuse the parent's database connections.
    _engine().dispose(close=False)


def shown_as(job: Job, step: str) -> dict[str, Any]:
    """How Flower and the worker's log name a job's message: by the job's name, with its
    arguments spelled out (the message itself carries only the ids)."""
    return {
        "shadow": f"{job.name} ({step})",
        "argsrepr": f"job {job.id} {job.name!r}, attempt {job.attempt}",
        "kwargsrepr": "{}",
    }


class CeleryDispatcher:
    """Sends the message a job waits for: prepare (pending) or start (queued)."""

    def dispatch(self, job: Job) -> None:
        """Enqueue the next step of the job's current attempt at the job's priority."""
        if job.status == JobStatus.PENDING.value:
            app.send_task(
                "tp.jobs.prepare",
                args=[job.id, job.attempt],
                task_id=supervisor.message_id(job),
                queue=PREPROCESSING,
                routing_key=PREPROCESSING,
                priority=broker_priority(job.priority),
                **shown_as(job, "prepare"),
            )
            return
        if job.node is None:
            raise ValueError(f"job {job.id} holds no devices yet; the scheduler starts it")
        queue = REMOTE if _remote_host(job.node) is not None else training_queue(job.node)
        app.send_task(
            "tp.jobs.run",
            args=[job.id, job.attempt],
            task_id=supervisor.message_id(job),
            queue=queue,
            routing_key=queue,
            priority=broker_priority(job.priority),
            **shown_as(job, "run"),
        )

    def request_cancel(self, job: Job) -> None:
        """Have a general worker signal the job's process group at once."""
        app.send_task(
            "tp.jobs.cancel",
            args=[job.id],
            priority=broker_priority(PRIORITY_MAX),
            shadow=f"{job.name} (cancel)",
            argsrepr=f"job {job.id} {job.name!r}",
        )

    def request_schedule(self) -> None:
        """Have a general worker run a scheduling pass now."""
        app.send_task("tp.scheduling.pass", priority=broker_priority(PRIORITY_MAX))


@app.task(name="tp.jobs.prepare")
def prepare_job(job_id: int, attempt: int) -> str:
    """Prepare a pending job's dataset, then send its start message."""
    job = preparation.prepare_job(
        _engine(),
        get_settings(),
        job_id=job_id,
        attempt=attempt,
        actor=_actor(),
    )
    if job is None:
        return "skipped"
    from training_platform.scheduling.tasks import run_pass

    run_pass()  # start it now if devices are free
    return "queued"


# The task event that ends a start message's task whose job did not succeed, so that Flower
# shows the job's end rather than SUCCESS: Flower takes a custom event's name as the task's
# state (task-cancelled: CANCELLED), and a task-failed event is its FAILURE.
ENDED_BY_EVENT = {
    JobStatus.CANCELLED.value: "task-cancelled",
    JobStatus.PAUSED.value: "task-paused",
    JobStatus.QUEUED.value: "task-requeued",  # a retry or a preemption: a later message runs it
    JobStatus.FAILED.value: "task-failed",
}


def _ended(task: Task[Any, Any], outcome: execution.Outcome) -> str:
    """The task's result; for a job that did not succeed, its end as a task event instead.

    After that event the task raises Ignore: the worker acknowledges the message as after a
    success but sends no task-succeeded, which Flower would show over the event sent.
    """
    result = f"{outcome.action}:{outcome.status}"
    event = ENDED_BY_EVENT.get(outcome.status or "")
    if event is None or outcome.action == "skipped" or not task.app.conf.worker_send_task_events:
        return result
    fields: dict[str, Any] = {"result": result}
    if event == "task-failed":
        fields["exception"] = f"job {outcome.job_id} failed (its events say why)"
    task.send_event(event, **fields)
    raise Ignore()


@app.task(name="tp.jobs.run", acks_late=True, bind=True)
def run_job(self: Task[Any, Any], job_id: int, attempt: int) -> str:
    """Start a job's attempt and hold this training slot until its process ends."""
    settings = get_settings()
    runners = runners_here()
    with Session(_engine()) as session:
        job = session.get(Job, job_id)
        node = job.node if job is not None else None
    remote = _remote_host(node)
    if remote is not None:
        outcome = _start_remote(settings, runners, remote, job_id, attempt)
    else:
        outcome = execution.run_job(
            _engine(),
            settings,
            runners["local"],
            runners,
            job_id=job_id,
            attempt=attempt,
            actor=_actor(),
        )
    if outcome.action == "finished":
        from training_platform.scheduling.tasks import run_pass

        run_pass()  # its devices are free again: the next job need not wait for a tick
    return _ended(self, outcome)


def _start_remote(
    settings: Settings,
    runners: dict[str, Runner],
    host: RemoteHost,
    job_id: int,
    attempt: int,
) -> execution.Outcome:
    """Upload the inputs and launch on the host, then leave the watching to the supervisor."""
    from training_platform.hosts.staging import stager
    from training_platform.runners.ssh import SshRunner

    remote_runners = runners[host.runner]
    assert isinstance(remote_runners, RemoteRunners)
    runner = remote_runners.for_host(host.name)
    if runner is None:
        return execution.Outcome(job_id, "skipped")
    stage = None
    if isinstance(runner, SshRunner):
        platform_dir = (host.last_check or {}).get("platform_dir")
        stage = stager(settings, runner, platform_dir)
    return execution.run_job(
        _engine(),
        settings,
        runner,
        runners,
        job_id=job_id,
        attempt=attempt,
        actor=_actor(),
        node=host.name,
        stage=stage,
        watch=False,
    )


@app.task(name="tp.jobs.cancel")
def cancel_job(job_id: int) -> None:
    """Signal a cancelling job's process group; the supervisor finishes the job."""
    engine, settings, runners = _engine(), get_settings(), runners_here()
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.CANCELLING.value or job.runner_handle is None:
            return
        handle = job.runner_handle
    runner = runners.get(str(handle.get("runner")))
    if runner is not None and runner.owns(handle):
        runner.cancel(handle, force=False)
    supervisor.reconcile_job(engine, settings, job_id, runners)


@app.task(name="tp.supervisor.tick")
def supervisor_tick() -> dict[str, Any]:
    """One supervisor pass; skipped while another pass still runs."""
    settings = get_settings()
    client = redis.Redis.from_url(redis_url(settings))
    lock = client.lock(TICK_LOCK, timeout=120, blocking=False)
    if not lock.acquire():
        return {"skipped": True}
    try:
        # Reconciling ingests unwatched runs' output: bookkeeping, at a lower CPU priority.
        report = processes.at_low_priority(
            lambda: supervisor.tick(
                _engine(),
                settings,
                runners_here(),
                broker=RedisBrokerView(redis_url(settings)),
                dispatch=supervisor.resender(_engine(), CeleryDispatcher()),
            ),
            name="supervisor-tick",
        )
        client.set(SUPERVISOR_HEARTBEAT_KEY, str(time.time()))
        from training_platform.scheduling.tasks import run_pass

        placed = run_pass()
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("the supervisor lock expired before the tick ended")
    return {
        "reconciled": report.reconciled,
        "finished": report.finished,
        "retried": report.retried,
        "redispatched": report.redispatched,
        "scheduling": placed,
    }
