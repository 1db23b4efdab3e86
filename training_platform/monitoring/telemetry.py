"""GPU telemetry per job: samples of the devices a running job holds, at a bounded rate.

Local runs are read with NVML (else nvidia-smi), remote ones by the host's agent over SSH
(the same readers, run there). Simulated devices are never sampled: a platform without GPUs
shows "no samples", not invented numbers. The peak memory per job is what the compute
configurator compares its estimate with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.jobs.models import Job
from training_platform.monitoring.live import Publisher
from training_platform.monitoring.models import GpuSample
from training_platform.scheduling import inventory
from training_platform.scheduling import service as scheduling

log = logging.getLogger(__name__)
# host name -> the devices of that host as read now (index -> reading)
Reader = Callable[[str], dict[int, inventory.DeviceReading]]


def local_reader(settings: Settings) -> Reader:
    """Reads this node's devices (NVML, else nvidia-smi); other hosts are not this one's."""

    def read(host: str) -> dict[int, inventory.DeviceReading]:
        if host != settings.node_name:
            return {}
        return {d.index: d for d in inventory.read_local(None).devices if not d.simulated}

    return read


def agent_reader(runner: Any) -> Reader:
    """Reads a remote host's devices through its agent (one SSH call)."""

    def read(host: str) -> dict[int, inventory.DeviceReading]:
        found = runner.agent("info", timeout_s=60)
        devices = {}
        for item in found.get("gpus", []):
            fields = {
                k: v for k, v in item.items() if k in inventory.DeviceReading.__dataclass_fields__
            }
            device = inventory.DeviceReading(**fields)
            if not device.simulated:
                devices[device.index] = device
        return devices

    return read


def reader_for(settings: Settings, runner: Any, job: Job) -> Reader:
    """How to read the devices of the host the job runs on."""
    for_host = getattr(runner, "for_host", None)  # remote runners: the host's own runner
    bound = for_host(job.node) if for_host is not None and job.node else None
    if bound is not None and hasattr(bound, "agent"):
        return agent_reader(bound)
    return local_reader(settings)


# Attempts found holding no real GPU: nothing to sample for the rest of the attempt (its
# devices are leased once), so later checks ask the database nothing.
_NOTHING_TO_SAMPLE: set[tuple[int, int, datetime]] = set()


def _attempt_key(job: Job) -> tuple[int, int, datetime]:
    assert job.id is not None
    return (job.id, job.attempt, job.created_at)  # ids alone repeat across databases


def due(session: Session, job: Job, interval_s: float) -> bool:
    """Whether the job's last sample is older than the interval."""
    if _attempt_key(job) in _NOTHING_TO_SAMPLE:
        return False
    last = session.exec(
        select(func.max(GpuSample.taken_at)).where(GpuSample.job_id == job.id)
    ).one()
    return last is None or utcnow() - last >= timedelta(seconds=interval_s)


def sample(
    *,
    session: Session,
    job: Job,
    read: Reader,
    publish: Publisher | None = None,
) -> list[GpuSample]:
    """Record one sample of each real device the job holds now; commits."""
    assert job.id is not None
    leases = [
        lease
        for lease in scheduling.active_leases(session=session, job_id=job.id)
        if lease.kind == "gpu" and not lease.simulated
    ]
    if not leases:
        if len(_NOTHING_TO_SAMPLE) > 10_000:
            _NOTHING_TO_SAMPLE.clear()
        _NOTHING_TO_SAMPLE.add(_attempt_key(job))
        return []
    readings: dict[str, dict[int, inventory.DeviceReading]] = {}
    taken = []
    now = utcnow()
    for lease in leases:
        if lease.host not in readings:
            try:
                readings[lease.host] = read(lease.host)
            except Exception as error:  # an unreachable host: no sample this time
                log.warning("job %s: GPUs of %s not read: %s", job.id, lease.host, error)
                readings[lease.host] = {}
        device = readings[lease.host].get(lease.device_index)
        if device is None:
            continue
        taken.append(
            GpuSample(
                job_id=job.id,
                attempt=job.attempt,
                host=lease.host,
                device_index=lease.device_index,
                taken_at=now,
                memory_used_mb=device.memory_used_mb,
                memory_total_mb=device.memory_total_mb,
                utilization_pct=device.utilization_pct,
                power_w=device.power_w,
                temperature_c=device.temperature_c,
            )
        )
    for row in taken:
        session.add(row)
    session.commit()
    if publish is not None and taken:
        publish.gpu(job.id, [public(s) for s in taken])
    return taken


def public(row: GpuSample) -> dict[str, Any]:
    """A sample as the API and live views show it."""
    return {
        "host": row.host,
        "device": row.device_index,
        "attempt": row.attempt,
        "taken_at": row.taken_at.isoformat(),
        "memory_used_mb": row.memory_used_mb,
        "memory_total_mb": row.memory_total_mb,
        "utilization_pct": row.utilization_pct,
        "power_w": row.power_w,
        "temperature_c": row.temperature_c,
    }


def samples(*, session: Session, job_id: int, limit: int) -> Sequence[GpuSample]:
    """The job's newest samples, oldest first."""
    rows = session.exec(
        select(GpuSample)
        .where(GpuSample.job_id == job_id)
        .order_by(col(GpuSample.taken_at).desc(), col(GpuSample.device_index).desc())
        .limit(limit)
    ).all()
    return list(reversed(rows))


def peak_memory_mb(*, session: Session, job_id: int) -> int | None:
    """The most memory any of the job's devices was seen using."""
    peak = session.exec(
        select(func.max(GpuSample.memory_used_mb)).where(GpuSample.job_id == job_id)
    ).one()
    return int(peak) if peak is not None else None


def as_points(taken: Sequence[GpuSample], *, step: int) -> list[tuple[int, str, float]]:
    """A sample round as metric points alert rules can watch (the fullest device counts)."""
    fractions = [s.memory_used_mb / s.memory_total_mb for s in taken if s.memory_total_mb]
    points = [(step, "gpu/memory_used_fraction", max(fractions))] if fractions else []
    utilization = [s.utilization_pct for s in taken if s.utilization_pct is not None]
    if utilization:
        points.append((step, "gpu/utilization_pct", float(min(utilization))))
    return points
