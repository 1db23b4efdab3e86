"""The job state machine: allowed moves only, compare-and-set, an event for every move."""

from __future__ import annotations

import pytest
from sqlmodel import Session, col, select

from training_platform.core.errors import Conflict
from training_platform.jobs.models import Job, JobEvent
from training_platform.jobs.state import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    JobStatus,
    StaleJob,
    transition,
)


def test_every_status_has_a_row_and_terminal_states_only_retry() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    assert TRANSITIONS[JobStatus.SUCCEEDED] == frozenset()
    for status in (JobStatus.FAILED, JobStatus.CANCELLED):
        assert TRANSITIONS[status] == {JobStatus.PENDING, JobStatus.QUEUED}
    assert not TERMINAL & ACTIVE


def test_a_move_bumps_the_version_and_writes_an_event(engine, submit_job, reload_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job.id)
        transition(session, job, JobStatus.STARTING, actor="worker:a", reason="taken")
        session.commit()
    stored = reload_job(job.id)
    assert (stored.status, stored.version) == ("starting", 3)
    with Session(engine) as session:
        events = session.exec(
            select(JobEvent).where(JobEvent.job_id == job.id).order_by(col(JobEvent.id))
        ).all()
    assert [(e.from_status, e.to_status, e.actor) for e in events] == [
        (None, "pending", "test"),
        ("pending", "queued", "test"),
        ("queued", "starting", "worker:a"),
    ]
    assert events[1].created_at.tzinfo is not None


def test_forbidden_move_is_refused_and_writes_nothing(engine, submit_job, reload_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    with Session(engine) as session:
        job = session.get(Job, job.id)
        with pytest.raises(Conflict, match="cannot become succeeded"):
            transition(session, job, JobStatus.SUCCEEDED, actor="x", reason="no")
    assert reload_job(job.id).status == "queued"
    with Session(engine) as session:
        assert len(session.exec(select(JobEvent).where(JobEvent.job_id == job.id)).all()) == 2


def test_two_writers_from_the_same_version_only_one_wins(engine, submit_job, reload_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    with Session(engine) as first, Session(engine) as second:
        a, b = first.get(Job, job.id), second.get(Job, job.id)
        transition(first, a, JobStatus.STARTING, actor="worker:a", reason="taken")
        first.commit()
        with pytest.raises(StaleJob):
            transition(second, b, JobStatus.STARTING, actor="worker:b", reason="taken")
    stored = reload_job(job.id)
    assert stored.version == 3
    with Session(engine) as session:
        actors = session.exec(
            select(JobEvent.actor).where(
                JobEvent.job_id == job.id, JobEvent.to_status == "starting"
            )
        ).all()
    assert actors == ["worker:a"]


def test_terminal_move_stamps_finished_at(engine, submit_job, reload_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job.id)
        transition(session, job, JobStatus.CANCELLED, actor="test", reason="cancelled")
        session.commit()
    stored = reload_job(job.id)
    assert stored.finished_at is not None and stored.finished_at >= stored.created_at
