"""Inventory readings: simulated lists, nvidia-smi output, and an honest "none" without a GPU."""

from __future__ import annotations

import shutil

import pytest

from training_platform.scheduling import inventory

SMI_GPUS = """0, GPU-aaaa, NVIDIA H100 80GB HBM3, 81559, 1024, 35
1, GPU-bbbb, NVIDIA H100 80GB HBM3, 81559, 70000, 98
"""
SMI_APPS = """GPU-bbbb, 4242, 69000, python
GPU-bbbb, 4243, 500, [Not Found]
"""


def test_simulated_inventories_are_labelled() -> None:
    four = inventory.parse_simulated("4")
    assert [d.index for d in four] == [0, 1, 2, 3] and all(d.simulated for d in four)
    assert four[0].memory_total_mb == 81920 and four[0].name == "Simulated GPU"
    small = inventory.parse_simulated("2x24GB")
    assert [d.memory_total_mb for d in small] == [24576, 24576]
    mixed = inventory.parse_simulated(
        '[{"name": "Sim A100", "memory_mb": 40960}, {"name": "Sim H100", "occupied_by": "bob"}]'
    )
    assert [d.name for d in mixed] == ["Sim A100", "Sim H100"]
    assert mixed[1].processes and mixed[1].processes[0]["name"] == "bob"
    for bad in ("four", "[1]", "[{"):
        with pytest.raises((inventory.InventoryError, ValueError)):
            inventory.parse_simulated(bad)


def test_nvidia_smi_output_is_parsed() -> None:
    devices = inventory.parse_nvidia_smi(SMI_GPUS, SMI_APPS)
    assert [
        (d.index, d.uuid, d.memory_total_mb, d.memory_used_mb, d.utilization_pct) for d in devices
    ] == [(0, "GPU-aaaa", 81559, 1024, 35), (1, "GPU-bbbb", 81559, 70000, 98)]
    assert devices[0].processes == []
    assert [p["pid"] for p in devices[1].processes] == [4242, 4243]
    assert not devices[0].simulated


def test_this_machine_says_honestly_it_has_no_gpu() -> None:
    reading = inventory.read_local(None)
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("this machine has an NVIDIA driver")
    assert (reading.gpu_source, reading.devices) == ("none", [])
    assert inventory.read_local("2").gpu_source == "simulated"
