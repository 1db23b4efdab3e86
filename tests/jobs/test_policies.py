"""Pause and resume, time limits, hang detection and the retry policy, decided step by step.

The in-memory runner scripts what each run does; tests/e2e/test_durability.py does the same
things for real, with the whole platform and tiny-model trainings.
"""

from __future__ import annotations

import json
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from training_platform.core.types import utcnow
from training_platform.jobs import service, supervisor
from training_platform.jobs.models import Job, JobEvent
from training_platform.jobs.schemas import JobCreate
from training_platform.jobs.state import JobStatus, transition
from training_platform.runners.launcher import EXIT_STOPPED
from training_platform.runners.memory import MemoryRunner
from training_platform.scheduling.models import DeviceLease


@pytest.fixture
def runner() -> MemoryRunner:
    return MemoryRunner()


@pytest.fixture
def fast(settings):  # type: ignore[no-untyped-def]
    return settings.model_copy(
        update={
            "start_timeout_s": 0.0001,
            "cancel_grace_s": 0.0,
            "dispatch_grace_s": 0.0001,
            "stop_grace_s": 60.0,
        }
    )


def _record(kind: str, **fields: Any) -> bytes:
    return (json.dumps({"type": kind, "time": utcnow().isoformat(), **fields}) + "\n").encode()


def _start(engine: Any, fast: Any, runner: MemoryRunner, job: Job) -> str:
    """What a worker does up to RUNNING; returns the run dir."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job.id)
        transition(
            session,
            job,
            JobStatus.STARTING,
            actor="worker",
            reason="t",
            values={"node": fast.node_name, "runner": "local"},
        )
        run_dir = str(service.run_dir_for(fast, job))
        plan = service.plan_for_job(session=session, settings=fast, job=job, python="python3")
        job.runner_handle = runner.submit(plan, run_dir)
        session.add(job)
        transition(
            session,
            job,
            JobStatus.RUNNING,
            actor="worker",
            reason="t",
            values={"last_progress_at": utcnow()},
        )
        session.commit()
    return run_dir


def _reconcile(engine: Any, fast: Any, runner: MemoryRunner, job_id: int) -> Job:
    job = supervisor.reconcile_job(engine, fast, job_id, {"memory": runner})
    assert job is not None
    return job


def _checkpoint(run_dir: str, runner: MemoryRunner, step: int) -> None:
    (Path(run_dir) / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    for s in range(1, step + 1):
        runner.write(run_dir, "metrics", _record("metrics", step=s, values={"loss": 1.0 / s}))
    runner.write(
        run_dir,
        "metrics",
        _record("checkpoint", step=step, path=f"checkpoints/checkpoint-{step}", final=False),
    )


def _events(engine: Any, job_id: int) -> list[JobEvent]:
    with Session(engine, expire_on_commit=False) as session:
        return list(
            session.exec(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))
            ).all()
        )


def _age(engine: Any, job_id: int, **columns_seconds_ago: float) -> None:
    """Move the job's timestamps into the past."""
    values = {k: utcnow() - timedelta(seconds=v) for k, v in columns_seconds_ago.items()}
    with Session(engine, expire_on_commit=False) as session:
        session.execute(update(Job).where(col(Job.id) == job_id).values(**values))
        session.commit()


def _active_leases(engine: Any, job_id: int) -> int:
    with Session(engine, expire_on_commit=False) as session:
        return len(
            session.exec(
                select(DeviceLease).where(
                    DeviceLease.job_id == job_id, col(DeviceLease.released_at).is_(None)
                )
            ).all()
        )


# --- pause and resume ----------------------------------------------------------------------


def test_pause_checkpoints_stops_frees_devices_and_resume_goes_on_from_that_step(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job, place
) -> None:
    job = submit_job()
    assert place() == [job.id]
    run_dir = _start(engine, fast, runner, job)
    runner.write(run_dir, "metrics", _record("started", max_steps=20))
    with Session(engine, expire_on_commit=False) as session:
        paused = service.pause(session=session, job_id=job.id, actor="token:admin")
        session.commit()
    assert paused.status == "pausing" and paused.pause_mode == "checkpoint"
    _reconcile(engine, fast, runner, job.id)
    assert runner.runs[run_dir].stop_requested  # the trainer was asked for a checkpoint
    assert reload_job(job.id).status == "pausing"
    _checkpoint(run_dir, runner, 7)
    runner.write(run_dir, "metrics", _record("stopped", step=7))
    runner.finish(run_dir, EXIT_STOPPED)
    stored = _reconcile(engine, fast, runner, job.id)
    assert stored.status == "paused"
    assert _active_leases(engine, job.id) == 0  # a checkpointed pause frees its devices
    assert "resume goes on from the checkpoint at step 7" in _events(engine, job.id)[-1].reason

    with Session(engine, expire_on_commit=False) as session:
        resumed = service.resume(session=session, settings=fast, job_id=job.id, actor="token:admin")
        session.commit()
    assert resumed.status == "resuming" and resumed.attempt == 2
    assert resumed.inputs["resume_from"]["step"] == 7
    assert resumed.inputs["dataset"]["sha256"]  # no new preparation needed
    assert place() == [job.id]  # it waits for devices like a queued job
    run_dir = _start(engine, fast, runner, reload_job(job.id))
    assert "checkpoint-7" in json.dumps(runner.runs[run_dir].plan.to_dict())
    for s in range(8, 21):
        runner.write(run_dir, "metrics", _record("metrics", step=s, values={"loss": 0.1}))
    runner.finish(run_dir, 0)
    assert _reconcile(engine, fast, runner, job.id).status == "succeeded"
    assert [e.to_status for e in _events(engine, job.id)] == [
        "pending",
        "queued",
        "starting",
        "running",
        "pausing",
        "paused",
        "resuming",
        "starting",
        "running",
        "succeeded",
    ]


def test_suspend_keeps_the_process_and_its_devices_and_resume_continues_it(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job, place
) -> None:
    job = submit_job()
    place()
    run_dir = _start(engine, fast, runner, job)
    with Session(engine, expire_on_commit=False) as session:
        service.pause(session=session, job_id=job.id, actor="u", mode="suspend")
        session.commit()
    assert _reconcile(engine, fast, runner, job.id).status == "paused"
    assert runner.runs[run_dir].suspended and _active_leases(engine, job.id) == 1
    assert place() == []  # its devices stay held
    with Session(engine, expire_on_commit=False) as session:
        assert service.resume(session=session, settings=fast, job_id=job.id, actor="u").attempt == 1
        session.commit()
    stored = _reconcile(engine, fast, runner, job.id)
    assert stored.status == "running" and stored.pause_mode is None
    assert not runner.runs[run_dir].suspended


def test_a_suspended_run_that_dies_fails(engine, fast, runner, submit_job, place) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    place()
    run_dir = _start(engine, fast, runner, job)
    with Session(engine, expire_on_commit=False) as session:
        service.pause(session=session, job_id=job.id, actor="u", mode="suspend")
        session.commit()
    _reconcile(engine, fast, runner, job.id)
    runner.kill(run_dir, signal.SIGKILL)
    stored = _reconcile(engine, fast, runner, job.id)
    assert stored.status == "failed" and "while it was suspended" in stored.error
    assert _active_leases(engine, job.id) == 0


def test_a_pause_that_is_not_honoured_in_time_kills_and_pauses(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job
) -> None:
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    _checkpoint(run_dir, runner, 3)
    with Session(engine, expire_on_commit=False) as session:
        service.pause(session=session, job_id=job.id, actor="u")
        session.commit()
    _age(engine, job.id, stop_requested_at=120)
    _reconcile(engine, fast, runner, job.id)
    assert runner.runs[run_dir].signals == [signal.SIGKILL]
    stored = _reconcile(engine, fast, runner, job.id)
    assert stored.status == "paused"
    assert "did not stop within 60 s" in _events(engine, job.id)[-1].reason


def test_pause_and_resume_refuse_jobs_in_the_wrong_state(engine, fast, submit_job) -> None:  # type: ignore[no-untyped-def]
    from training_platform.core.errors import Conflict

    job = submit_job()
    with Session(engine) as session, pytest.raises(Conflict, match="only a running job"):
        service.pause(session=session, job_id=job.id, actor="u")
    with Session(engine) as session, pytest.raises(Conflict, match="only a paused job"):
        service.resume(session=session, settings=fast, job_id=job.id, actor="u")


# --- time limits ---------------------------------------------------------------------------


def test_time_limit_asks_for_a_checkpoint_then_fails_with_that_cause(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job
) -> None:
    job = submit_job(policy={"max_runtime_s": 60})
    run_dir = _start(engine, fast, runner, job)
    _reconcile(engine, fast, runner, job.id)
    assert not runner.runs[run_dir].stop_requested
    _age(engine, job.id, started_at=61)
    stored = _reconcile(engine, fast, runner, job.id)
    assert stored.status == "stopping" and runner.runs[run_dir].stop_requested
    assert runner.runs[run_dir].signals == []  # the checkpoint comes first
    _checkpoint(run_dir, runner, 4)
    runner.finish(run_dir, EXIT_STOPPED)
    stored = _reconcile(engine, fast, runner, job.id)
    assert (stored.status, stored.end_cause) == ("failed", "time_limit")
    assert stored.retry_at is None
    stopping = next(e for e in _events(engine, job.id) if e.to_status == "stopping")
    assert stopping.actor == "policy" and "time limit of 60 s reached" in stopping.reason


# --- hang detection ------------------------------------------------------------------------


def test_a_silent_run_is_flagged_stalled_with_a_dump_and_kept(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job
) -> None:
    job = submit_job(policy={"stall_timeout_s": 30})
    run_dir = _start(engine, fast, runner, job)
    _age(engine, job.id, last_progress_at=20)
    assert _reconcile(engine, fast, runner, job.id).status == "running"
    _age(engine, job.id, last_progress_at=31)
    assert _reconcile(engine, fast, runner, job.id).status == "stalled"
    stalled = next(e for e in _events(engine, job.id) if e.to_status == "stalled")
    assert "no log or metrics output for 31 s" in stalled.reason
    assert stalled.detail == f"scripted stacks of {run_dir}"
    assert _events(engine, job.id)[-1].actor == "policy"  # on_stall keep, recorded
    assert runner.runs[run_dir].signals == []
    runner.write(run_dir, "log", b"alive again\n")
    assert _reconcile(engine, fast, runner, job.id).status == "running"


@pytest.mark.parametrize("on_stall", ["fail", "retry"])
def test_a_stalled_run_is_stopped_when_the_policy_says_so(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, on_stall: str
) -> None:
    job = submit_job(policy={"stall_timeout_s": 5, "on_stall": on_stall, "max_attempts": 2})
    run_dir = _start(engine, fast, runner, job)
    _age(engine, job.id, last_progress_at=10)
    assert _reconcile(engine, fast, runner, job.id).status == "stopping"
    assert runner.runs[run_dir].signals  # SIGTERM; the run scripted to stop on it
    stored = _reconcile(engine, fast, runner, job.id)
    assert (stored.status, stored.end_cause) == ("failed", "stalled")
    assert (stored.retry_at is not None) == (on_stall == "retry")


# --- the retry policy ----------------------------------------------------------------------


def test_a_killed_attempt_is_retried_from_its_checkpoint_until_attempts_run_out(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job(policy={"max_attempts": 2, "retry_backoff_s": 30})
    run_dir = _start(engine, fast, runner, job)
    _checkpoint(run_dir, runner, 5)
    runner.kill(run_dir, signal.SIGKILL)
    stored = _reconcile(engine, fast, runner, job.id)
    assert (stored.status, stored.end_cause) == ("failed", "killed")
    assert stored.retry_at is not None
    assert "the retry policy starts attempt 2 in 30 s" in _events(engine, job.id)[-1].reason
    sent: list[int] = []
    assert supervisor.retry_due(engine, fast, sent.append) == []  # not before the backoff
    _age(engine, job.id, retry_at=1)
    assert supervisor.retry_due(engine, fast, sent.append) == [job.id] and sent == [job.id]
    retried = reload_job(job.id)
    assert (retried.status, retried.attempt, retried.retry_at) == ("pending", 2, None)
    assert retried.inputs["resume_from"]["step"] == 5
    assert _events(engine, job.id)[-1].actor == "policy"

    from training_platform.jobs import preparation

    preparation.prepare_job(engine, fast, job_id=job.id, attempt=2, actor="w")
    run_dir = _start(engine, fast, runner, reload_job(job.id))
    runner.kill(run_dir, signal.SIGKILL)
    stored = _reconcile(engine, fast, runner, job.id)
    assert stored.status == "failed" and stored.retry_at is None  # two attempts failed: done


def test_causes_outside_retry_on_are_not_retried(engine, fast, runner, submit_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job(policy={"max_attempts": 3})
    run_dir = _start(engine, fast, runner, job)
    runner.finish(run_dir, 1)  # a plain error is not in the default retry_on
    stored = _reconcile(engine, fast, runner, job.id)
    assert (stored.status, stored.end_cause, stored.retry_at) == ("failed", "error", None)
    job = submit_job(policy={"max_attempts": 3})
    run_dir = _start(engine, fast, runner, job)
    runner.kill(run_dir, signal.SIGSEGV)
    stored = _reconcile(engine, fast, runner, job.id)
    assert (stored.end_cause, stored.retry_at is not None) == ("crashed", True)


def test_cancelling_a_failed_job_calls_its_scheduled_retry_off(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job(policy={"max_attempts": 2, "retry_backoff_s": 0})
    run_dir = _start(engine, fast, runner, job)
    runner.vanish(run_dir)
    assert _reconcile(engine, fast, runner, job.id).end_cause == "lost"
    with Session(engine, expire_on_commit=False) as session:
        service.cancel(session=session, job_id=job.id, actor="token:admin")
        session.commit()
    assert reload_job(job.id).retry_at is None
    assert supervisor.retry_due(engine, fast, lambda _: None) == []
    assert _events(engine, job.id)[-1].reason == "scheduled retry called off"


def test_policy_is_validated_and_stored_in_the_spec(engine, submit_job) -> None:  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs max_attempts of 2 or more"):
        JobCreate.model_validate(
            {
                "name": "x",
                "algorithm": "sft",
                "model": "m",
                "dataset": "d",
                "policy": {"on_stall": "retry"},
            }
        )
    with pytest.raises(ValidationError, match="retry_on"):
        JobCreate.model_validate(
            {
                "name": "x",
                "algorithm": "sft",
                "model": "m",
                "dataset": "d",
                "policy": {"retry_on": ["bad"]},
            }
        )
    job = submit_job(policy={"max_attempts": 3, "max_runtime_s": 3600})
    assert job.spec["policy"]["max_attempts"] == 3 and job.spec["policy"]["on_stall"] == "keep"
