"""GPU telemetry: real devices a job holds are sampled at a bounded rate; simulated never."""

from __future__ import annotations

from sqlmodel import Session

from training_platform.jobs.models import Job
from training_platform.monitoring import telemetry
from training_platform.scheduling.inventory import DeviceReading
from training_platform.scheduling.models import DeviceLease


def _lease(engine, job: Job, host: str, indices: list[int], simulated: bool) -> None:  # type: ignore[no-untyped-def]
    # What the scheduler's pass writes when it places the job.
    with Session(engine) as session:
        for index in indices:
            session.add(
                DeviceLease(
                    job_id=job.id,  # type: ignore[arg-type]
                    attempt=job.attempt,
                    host=host,
                    kind="gpu",
                    device_index=index,
                    simulated=simulated,
                )
            )
        session.commit()


def _stand_in_for_nvml(used: dict[int, int]):  # type: ignore[no-untyped-def]
    """This machine has no GPU: readings as NVML would give them for two 80 GB devices."""

    def read(host: str) -> dict[int, DeviceReading]:
        return {
            index: DeviceReading(
                index=index,
                name="NVIDIA H100 80GB HBM3",
                memory_total_mb=81559,
                memory_used_mb=mb,
                utilization_pct=97,
                power_w=612.5,
                temperature_c=71,
            )
            for index, mb in used.items()
        }

    return read


def test_the_devices_a_job_holds_are_sampled_with_a_peak_and_a_bounded_rate(
    api, engine, settings, running_job
) -> None:  # type: ignore[no-untyped-def]
    job, _ = running_job()
    _lease(engine, job, settings.node_name, [0, 1], simulated=False)
    with Session(engine) as session:
        stored = session.get(Job, job.id)
        assert telemetry.due(session, stored, interval_s=10)
        read = _stand_in_for_nvml({0: 40_000, 1: 52_000, 2: 1_000})  # device 2 is not ours
        taken = telemetry.sample(session=session, job=stored, read=read)
        assert [(s.device_index, s.memory_used_mb) for s in taken] == [(0, 40_000), (1, 52_000)]
        assert not telemetry.due(session, stored, interval_s=10)  # the rate is bounded
        telemetry.sample(session=session, job=stored, read=_stand_in_for_nvml({0: 61_000, 1: 50}))
    shown = api.get(f"/api/v1/jobs/{job.id}/gpu").json()
    assert shown["peak_memory_mb"] == 61_000 and len(shown["samples"]) == 4
    first = shown["samples"][0]
    assert first["power_w"] == 612.5 and first["temperature_c"] == 71 and first["device"] == 0


def test_simulated_devices_and_cpu_jobs_show_no_samples(api, engine, settings, running_job) -> None:  # type: ignore[no-untyped-def]
    job, _ = running_job()
    _lease(engine, job, settings.node_name, [0], simulated=True)
    with Session(engine) as session:
        stored = session.get(Job, job.id)
        read = _stand_in_for_nvml({0: 1234})
        assert telemetry.sample(session=session, job=stored, read=read) == []
    shown = api.get(f"/api/v1/jobs/{job.id}/gpu").json()
    assert shown == {
        "samples": [],
        "peak_memory_mb": None,
        "note": "no GPU samples (a CPU job, simulated devices, or not yet)",
    }


def test_a_rule_on_gpu_memory_warns_before_the_device_is_full(
    engine, settings, running_job
) -> None:  # type: ignore[no-untyped-def]
    from training_platform.monitoring import alerts

    job, _ = running_job(
        alerts=[{"rule": "above", "key": "gpu/memory_used_fraction", "threshold": 0.9}]
    )
    _lease(engine, job, settings.node_name, [0, 1], simulated=False)
    with Session(engine) as session:
        stored = session.get(Job, job.id)
        taken = telemetry.sample(
            session=session, job=stored, read=_stand_in_for_nvml({0: 20_000, 1: 78_000})
        )
        [raised] = alerts.evaluate(
            session=session, job=stored, points=telemetry.as_points(taken, step=7)
        )
    assert raised.key == "gpu/memory_used_fraction" and raised.step == 7
    assert raised.message.startswith("gpu/memory_used_fraction = 0.956")
