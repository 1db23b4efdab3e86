"""Supervisor and worker execution, driven step by step with the in-memory runner.

The in-memory runner runs nothing: it lets each test script what a run writes and how it
ends, so that every supervisor decision can be checked. The local runner and the whole
platform are exercised for real in tests/runners and tests/e2e.
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
from training_platform.jobs import execution, service, supervisor
from training_platform.jobs.models import Checkpoint, Job, JobEvent, JobLogChunk, JobMetric
from training_platform.jobs.state import JobStatus, transition
from training_platform.runners.memory import MemoryRunner


def _metrics_line(step: int, **values: float) -> bytes:
    record = {"type": "metrics", "time": utcnow().isoformat(), "step": step, "values": values}
    return (json.dumps(record) + "\n").encode()


@pytest.fixture
def runner() -> MemoryRunner:
    return MemoryRunner()


@pytest.fixture
def fast(settings):  # type: ignore[no-untyped-def]
    """Settings with short timeouts for the supervisor's rules."""
    return settings.model_copy(
        update={"start_timeout_s": 0.0001, "cancel_grace_s": 0.0, "dispatch_grace_s": 0.0001}
    )


def _start(engine: Any, fast: Any, runner: MemoryRunner, job: Job) -> str:
    """Do what a worker does up to RUNNING, without watching; returns the run dir."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job.id)
        transition(
            session,
            job,
            JobStatus.STARTING,
            actor="worker",
            reason="t",
            values={"node": fast.node_name, "runner": runner.kind},
        )
        run_dir = str(service.run_dir_for(fast, job))
        plan = service.plan_for_job(session=session, settings=fast, job=job, python="python3")
        handle = runner.submit(plan, run_dir)
        job.runner_handle = handle
        session.add(job)
        transition(session, job, JobStatus.RUNNING, actor="worker", reason="t")
        session.commit()
    return run_dir


def _events(engine: Any, job_id: int) -> list[tuple[str | None, str, str]]:
    with Session(engine) as session:
        rows = session.exec(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))
        ).all()
    return [(e.from_status, e.to_status, e.reason) for e in rows]


def test_log_and_metrics_are_ingested_by_offset_whole_lines_only(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    runner.write(run_dir, "log", b"line one\nhalf a li")
    runner.write(run_dir, "metrics", _metrics_line(1, loss=2.5) + b'{"type": "metr')
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.log_offset == len(b"line one\n")
    with Session(engine) as session:
        values = session.exec(select(JobMetric.key, JobMetric.value)).all()
    assert values == [("loss", 2.5)]
    runner.write(run_dir, "log", b"ne\n")
    runner.write(run_dir, "metrics", b'ics", "step": 2, "values": {"loss": 2.0, "lr": 0.1}}\n')
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    with Session(engine) as session:
        _, _, text, _ = service.read_log(
            session=session, job_id=job.id, attempt=None, offset=0, limit=1000
        )
        steps = session.exec(
            select(JobMetric.step, JobMetric.key).order_by(col(JobMetric.step), col(JobMetric.key))
        ).all()
    assert text == b"line one\nhalf a line\n"
    assert steps == [(1, "loss"), (2, "loss"), (2, "lr")]
    assert reload_job(job.id).progress_step == 2


def test_reconciling_twice_never_stores_a_byte_twice(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job
) -> None:
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    runner.write(run_dir, "log", b"".join(f"line {i}\n".encode() for i in range(1000)))
    runner.write(
        run_dir, "metrics", b"".join(_metrics_line(i, loss=1.0 / (i + 1)) for i in range(50))
    )
    for _ in range(3):
        supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    with Session(engine) as session:
        chunks = session.exec(select(JobLogChunk)).all()
        metric_rows = session.exec(select(JobMetric)).all()
    assert sum(len(c.data) for c in chunks) == len(runner.runs[run_dir].log)
    assert len(metric_rows) == 50


def test_a_metric_reported_again_for_a_step_keeps_one_value(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job
) -> None:
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    runner.write(run_dir, "metrics", _metrics_line(3, loss=9.0) + _metrics_line(3, loss=1.0))
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    with Session(engine) as session:
        assert session.exec(select(JobMetric.value)).all() == [1.0]


def test_exit_zero_succeeds_and_records_the_final_model(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    checkpoint = {
        "type": "checkpoint",
        "time": utcnow().isoformat(),
        "step": 5,
        "path": "model",
        "final": True,
    }
    runner.write(run_dir, "metrics", (json.dumps(checkpoint) + "\n").encode())
    runner.write(run_dir, "log", b"done, no newline at the end")
    runner.finish(run_dir, 0)
    finished = supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    assert finished is not None and finished.status == "succeeded"
    stored = reload_job(job.id)
    assert stored.exit_code == 0 and stored.outputs == {"model": "model"}
    assert stored.log_offset == len(b"done, no newline at the end")  # the tail is taken at the end
    with Session(engine) as session:
        assert [c.path for c in session.exec(select(Checkpoint)).all()] == ["model"]
    assert _events(engine, job.id)[-1] == (
        "running",
        "succeeded",
        "training process exited with code 0",
    )


def test_a_job_finished_by_another_watcher_meanwhile_is_done_not_an_error(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    # Defect: the worker's watch and the supervisor both saw the run exit; the one that lost
    # raised Conflict("job N is succeeded; it cannot become succeeded") and its Celery task
    # failed with a traceback.
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    runner.write(run_dir, "metrics", _metrics_line(5, loss=1.0))
    runner.finish(run_dir, 0)

    class OtherWatcherFirst(MemoryRunner):
        """Finishes the job through another reconcile while this one is between reads."""

        def __init__(self) -> None:
            self.__dict__ = runner.__dict__
            self.raced = False

        def poll(self, handle):  # type: ignore[no-untyped-def]
            state = super().poll(handle)
            if not self.raced:
                self.raced = True
                other = supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
                assert other is not None and other.status == "succeeded"
            return state

    racing = OtherWatcherFirst()
    finished = supervisor.reconcile_job(engine, fast, job.id, {"memory": racing})
    assert racing.raced
    assert finished is not None and finished.status == "succeeded"
    ends = [e for e in _events(engine, job.id) if e[1] == "succeeded"]
    assert len(ends) == 1
    assert reload_job(job.id).progress_step == 5


def test_exit_nonzero_fails_with_the_code_and_the_log_tail(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    runner.write(run_dir, "log", b"".join(f"line {i}\n".encode() for i in range(100)))
    runner.write(run_dir, "log", b"ValueError: the dataset has no messages column\n")
    runner.finish(run_dir, 3)
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "failed" and stored.exit_code == 3
    assert stored.error.startswith("training process exited with code 3")
    assert "ValueError: the dataset has no messages column" in stored.error
    assert "line 99" in stored.error and "line 10\n" not in stored.error


def test_a_run_that_vanishes_fails_with_the_reason(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    runner.vanish(run_dir)
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "failed" and stored.exit_code is None
    assert "vanished" in stored.error


def test_cancel_signals_the_group_and_ends_cancelled(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    runner.runs[run_dir].stops_on_term = False  # a trainer that ignores SIGTERM
    with Session(engine) as session:
        service.cancel(session=session, job_id=job.id, actor="user")
        session.commit()
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})  # grace 0: SIGKILL
    assert runner.runs[run_dir].signals == [int(signal.SIGKILL)]
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "cancelled"
    assert _events(engine, job.id)[-1][2] == "cancelled; training process was killed by SIGKILL"


def test_cancel_within_grace_sends_sigterm_first(  # type: ignore[no-untyped-def]
    engine, settings, runner, submit_job, reload_job
) -> None:
    patient = settings.model_copy(update={"cancel_grace_s": 3600})
    job = submit_job()
    run_dir = _start(engine, patient, runner, job)
    with Session(engine) as session:
        service.cancel(session=session, job_id=job.id, actor="user")
        session.commit()
    supervisor.reconcile_job(engine, patient, job.id, {"memory": runner})
    assert runner.runs[run_dir].signals == [int(signal.SIGTERM)]
    supervisor.reconcile_job(engine, patient, job.id, {"memory": runner})
    assert reload_job(job.id).status == "cancelled"


def test_a_start_interrupted_before_launch_is_requeued(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job.id)
        transition(session, job, JobStatus.STARTING, actor="worker", reason="t")
        session.commit()
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "queued" and stored.dispatched_at is None
    assert "requeued" in _events(engine, job.id)[-1][2]


def test_a_launched_run_without_a_recorded_handle_is_adopted(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job.id)
        transition(session, job, JobStatus.STARTING, actor="worker", reason="t")
        session.commit()
        plan = service.plan_for_job(session=session, settings=fast, job=job, python="python3")
    runner.submit(plan, str(service.run_dir_for(fast, job)))  # the worker died right after this
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "running" and stored.runner_handle is not None
    assert _events(engine, job.id)[-1][2] == "process found running; adopted"


class _Broker:
    """Answers what the real broker view answers: which start messages exist."""

    def __init__(self, pending: set[str] | None) -> None:
        self.pending = pending

    def pending_task_ids(self) -> set[str] | None:
        return self.pending


def test_lost_start_messages_are_resent_and_present_ones_are_not(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, place, reload_job
) -> None:
    from training_platform.scheduling.service import refresh_local

    two_slots = fast.model_copy(update={"training_slots": 2})
    refresh_local(engine, two_slots)
    present, lost = submit_job(name="present"), submit_job(name="lost")
    waiting = submit_job(name="not placed")  # no devices: no start message is due yet
    assert place(two_slots) == [present.id, lost.id]
    present, lost = reload_job(present.id), reload_job(lost.id)
    sent: list[int] = []
    broker = _Broker({supervisor.message_id(present)})
    report = supervisor.tick(engine, fast, {"memory": runner}, broker=broker, dispatch=sent.append)
    assert sent == [lost.id] and report.redispatched == [lost.id]
    assert reload_job(waiting.id).wait_reason == "waiting for a free CPU training slot"
    # If the broker cannot be read, nothing is resent blindly.
    sent.clear()
    supervisor.tick(engine, fast, {"memory": runner}, broker=_Broker(None), dispatch=sent.append)
    assert sent == []


def test_fresh_messages_get_time_to_be_picked_up(engine, settings, runner, submit_job) -> None:  # type: ignore[no-untyped-def]
    submit_job()
    sent: list[int] = []
    supervisor.tick(
        engine, settings, {"memory": runner}, broker=_Broker(set()), dispatch=sent.append
    )
    assert sent == []  # dispatch_grace_s (30 s) has not passed


def _finishing_sleep(runner: MemoryRunner, after: int = 2, code: int = 0) -> Any:
    calls = {"n": 0}

    def sleep(_seconds: float) -> None:
        calls["n"] += 1
        if calls["n"] == after:
            for run_dir, run in runner.runs.items():
                if run.state.status == "running":
                    runner.write(run_dir, "log", b"training\n")
                    runner.finish(run_dir, code)

    return sleep


def test_worker_starts_watches_and_finishes_a_job(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job, place
) -> None:
    job = submit_job()
    assert place() == [job.id]
    outcome = execution.run_job(
        engine,
        fast,
        runner,
        {"memory": runner},
        job_id=job.id,
        attempt=1,
        actor="worker:w",
        poll_s=0,
        sleep=_finishing_sleep(runner),
    )
    assert (outcome.action, outcome.status) == ("finished", "succeeded")
    stored = reload_job(job.id)
    assert (
        stored.plan is not None and stored.plan["argv"][2] == "training_platform.trainers.trl_train"
    )
    assert stored.runner_handle is not None and stored.node == fast.node_name
    assert [e[1] for e in _events(engine, job.id)] == [
        "pending",
        "queued",
        "starting",
        "running",
        "succeeded",
    ]


def test_a_redelivered_start_message_does_not_start_a_second_run(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, place
) -> None:
    job = submit_job()
    place()
    execution.run_job(
        engine,
        fast,
        runner,
        {"memory": runner},
        job_id=job.id,
        attempt=1,
        actor="w",
        poll_s=0,
        sleep=_finishing_sleep(runner),
    )
    again = execution.run_job(
        engine,
        fast,
        runner,
        {"memory": runner},
        job_id=job.id,
        attempt=1,
        actor="w",
        poll_s=0,
        sleep=_finishing_sleep(runner),
    )
    assert again.action == "skipped" and len(runner.runs) == 1


def test_a_message_for_an_old_attempt_is_ignored(engine, fast, runner, submit_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    outcome = execution.run_job(
        engine, fast, runner, {"memory": runner}, job_id=job.id, attempt=2, actor="w", poll_s=0
    )
    assert outcome.action == "skipped" and not runner.runs


def test_a_job_without_a_lease_is_not_started_and_gets_one_when_devices_free(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job, place
) -> None:
    busy, waiting = submit_job(name="busy"), submit_job(name="waiting")
    assert place() == [busy.id]  # one CPU slot
    busy_dir = _start(engine, fast, runner, busy)
    skipped = execution.run_job(
        engine, fast, runner, {"memory": runner}, job_id=waiting.id, attempt=1, actor="w", poll_s=0
    )
    assert skipped.action == "skipped" and len(runner.runs) == 1
    assert place() == []
    assert reload_job(waiting.id).queue_position == 1
    runner.finish(busy_dir, 0)
    supervisor.reconcile_job(engine, fast, busy.id, {"memory": runner})  # releases its slot
    assert place() == [waiting.id]
    outcome = execution.run_job(
        engine,
        fast,
        runner,
        {"memory": runner},
        job_id=waiting.id,
        attempt=1,
        actor="w",
        poll_s=0,
        sleep=_finishing_sleep(runner),
    )
    assert outcome.status == "succeeded"


def test_a_job_cancelled_after_it_was_placed_never_starts_and_frees_its_slot(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, place
) -> None:
    from training_platform.scheduling.service import active_leases

    job = submit_job()
    assert place() == [job.id]
    with Session(engine) as session:
        assert len(active_leases(session=session, job_id=job.id)) == 1
        service.cancel(session=session, job_id=job.id, actor="user")
        session.commit()
        assert active_leases(session=session, job_id=job.id) == []
    # The start message sent with the lease arrives late: nothing starts.
    outcome = execution.run_job(
        engine, fast, runner, {"memory": runner}, job_id=job.id, attempt=1, actor="w", poll_s=0
    )
    assert outcome.action == "skipped" and not runner.runs
    assert place() == []


def test_a_plan_that_cannot_start_fails_the_job(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job, place
) -> None:
    job = submit_job()
    place()
    with Session(engine) as session:  # the model row points outside the managed root now
        session.execute(update(Job).where(col(Job.id) == job.id).values(dataset_id=job.dataset_id))
        from training_platform.catalog.models import ModelEntry

        session.execute(update(ModelEntry).values(path="../../etc"))
        session.commit()
    outcome = execution.run_job(
        engine, fast, runner, {"memory": runner}, job_id=job.id, attempt=1, actor="w", poll_s=0
    )
    assert outcome.status == "failed"
    stored = reload_job(job.id)
    assert stored.error.startswith("could not start") and "outside the managed root" in stored.error
    assert not runner.runs


def test_supervisor_leaves_runs_of_other_nodes_alone(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    _start(engine, fast, runner, job)
    with Session(engine) as session:
        session.execute(
            update(Job)
            .where(col(Job.id) == job.id)
            .values(
                runner_handle={
                    "runner": "local",
                    "node": "elsewhere",
                    "run_dir": "/x",
                    "pid": 1,
                    "create_time": 0,
                }
            )
        )
        session.commit()
    from training_platform.runners.local import LocalRunner

    local = LocalRunner(node=fast.node_name)
    supervisor.reconcile_job(engine, fast, job.id, {"local": local, "memory": runner})
    assert reload_job(job.id).status == "running"


def test_tick_reports_finished_jobs(engine, fast, runner, submit_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    run_dir = _start(engine, fast, runner, job)
    runner.finish(run_dir, 1)
    report = supervisor.tick(
        engine, fast, {"memory": runner}, broker=_Broker(set()), dispatch=lambda _: None
    )
    assert report.finished == [job.id] and report.reconciled == 1
    assert utcnow() - timedelta(minutes=1) < job.created_at


def _record(kind: str, **fields: Any) -> bytes:
    return (json.dumps({"type": kind, "time": utcnow().isoformat(), **fields}) + "\n").encode()


def _fail_with_checkpoint(
    engine: Any, fast: Any, runner: MemoryRunner, job: Job, step: int
) -> None:
    """Run attempt 1 to a checkpoint at `step`, then crash it."""
    run_dir = _start(engine, fast, runner, job)
    (Path(run_dir) / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    runner.write(run_dir, "metrics", _record("started", max_steps=20))
    for s in range(1, step + 1):
        runner.write(run_dir, "metrics", _metrics_line(s, loss=5.0 - s * 0.1))
    runner.write(
        run_dir,
        "metrics",
        _record(
            "checkpoint",
            step=step,
            path=f"checkpoints/checkpoint-{step}",
            final=False,
            size_bytes=1234,
        ),
    )
    runner.finish(run_dir, -9)
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})


def _resume(engine: Any, fast: Any, runner: MemoryRunner, job_id: int) -> tuple[Job, str]:
    from training_platform.jobs import preparation

    with Session(engine) as session:
        service.retry(
            session=session, settings=fast, job_id=job_id, actor="user", from_checkpoint=True
        )
        session.commit()
    job = preparation.prepare_job(engine, fast, job_id=job_id, attempt=2, actor="w")
    assert job is not None
    return job, _start(engine, fast, runner, job)


def test_resume_continues_from_the_checkpoint_and_keeps_the_curve(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    _fail_with_checkpoint(engine, fast, runner, job, step=10)
    assert reload_job(job.id).status == "failed"
    job, run_dir = _resume(engine, fast, runner, job.id)
    assert job.inputs["resume_from"]["step"] == 10
    plan = runner.runs[run_dir].plan
    assert str(
        Path(service.attempt_dir(fast, job, 1)) / "checkpoints" / "checkpoint-10"
    ) in json.dumps(plan.to_dict())
    runner.write(run_dir, "metrics", _record("started", max_steps=20))
    for s in range(11, 21):
        runner.write(run_dir, "metrics", _metrics_line(s, loss=4.0 - s * 0.1))
    runner.finish(run_dir, 0)
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "succeeded" and stored.progress_step == 20
    with Session(engine) as session:
        steps = sorted(session.exec(select(JobMetric.step).where(JobMetric.key == "loss")).all())
        checkpoint = session.exec(select(Checkpoint)).first()
    assert steps == list(range(1, 21))  # attempt 1's steps stay; the counter went on
    assert checkpoint.size_bytes == 1234


def test_a_resumed_run_that_never_advances_fails(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    _fail_with_checkpoint(engine, fast, runner, job, step=10)
    job, run_dir = _resume(engine, fast, runner, job.id)
    runner.write(run_dir, "metrics", _record("started", max_steps=20))
    runner.finish(run_dir, 0)
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "failed" and stored.exit_code == 0
    assert "never advanced past its checkpoint (step 10)" in stored.error


def test_a_resumed_run_that_ends_short_fails(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    _fail_with_checkpoint(engine, fast, runner, job, step=10)
    job, run_dir = _resume(engine, fast, runner, job.id)
    runner.write(run_dir, "metrics", _record("started", max_steps=20))
    for s in range(11, 16):
        runner.write(run_dir, "metrics", _metrics_line(s, loss=1.0))
    runner.finish(run_dir, 0)
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "failed" and "ended at step 15 of 20" in stored.error


def test_resume_picks_the_newest_checkpoint_whose_files_exist(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job
) -> None:
    job = submit_job()
    _fail_with_checkpoint(engine, fast, runner, job, step=10)
    with Session(engine) as session:  # a newer checkpoint whose directory was rotated away
        session.add(Checkpoint(job_id=job.id, attempt=1, step=15, path="checkpoints/checkpoint-15"))
        session.commit()
        found = service.latest_checkpoint(
            session=session, settings=fast, job=session.get(Job, job.id)
        )
    assert found is not None and found.step == 10


def test_a_resumed_run_that_goes_past_its_step_count_fails(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    # Defect: retried from its checkpoint at max_steps, a run trained step max_steps + 1 at
    # learning rate 0 and ended succeeded with progress 21/20.
    job = submit_job()
    _fail_with_checkpoint(engine, fast, runner, job, step=20)
    job, run_dir = _resume(engine, fast, runner, job.id)
    runner.write(run_dir, "metrics", _record("started", max_steps=20))
    runner.write(run_dir, "metrics", _metrics_line(21, loss=1.0))
    runner.finish(run_dir, 0)
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "failed" and stored.exit_code == 0
    assert "went past its step count: step 21 of 20" in stored.error


def test_a_resumed_run_whose_checkpoint_held_every_step_succeeds_by_exporting_it(  # type: ignore[no-untyped-def]
    engine, fast, runner, submit_job, reload_job
) -> None:
    job = submit_job()
    _fail_with_checkpoint(engine, fast, runner, job, step=20)
    job, run_dir = _resume(engine, fast, runner, job.id)
    runner.write(run_dir, "metrics", _record("started", max_steps=20))
    runner.write(run_dir, "metrics", _record("checkpoint", step=20, path="model", final=True))
    runner.finish(run_dir, 0)
    supervisor.reconcile_job(engine, fast, job.id, {"memory": runner})
    stored = reload_job(job.id)
    assert stored.status == "succeeded", stored.error
    assert (stored.progress_step, stored.progress_total) == (20, 20)
    assert stored.outputs == {"model": "model"}
    with Session(engine) as session:
        steps = session.exec(select(JobMetric.step).where(JobMetric.key == "loss")).all()
    assert sorted(steps) == list(range(1, 21))  # no extra row
