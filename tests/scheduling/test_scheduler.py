"""The scheduling pass on a real database: order, backfill, memory safety, exactly-once leases."""

from __future__ import annotations

import threading
import time

import pytest
from sqlmodel import Session

from training_platform.core.errors import InvalidInput
from training_platform.jobs import service
from training_platform.jobs.models import Job
from training_platform.jobs.schemas import JobCreate
from training_platform.scheduling.service import release


def test_priority_first_then_age_and_each_gets_its_own_devices(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, leases, reload_job, engine
) -> None:
    sim = simulate("4")
    older = gpu_job(2, priority=5, name="older")
    urgent = gpu_job(4, priority=9, name="urgent")
    younger = gpu_job(1, priority=5, name="younger")
    assert run_pass(sim).placed == [urgent.id]
    assert [lease.device_index for lease in leases(urgent.id)] == [0, 1, 2, 3]
    assert reload_job(urgent.id).node == sim.node_name
    assert (reload_job(older.id).queue_position, reload_job(younger.id).queue_position) == (1, 2)
    assert reload_job(older.id).wait_reason == "waiting for 2 GPU(s); 0 free now"
    with Session(engine) as session:
        service.cancel(session=session, job_id=urgent.id, actor="t")
        session.commit()
    assert run_pass(sim).placed == [older.id, younger.id]
    assert [lease.device_index for lease in leases(older.id)] == [0, 1]
    assert [lease.device_index for lease in leases(younger.id)] == [2]


def test_small_jobs_backfill_until_the_big_one_waited_too_long(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, reload_job
) -> None:
    sim = simulate("4")
    running = gpu_job(2, priority=9, name="running")
    assert run_pass(sim).placed == [running.id]
    big = gpu_job(4, priority=8, name="big")
    small = gpu_job(1, priority=1, name="small")
    assert run_pass(sim).placed == [small.id]  # backfilled around the big job
    late = gpu_job(1, priority=1, name="late")
    impatient = sim.model_copy(update={"backfill_age_limit_s": 0})
    report = run_pass(impatient)
    assert report.placed == []  # the big job waited past the limit: free devices held back
    assert "held back for it" in reload_job(big.id).wait_reason
    assert reload_job(late.id).queue_position == 2


def test_a_job_that_would_run_out_of_memory_stays_queued_with_the_reason(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, reload_job
) -> None:
    sim = simulate('[{"name": "Sim busy", "memory_mb": 81920, "memory_used_mb": 81919}]')
    job = gpu_job(1)
    assert run_pass(sim).placed == []
    reason = reload_job(job.id).wait_reason
    assert reason.startswith("waiting for GPU memory: needs ~") and "1 MB free" in reason
    assert "backward peak: logits" in reason  # the compute estimator's breakdown


def test_devices_busy_with_other_processes_are_never_leased(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, leases, reload_job
) -> None:
    sim = simulate('[{"occupied_by": "someone else"}, {}]')
    one, two = gpu_job(1, name="one"), gpu_job(2, name="two")  # two fits once device 0 frees
    assert run_pass(sim).placed == [one.id]
    assert [lease.device_index for lease in leases(one.id)] == [1]
    assert reload_job(two.id).status == "queued"


def test_explicit_host_devices_and_type(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, leases
) -> None:
    sim = simulate('[{"name": "Sim A100"}, {"name": "Sim H100"}, {"name": "Sim H100"}]')
    pinned = gpu_job(1, host=sim.node_name, devices=[2], name="pinned")
    typed = gpu_job(1, gpu_type="a100", name="typed")
    run_pass(sim)
    assert [lease.device_index for lease in leases(pinned.id)] == [2]
    assert [lease.device_index for lease in leases(typed.id)] == [0]


@pytest.mark.parametrize(
    ("resources", "text"),
    [
        ({"gpus": 8}, "no host has 8 GPU(s); available:"),
        ({"gpus": 1, "gpu_type": "A100"}, "of type 'A100'"),
        ({"gpus": 1, "host": "elsewhere"}, "on host 'elsewhere'"),
        ({"gpus": 1, "min_gpu_memory_gb": 200}, "with >= 200 GB each"),
    ],
)
def test_a_job_that_can_never_fit_is_refused_with_what_is_available(  # type: ignore[no-untyped-def]
    simulate, engine, resources, text
) -> None:
    sim = simulate("4")
    request = JobCreate.model_validate(
        {
            "name": "x",
            "algorithm": "sft",
            "model": "tiny-qwen2",
            "dataset": "tiny-sft",
            "resources": resources,
        }
    )
    with Session(engine) as session, pytest.raises(InvalidInput) as error:
        service.submit(session=session, request=request, actor="t")
    assert error.value.loc == ("body", "resources")
    assert text in error.value.message
    assert f"{sim.node_name}: 4 x Simulated GPU (80 GB)" in error.value.message
    device = JobCreate.model_validate(
        {
            "name": "x",
            "algorithm": "sft",
            "model": "tiny-qwen2",
            "dataset": "tiny-sft",
            "resources": {"gpus": 1, "host": sim.node_name, "devices": [5]},
        }
    )
    with Session(engine) as session, pytest.raises(InvalidInput, match=r"devices \[5\]"):
        service.submit(session=session, request=device, actor="t")


def test_no_gpu_here_and_a_gpu_job_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    request = JobCreate.model_validate(
        {
            "name": "x",
            "algorithm": "sft",
            "model": "tiny-qwen2",
            "dataset": "tiny-sft",
            "resources": {"gpus": 1},
        }
    )
    with Session(engine) as session, pytest.raises(InvalidInput, match="no host has a GPU"):
        service.submit(session=session, request=request, actor="t")


def test_a_lease_is_released_exactly_once(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, leases, engine
) -> None:
    sim = simulate("2")
    job = gpu_job(2)
    run_pass(sim)
    with Session(engine) as session:
        service.cancel(session=session, job_id=job.id, actor="t")
        session.commit()
        assert release(session=session, job_id=job.id, reason="again") == 0
        session.commit()
    history = leases(job.id)
    assert len(history) == 2 and all(lease.released_at for lease in history)
    assert {lease.release_reason for lease in history} == {"job cancelled: cancelled"}


def test_concurrent_passes_submits_and_cancels_never_double_lease(  # type: ignore[no-untyped-def]
    simulate, gpu_job, run_pass, leases, check_history, engine
) -> None:
    sim = simulate("4")
    jobs = [
        gpu_job(size, priority=p)
        for size, p in [
            (1, 3),
            (2, 5),
            (4, 9),
            (1, 1),
            (2, 7),
            (1, 9),
            (3, 2),
            (1, 4),
            (2, 6),
            (1, 8),
        ]
    ]
    stop = threading.Event()
    errors: list[BaseException] = []

    def schedule_loop() -> None:
        try:
            while not stop.is_set():
                run_pass(sim)
        except BaseException as error:
            errors.append(error)

    def churn() -> None:
        try:
            for job in jobs:
                time.sleep(0.05)
                with Session(engine) as session:
                    current = session.get(Job, job.id)
                    if current.status in ("queued", "starting", "running"):
                        try:
                            service.cancel(session=session, job_id=job.id, actor="churn")
                            session.commit()
                        except Exception:
                            session.rollback()
                jobs.append(gpu_job(1 + len(jobs) % 3, priority=len(jobs) % 10)) if len(
                    jobs
                ) < 30 else None
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=schedule_loop) for _ in range(4)] + [
        threading.Thread(target=churn)
    ]
    for thread in threads:
        thread.start()
    threads[-1].join()
    stop.set()
    for thread in threads[:-1]:
        thread.join()
    assert not errors, errors
    history = leases()
    assert len(history) > 10
    check_history(history)
    active = leases(active=True)
    assert len({(a.host, a.device_index) for a in active}) == len(active) <= 4
