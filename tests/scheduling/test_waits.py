"""The wait a queued job is told: from the running jobs' measured pace and finished jobs like
the ones ahead, or none at all; never a number made up from unrelated jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session

from training_platform.jobs import waits as waits_of
from training_platform.jobs.models import Job
from training_platform.jobs.state import JobStatus, transition


def test_jobs_ahead_take_the_lane_that_frees_first_and_anything_unknown_makes_it_unknown() -> None:
    # Lanes free in 300 s and 50 s; the job ahead of it takes 200 s (on the 50 s lane), the
    # one after 100 s (on the 250 s one): the asking job gets the 300 s lane.
    assert waits_of.wait_in_line([300.0, 50.0], [200.0, 100.0]) == 300.0
    assert waits_of.wait_in_line([300.0, 50.0], []) == 50.0
    assert waits_of.wait_in_line([300.0, None], []) is None  # a running job of unknown length
    assert waits_of.wait_in_line([300.0], [None]) is None  # a job ahead like none that ended
    assert waits_of.wait_in_line([], []) is None  # nothing runs: it waits for something else


def test_a_queued_job_is_told_the_wait_its_queue_measures_or_none(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, reload_job, engine
) -> None:
    sim = simulate("1")
    first = gpu_job(1, name="first")
    assert run_pass(sim).placed == [first.id]
    second, third = gpu_job(1, name="second"), gpu_job(1, name="third")
    run_pass(sim)

    def waits(now=None):  # type: ignore[no-untyped-def]
        with Session(engine) as session:
            jobs = [reload_job(second.id), reload_job(third.id)]
            return waits_of.wait_estimates(session=session, jobs=jobs, now=now)

    def move(job_id: int, target: JobStatus, **values) -> Job:  # type: ignore[no-untyped-def]
        with Session(engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            assert job is not None
            transition(session, job, target, actor="test", reason="test", values=values)
            session.commit()
        return reload_job(job_id)

    # The running job has reported no step and no job like it has ended: nothing to go on.
    assert waits() == {}

    # 10 of 40 steps in 100 s: 30 steps left at 10 s a step. The third waits for the second
    # too, whose length nobody measured yet.
    move(first.id, JobStatus.STARTING)
    started = move(first.id, JobStatus.RUNNING, progress_step=10, progress_total=40).started_at
    assert started is not None
    assert waits(now=started + timedelta(seconds=100)) == {second.id: pytest.approx(300, abs=2)}

    # The first ends after 400 s: a job like it (same model, data, parameters, GPUs) is now
    # expected to take 400 s, so 150 s into the second's run the third has ~250 s to go.
    move(first.id, JobStatus.SUCCEEDED, finished_at=started + timedelta(seconds=400))
    assert run_pass(sim).placed == [second.id]
    move(second.id, JobStatus.STARTING)
    started = move(second.id, JobStatus.RUNNING).started_at
    assert started is not None
    with Session(engine) as session:
        estimate = waits_of.wait_estimates(
            session=session, jobs=[reload_job(third.id)], now=started + timedelta(seconds=150)
        )
    assert estimate == {third.id: pytest.approx(250, abs=2)}
