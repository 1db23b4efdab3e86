"""Where a job fits: pure functions over free device slots. No I/O.

A GPU job takes `gpus` devices of one host; a CPU job (gpus 0) takes one CPU training slot.
Among hosts that fit, the one with the fewest matching free devices wins (best fit), so big
free blocks stay whole for big jobs; devices are taken lowest index first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """A device (or CPU slot) that could be leased."""

    host: str
    kind: str  # gpu | cpu
    index: int
    name: str = ""
    memory_total_mb: int = 0
    memory_free_mb: int = 0
    simulated: bool = False


@dataclass(frozen=True)
class Demand:
    """What a job asks for."""

    gpus: int = 0
    gpu_type: str | None = None
    min_memory_mb: int | None = None
    host: str | None = None
    devices: tuple[int, ...] = ()
    memory_per_device_mb: int = 0  # the job's own estimate, checked against free memory


def matches(demand: Demand, slot: Slot) -> bool:
    """Whether a slot is of the kind, host, type and size the job asked for (free memory aside)."""
    if demand.host is not None and slot.host != demand.host:
        return False
    if demand.gpus == 0:
        return slot.kind == "cpu"
    if slot.kind != "gpu":
        return False
    if demand.devices and slot.index not in demand.devices:
        return False
    if demand.gpu_type and demand.gpu_type.lower() not in slot.name.lower():
        return False
    return demand.min_memory_mb is None or slot.memory_total_mb >= demand.min_memory_mb


def choose(demand: Demand, free: Iterable[Slot], *, check_memory: bool = True) -> list[Slot] | None:
    """The slots to lease, or None if the job does not fit in `free` now."""
    by_host: dict[str, list[Slot]] = defaultdict(list)
    for slot in free:
        if not matches(demand, slot):
            continue
        if (
            check_memory
            and slot.kind == "gpu"
            and slot.memory_free_mb < demand.memory_per_device_mb
        ):
            continue
        by_host[slot.host].append(slot)
    needed = max(demand.gpus, 1)
    fitting = [(len(slots), host) for host, slots in by_host.items() if len(slots) >= needed]
    if demand.devices:
        fitting = [
            (n, h) for n, h in fitting if {s.index for s in by_host[h]} >= set(demand.devices)
        ]
    if not fitting:
        return None
    _, host = min(fitting)
    return sorted(by_host[host], key=lambda s: s.index)[:needed]


def capacity_check(demand: Demand, every: Sequence[Slot]) -> str | None:
    """Why the job can never fit on these hosts (ignoring what is busy now), or None if it can."""
    if choose(demand, every, check_memory=False) is not None:
        return None
    gpus = [s for s in every if s.kind == "gpu"]
    if demand.gpus == 0:
        return "no host offers a CPU training slot" + (
            f" on {demand.host!r}" if demand.host else ""
        )
    if not gpus:
        return f"the job asks for {demand.gpus} GPU(s) but no host has a GPU"
    hosts: dict[str, list[Slot]] = defaultdict(list)
    for slot in gpus:
        hosts[slot.host].append(slot)
    available = "; ".join(
        f"{host}: {len(slots)} x {slots[0].name} ({slots[0].memory_total_mb // 1024} GB)"
        for host, slots in sorted(hosts.items())
    )
    wanted = [f"{demand.gpus} GPU(s)"]
    if demand.gpu_type:
        wanted.append(f"of type {demand.gpu_type!r}")
    if demand.min_memory_mb:
        wanted.append(f"with >= {demand.min_memory_mb // 1024} GB each")
    if demand.host:
        wanted.append(f"on host {demand.host!r}")
    if demand.devices:
        wanted.append(f"devices {list(demand.devices)}")
    return f"no host has {' '.join(wanted)}; available: {available}"
