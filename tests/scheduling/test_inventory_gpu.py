"""The GPU inventory and telemetry readers on a real NVIDIA GPU (skipped where there is none).

NVML and nvidia-smi must agree on the devices, report power and temperature, and see the
memory and work of a process that really uses the GPU. The module under test is stdlib-only
(plus pynvml when installed), so this runs with plain pytest on a GPU machine:
`python -m pytest --noconftest -o addopts= tests/scheduling/test_inventory_gpu.py`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from training_platform.scheduling import inventory

pytestmark = pytest.mark.gpu

if shutil.which("nvidia-smi") is None:
    pytest.skip("no NVIDIA GPU (nvidia-smi) on this machine", allow_module_level=True)

# Holds 4 GiB on GPU 0 and keeps it busy with matrix products until stdin closes.
LOAD = """
import sys, threading, torch
block = torch.empty(4 * 1024**3, dtype=torch.uint8, device="cuda:0")
a = torch.randn(8192, 8192, device="cuda:0")
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("ready", flush=True)
while not stop.is_set():
    a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
"""


def _both() -> tuple[inventory.HostReading, inventory.HostReading]:
    nvml = inventory._read_nvml()
    smi = inventory._read_nvidia_smi()
    assert nvml is not None, "NVML could not be read (is nvidia-ml-py installed?)"
    assert smi is not None
    return nvml, smi


def test_nvml_and_nvidia_smi_agree_on_the_devices() -> None:
    nvml, smi = _both()
    assert nvml.gpu_source == "nvml" and smi.gpu_source == "nvidia-smi"
    assert len(nvml.devices) == len(smi.devices) >= 1
    for a, b in zip(nvml.devices, smi.devices, strict=True):
        assert (a.index, a.uuid, a.name) == (b.index, b.uuid, b.name)
        assert a.uuid.startswith("GPU-") and "NVIDIA" in a.name
        assert abs(a.memory_total_mb - b.memory_total_mb) <= 0.01 * b.memory_total_mb
        for reading in (a, b):
            assert reading.power_w is not None and 10 < reading.power_w < 2000
            assert reading.temperature_c is not None and 5 < reading.temperature_c < 110
            assert not reading.simulated
    assert inventory.read_local(None).gpu_source == "nvml"  # NVML first, when it answers


def test_both_readers_see_a_process_using_memory_and_compute() -> None:
    torch = pytest.importorskip("torch")
    assert torch.cuda.is_available()
    before_nvml, before_smi = _both()
    load = subprocess.Popen(
        [sys.executable, "-c", LOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert load.stdout is not None and load.stdout.readline().strip() == "ready"
        busiest = {"nvml": 0, "nvidia-smi": 0}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and min(busiest.values()) < 50:
            for reading in _both():
                busiest[reading.gpu_source] = max(
                    busiest[reading.gpu_source], reading.devices[0].utilization_pct or 0
                )
            time.sleep(0.5)
        during_nvml, during_smi = _both()
        for before, during in ((before_nvml, during_nvml), (before_smi, during_smi)):
            grown = during.devices[0].memory_used_mb - before.devices[0].memory_used_mb
            assert grown >= 4000, f"{during.gpu_source}: memory grew by {grown} MB only"
            processes = during.devices[0].processes
            # Containers may hide other processes' pids; when listed, ours is among them.
            if processes:
                assert any(p.get("pid") == load.pid for p in processes), processes
        assert busiest["nvml"] >= 50 and busiest["nvidia-smi"] >= 50, busiest
        print(
            f"\nnvml: {during_nvml.devices[0]}\nnvidia-smi: {during_smi.devices[0]}\n"
            f"peak utilisation seen: {busiest}"
        )
    finally:
        assert load.stdin is not None
        load.stdin.close()
        load.wait(timeout=60)
