"""Scheduling service: record inventories, compute free slots, release leases, explain fits.

Functions flush; callers commit. No HTTP, no Celery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete, select

from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.scheduling import inventory
from training_platform.scheduling.inventory import HostReading
from training_platform.scheduling.models import DeviceLease, GpuDevice, Host
from training_platform.scheduling.placement import Demand, Slot


def record_inventory(
    *, session: Session, name: str, reading: HostReading, cpu_slots: int, our_pids: set[int]
) -> Host:
    """Store what a host reported; processes the platform did not start mark devices occupied."""
    now = utcnow()
    host = session.exec(select(Host).where(Host.name == name)).first()
    if host is None:
        host = Host(name=name, gpu_source=reading.gpu_source)
    host.gpu_source, host.cpu_slots, host.info, host.last_seen_at = (
        reading.gpu_source,
        cpu_slots,
        reading.info,
        now,
    )
    session.add(host)
    session.flush()
    assert host.id is not None
    existing = {
        d.index: d for d in session.exec(select(GpuDevice).where(GpuDevice.host_id == host.id))
    }
    for reading_device in reading.devices:
        device = existing.pop(reading_device.index, None) or GpuDevice(
            host_id=host.id,
            index=reading_device.index,
            name="",
            memory_total_mb=0,
        )
        device.uuid, device.name = reading_device.uuid, reading_device.name
        device.memory_total_mb = reading_device.memory_total_mb
        device.memory_used_mb = reading_device.memory_used_mb
        device.utilization_pct = reading_device.utilization_pct
        device.foreign_processes = [
            p for p in reading_device.processes if p.get("pid") not in our_pids
        ]
        device.simulated, device.updated_at = reading_device.simulated, now
        session.add(device)
    for gone in existing.values():
        session.delete(gone)
    session.flush()
    return host


def release(*, session: Session, job_id: int, reason: str) -> int:
    """Release every active lease of a job; each lease is released once, whoever calls."""
    result = session.execute(
        update(DeviceLease)
        .where(col(DeviceLease.job_id) == job_id, col(DeviceLease.released_at).is_(None))
        .values(released_at=utcnow(), release_reason=reason[:200])
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def active_leases(*, session: Session, job_id: int) -> Sequence[DeviceLease]:
    """The job's active leases, by device index."""
    return session.exec(
        select(DeviceLease)
        .where(DeviceLease.job_id == job_id, col(DeviceLease.released_at).is_(None))
        .order_by(col(DeviceLease.kind), col(DeviceLease.device_index))
    ).all()


def devices_held(*, session: Session, job_ids: Sequence[int]) -> dict[int, list[str]]:
    """Active leases of some jobs, as host:gpu<i> / host:cpu<i>."""
    if not job_ids:
        return {}
    held: dict[int, list[str]] = {}
    for lease in session.exec(
        select(DeviceLease)
        .where(col(DeviceLease.job_id).in_(job_ids), col(DeviceLease.released_at).is_(None))
        .order_by(col(DeviceLease.kind), col(DeviceLease.device_index))
    ):
        label = f"{lease.host}:{lease.kind}{lease.device_index}" + (
            " (simulated)" if lease.simulated else ""
        )
        held.setdefault(lease.job_id, []).append(label)
    return held


def all_slots(session: Session, *, include_occupied: bool = False) -> list[Slot]:
    """Every device and CPU slot of every host, free or not; GPUs busy with processes the
    platform did not start only with include_occupied (they may free up later)."""
    slots: list[Slot] = []
    hosts = {h.id: h for h in session.exec(select(Host)).all()}
    for host in hosts.values():
        slots.extend(Slot(host=host.name, kind="cpu", index=i) for i in range(host.cpu_slots))
    for device in session.exec(select(GpuDevice)).all():
        owner = hosts.get(device.host_id)
        if owner is None or (device.foreign_processes and not include_occupied):
            continue
        slots.append(
            Slot(
                host=owner.name,
                kind="gpu",
                index=device.index,
                name=device.name,
                memory_total_mb=device.memory_total_mb,
                memory_free_mb=max(device.memory_total_mb - device.memory_used_mb, 0),
                simulated=device.simulated,
            )
        )
    return slots


def free_slots(session: Session) -> list[Slot]:
    """Slots no active lease holds."""
    held = {
        (lease.host, lease.kind, lease.device_index)
        for lease in session.exec(select(DeviceLease).where(col(DeviceLease.released_at).is_(None)))
    }
    return [s for s in all_slots(session) if (s.host, s.kind, s.index) not in held]


def demand_of(resources: dict[str, Any], memory_per_device_mb: int = 0) -> Demand:
    """A job's resources as a placement demand."""
    gb = resources.get("min_gpu_memory_gb")
    return Demand(
        gpus=int(resources.get("gpus", 0)),
        gpu_type=resources.get("gpu_type"),
        min_memory_mb=int(gb * 1024) if gb else None,
        host=resources.get("host"),
        devices=tuple(resources.get("devices") or ()),
        memory_per_device_mb=memory_per_device_mb,
    )


def forget_host(*, session: Session, name: str) -> None:
    """Remove a host and its devices (not its lease history)."""
    host = session.exec(select(Host).where(Host.name == name)).first()
    if host is not None:
        session.execute(delete(GpuDevice).where(col(GpuDevice.host_id) == host.id))
        session.delete(host)
        session.flush()


def refresh_local(engine: Engine, settings: Settings) -> Host:
    """Read this node's GPUs and record them; GPU processes of our own runs are not foreign."""
    from training_platform.jobs.models import Job
    from training_platform.runners.local import LocalRunner

    reading = inventory.read_local(settings.simulated_gpus)
    runner = LocalRunner(node=settings.node_name)
    with Session(engine, expire_on_commit=False) as session:
        active = session.exec(
            select(Job).where(col(Job.status).in_(["starting", "running", "cancelling"]))
        ).all()
        ours: set[int] = set()
        for job in active:
            if job.runner_handle and runner.owns(job.runner_handle):
                ours.update(runner.pids(job.runner_handle))
        host = record_inventory(
            session=session,
            name=settings.node_name,
            reading=reading,
            cpu_slots=settings.training_slots,
            our_pids=ours,
        )
        session.commit()
        return host


def describe_hosts(session: Session) -> list[dict[str, Any]]:
    """Every host with its devices and who holds each (what fits them: compute advice)."""
    holders: dict[tuple[str, str, int], DeviceLease] = {
        (lease.host, lease.kind, lease.device_index): lease
        for lease in session.exec(select(DeviceLease).where(col(DeviceLease.released_at).is_(None)))
    }
    described = []
    for host in session.exec(select(Host).order_by(col(Host.name))).all():
        devices = session.exec(
            select(GpuDevice).where(GpuDevice.host_id == host.id).order_by(col(GpuDevice.index))
        ).all()
        gpus = []
        for device in devices:
            lease = holders.get((host.name, "gpu", device.index))
            gpus.append(
                {
                    "index": device.index,
                    "name": device.name,
                    "uuid": device.uuid,
                    "memory_total_mb": device.memory_total_mb,
                    "memory_used_mb": device.memory_used_mb,
                    "memory_free_mb": max(device.memory_total_mb - device.memory_used_mb, 0),
                    "utilization_pct": device.utilization_pct,
                    "simulated": device.simulated,
                    "held_by_job": lease.job_id if lease else None,
                    "occupied_by": device.foreign_processes,
                    "state": (
                        "held" if lease else "occupied" if device.foreign_processes else "free"
                    ),
                    "updated_at": device.updated_at,
                }
            )
        cpu = [
            {
                "index": i,
                "held_by_job": holders[(host.name, "cpu", i)].job_id
                if (host.name, "cpu", i) in holders
                else None,
            }
            for i in range(host.cpu_slots)
        ]
        described.append(
            {
                "name": host.name,
                "gpu_source": host.gpu_source,
                "simulated": host.gpu_source == "simulated",
                "info": host.info or {},
                "last_seen_at": host.last_seen_at,
                "gpus": gpus,
                "cpu_slots": cpu,
                "note": "no GPU found on this host" if not gpus else None,
            }
        )
    return described
