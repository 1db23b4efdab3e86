"""Projects' quotas in the scheduling pass (scheduling/quota.py), on a real database with
simulated GPUs: maxima, the fair-share order, guarantees and who is preempted for them."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from sqlmodel import Session, col, select

from training_platform.core.types import utcnow
from training_platform.projects import service as projects
from training_platform.scheduling.models import DeviceLease
from training_platform.scheduling.quota import _decayed_hours


@pytest.fixture
def two_projects(engine):  # type: ignore[no-untyped-def]
    """Projects a and b, each guaranteed 2 GPUs."""
    with Session(engine) as session:
        for name in ("a", "b"):
            projects.create_project(session=session, name=name, guaranteed_gpus=2)
        session.commit()


def _running(engine, job_id: int) -> None:  # type: ignore[no-untyped-def]
    """The placed job as its worker leaves it: running (what preemption looks for)."""
    from sqlalchemy import update

    from training_platform.jobs.models import Job

    with Session(engine) as session:
        session.execute(
            update(Job)
            .where(col(Job.id) == job_id)
            .values(status="running", started_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()


def test_a_flood_from_one_project_is_preempted_down_to_the_others_guarantee(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, reload_job, engine, two_projects
) -> None:
    sim = simulate("4")
    flood = [gpu_job(1, project="a", name=f"a{i}") for i in range(6)]
    placed = run_pass(sim).placed
    assert placed == [j.id for j in flood[:4]]  # the GPUs were free: a takes all four
    assert [reload_job(j.id).preemptible for j in flood[:4]] == [False, False, True, True]
    for job in flood[:4]:
        _running(engine, job.id)
    b_jobs = [gpu_job(1, project="b", name=f"b{i}") for i in range(2)]
    # b has used nothing: its jobs come before a's waiting ones, and within b's guarantee
    # they take the GPUs of a's two jobs above a's guarantee, the newest first.
    report = run_pass(sim)
    assert report.placed == []
    paused = {j.id: reload_job(j.id) for j in flood[:4]}
    assert {i for i, j in paused.items() if j.status == "pausing"} == {flood[2].id, flood[3].id}
    assert all(paused[j.id].preempted_at is not None for j in flood[2:4])
    assert [reload_job(j.id).wait_reason.split("; ")[-1] for j in b_jobs] == [
        f"preempting job(s) {flood[3].id} (above their projects' guarantees) to free GPUs for it",
        f"preempting job(s) {flood[2].id} (above their projects' guarantees) to free GPUs for it",
    ]
    # Another pass preempts nothing more: a is back at its guarantee once they stop.
    run_pass(sim)
    assert [reload_job(j.id).status for j in flood[:2]] == ["running", "running"]
    assert all("being freed for it" in reload_job(j.id).wait_reason for j in b_jobs)
    assert all(reload_job(j.id).status == "queued" for j in flood[4:])


def test_a_project_at_its_maximum_waits_and_fair_share_orders_equal_priorities(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, reload_job, engine
) -> None:
    sim = simulate("4")
    with Session(engine) as session:
        projects.create_project(session=session, name="capped", max_gpus=1, user_max_gpus=1)
        projects.create_project(session=session, name="busy", guaranteed_gpus=1)
        projects.create_project(session=session, name="idle", guaranteed_gpus=1)
        session.commit()
    first = gpu_job(1, project="capped", name="first")
    second = gpu_job(1, project="capped", name="second")
    assert run_pass(sim).placed == [first.id]
    assert "project capped holds 1 of its maximum of 1 GPU(s)" in reload_job(second.id).wait_reason
    # busy used 2 GPUs for an hour just now; idle nothing: idle's job, queued later, goes first.
    hog = gpu_job(2, project="busy", name="hog")
    assert run_pass(sim).placed == [hog.id]
    with Session(engine) as session:
        for lease in session.exec(select(DeviceLease).where(col(DeviceLease.job_id) == hog.id)):
            lease.acquired_at = utcnow() - timedelta(hours=1)
            lease.released_at = utcnow()
            session.add(lease)
        session.commit()
    late_busy = gpu_job(1, project="busy", name="busy again")
    late_idle = gpu_job(1, project="idle", name="idle")
    sim_two = simulate("2")  # one GPU left beside capped's
    placed = run_pass(sim_two).placed
    assert placed[0] == late_idle.id, placed
    assert reload_job(late_busy.id).status == "queued"


def test_gpu_hours_add_up_per_project_and_user(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, engine, two_projects
) -> None:
    sim = simulate("4")
    done = gpu_job(2, project="a", name="done", user_id=1)
    going = gpu_job(1, project="b", name="going")
    assert run_pass(sim).placed == [done.id, going.id]
    now = utcnow()
    with Session(engine) as session:
        for lease in session.exec(select(DeviceLease)):
            if lease.job_id == done.id:  # 2 GPUs for 1.5 h, ended 10 minutes ago
                lease.acquired_at = now - timedelta(hours=1, minutes=40)
                lease.released_at = now - timedelta(minutes=10)
            else:  # 1 GPU for the last half hour, still held
                lease.acquired_at = now - timedelta(minutes=30)
            session.add(lease)
        session.commit()
        rows = projects.usage(session=session, since=now - timedelta(days=1), now=now)
        recent = projects.usage(session=session, since=now - timedelta(hours=1), now=now)
    assert [(r.project, r.user, r.gpu_hours, r.running_gpus) for r in rows] == [
        ("a", "admin", pytest.approx(3.0), 0),
        ("b", None, pytest.approx(0.5), 1),
    ]
    # Only the part of each lease inside the window counts.
    assert [r.gpu_hours for r in recent] == [pytest.approx(2 * 50 / 60), pytest.approx(0.5)]
    # The fair share weighs an hour of one GPU an hour ago by half, decaying within it.
    assert _decayed_hours(now - timedelta(hours=2), now - timedelta(hours=1), now, 1.0) == (
        pytest.approx(0.25 / math.log(2))
    )
