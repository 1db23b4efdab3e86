"""Reading a host's GPUs: NVML, else nvidia-smi, else the simulated list from settings, else none.

Parsing is separate from reading so that the formats are tested without a GPU.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

SIMULATED_NAME = "Simulated GPU"
DEFAULT_SIMULATED_MB = 81920


@dataclass
class DeviceReading:
    """One GPU as read right now."""

    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int = 0
    utilization_pct: int | None = None
    uuid: str = ""
    processes: list[dict[str, Any]] = field(default_factory=list)
    simulated: bool = False
    power_w: float | None = None
    temperature_c: int | None = None


@dataclass
class HostReading:
    """A host's GPUs and where the list came from."""

    gpu_source: str  # nvml | nvidia-smi | simulated | none
    devices: list[DeviceReading]
    info: dict[str, Any] = field(default_factory=dict)


class InventoryError(ValueError):
    """The simulated inventory setting cannot be read."""


def parse_simulated(spec: str) -> list[DeviceReading]:
    """Devices from TP_SIMULATED_GPUS: "4", "4x24GB", or a JSON list of {name, memory_mb, ...}."""
    text = spec.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError as error:
            raise InventoryError(f"not JSON: {error}") from None
        devices = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InventoryError("each simulated GPU must be an object")
            occupied = item.get("occupied_by")
            devices.append(
                DeviceReading(
                    index=index,
                    name=str(item.get("name", SIMULATED_NAME)),
                    memory_total_mb=int(item.get("memory_mb", DEFAULT_SIMULATED_MB)),
                    memory_used_mb=int(item.get("memory_used_mb", 0)),
                    uuid=f"SIM-{index}",
                    processes=[{"pid": 0, "name": str(occupied), "used_mb": 0}] if occupied else [],
                    simulated=True,
                )
            )
        return devices
    match = re.fullmatch(r"(\d+)(?:\s*x\s*(\d+)\s*GB)?", text, flags=re.IGNORECASE)
    if not match:
        raise InventoryError('use a count ("4"), count x memory ("4x24GB") or a JSON list')
    count = int(match.group(1))
    memory = int(match.group(2)) * 1024 if match.group(2) else DEFAULT_SIMULATED_MB
    return [
        DeviceReading(
            index=i, name=SIMULATED_NAME, memory_total_mb=memory, uuid=f"SIM-{i}", simulated=True
        )
        for i in range(count)
    ]


def parse_nvidia_smi(gpus_csv: str, apps_csv: str) -> list[DeviceReading]:
    """Devices from `nvidia-smi --query-gpu=...` and `--query-compute-apps=...` CSV output."""
    devices: dict[str, DeviceReading] = {}
    for row in csv.reader(io.StringIO(gpus_csv)):
        if len(row) < 6 or not row[0].strip().isdigit():
            continue
        index, uuid, name, total, used, utilization = (part.strip() for part in row[:6])
        power, temperature = (
            (row[6].strip(), row[7].strip()) if len(row) >= 8 else ("", "")
        )  # newer queries add power.draw and temperature.gpu ("[N/A]" where unsupported)
        devices[uuid] = DeviceReading(
            power_w=float(power) if _is_number(power) else None,
            temperature_c=int(float(temperature)) if _is_number(temperature) else None,
            index=int(index),
            uuid=uuid,
            name=name,
            memory_total_mb=int(float(total)),
            memory_used_mb=int(float(used)),
            utilization_pct=int(float(utilization))
            if utilization.replace(".", "").isdigit()
            else None,
        )
    for row in csv.reader(io.StringIO(apps_csv)):
        if len(row) < 3 or row[0].strip() not in devices:
            continue
        uuid, pid, used = (part.strip() for part in row[:3])
        name = row[3].strip() if len(row) > 3 else ""
        if pid.isdigit():
            devices[uuid].processes.append(
                {
                    "pid": int(pid),
                    "name": name,
                    "used_mb": int(float(used)) if used.replace(".", "").isdigit() else 0,
                }
            )
    return sorted(devices.values(), key=lambda d: d.index)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_nvml() -> HostReading | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no device: NVML raises its own error types
        return None
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization: int | None = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:
                utilization = None
            processes = [
                {"pid": int(p.pid), "name": "", "used_mb": int((p.usedGpuMemory or 0) // 2**20)}
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            ]
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            try:
                power: float | None = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW
            except pynvml.NVMLError:
                power = None
            try:
                temperature: int | None = int(
                    pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
                )
            except pynvml.NVMLError:
                temperature = None
            devices.append(
                DeviceReading(
                    index=index,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_mb=int(memory.total // 2**20),
                    memory_used_mb=int(memory.used // 2**20),
                    utilization_pct=utilization,
                    processes=processes,
                    power_w=power,
                    temperature_c=temperature,
                )
            )
        driver = pynvml.nvmlSystemGetDriverVersion()
        info = {"driver": driver.decode() if isinstance(driver, bytes) else str(driver)}
        return HostReading("nvml", devices, info)
    finally:
        pynvml.nvmlShutdown()


def _read_nvidia_smi() -> HostReading | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        gpus = subprocess.run(
            [
                binary,
                "--query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,"
                "power.draw,temperature.gpu",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        apps = subprocess.run(
            [
                binary,
                "--query-compute-apps=gpu_uuid,pid,used_memory,process_name",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return HostReading("nvidia-smi", parse_nvidia_smi(gpus, apps))


def read_local(simulated: str | None) -> HostReading:
    """This machine's GPUs: simulated when configured, else NVML, else nvidia-smi, else none."""
    if simulated:
        return HostReading("simulated", parse_simulated(simulated))
    for reader in (_read_nvml, _read_nvidia_smi):
        found = reader()
        if found is not None:
            return found
    return HostReading("none", [])
