"""A CPU "accelerator" for verl 0.9.1, for the SFT smoke test on machines without a GPU.

verl knows cuda, npu and rocm platforms. This module registers a `cpu` platform (selected
with VERL_PLATFORM=cpu) whose device is the CPU and whose collectives run on gloo, and it
replaces verl's process-group setup, whose "cpu:gloo,<device>:<backend>" string is invalid
when the device is the CPU itself. verl's FSDP engines are registered for cuda and npu only,
so the plan also sets VERL_ENGINE_DEVICE=cuda: the cuda engine runs on CPU tensors here.

Tested with verl 0.9.1 on torch 2.13 CPU; verl's internals move between releases, so this is
a smoke test of the platform's verl path, not a way to train.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed
import verl.utils.distributed as verl_distributed
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM_NAME = "cpu"


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def _zero(*_args: Any, **_kwargs: Any) -> int:
    return 0


def _device_module() -> types.ModuleType:
    """torch.cpu plus the torch.cuda calls verl makes (memory figures are 0 on CPU)."""
    module = types.ModuleType("verl_cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("__"):
            setattr(module, name, getattr(torch.cpu, name))
    extra: dict[str, Any] = {
        "set_device": _nothing,
        "empty_cache": _nothing,
        "reset_peak_memory_stats": _nothing,
        "manual_seed": torch.manual_seed,
        "manual_seed_all": torch.manual_seed,
        # Checkpoints keep "the device's" generator state under the device name, here "cpu".
        "get_rng_state": torch.get_rng_state,
        "set_rng_state": torch.set_rng_state,
        "memory_allocated": _zero,
        "memory_reserved": _zero,
        "max_memory_allocated": _zero,
        "max_memory_reserved": _zero,
        "mem_get_info": lambda *_a, **_k: (0, 0),
        "get_device_name": lambda *_a, **_k: "CPU",
    }
    for name, value in extra.items():
        setattr(module, name, value)
    return module


_DEVICE_MODULE = _device_module()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """The CPU as verl's only device, one per process."""

    @property
    def device_name(self) -> str:
        """verl builds tensors on `torch.device(device_name)`."""
        return "cpu"

    @property
    def vendor_name(self) -> str:
        """No vendor-specific engine exists for it."""
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        """What verl calls as `get_torch_device()`."""
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        """Always: every process has a CPU."""
        return True

    def current_device(self) -> str:  # type: ignore[override]
        """verl moves modules `.to(current_device())`: an index would mean an accelerator."""
        return "cpu"

    def device_count(self) -> int:
        """One device per process."""
        return 1

    def set_device(self, device_index: int) -> None:
        """Nothing to select."""

    def synchronize(self, device_index: int | None = None) -> None:
        """CPU work is synchronous."""

    def manual_seed(self, seed: int) -> None:
        """Seed torch's CPU generator."""
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        """Seed torch's CPU generator."""
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        """The CPU allocator has no such settings."""

    def empty_cache(self) -> None:
        """Nothing cached."""

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        """No compute capability."""
        return None, None

    def communication_backend_name(self) -> str:
        """Collectives between CPU processes."""
        return "gloo"

    def visible_devices_envvar(self) -> str:
        """Not used on CPU; verl asks for a name."""
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        """No profiler ranges."""
        yield

    def profiler_start(self) -> None:
        """No device profiler."""

    def profiler_stop(self) -> None:
        """No device profiler."""

    def ray_resource_name(self) -> str:
        """Ray's name for the resource."""
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        """No visible-devices variable for Ray to leave alone."""
        return []

    def is_ipc_supported(self) -> bool:
        """No CUDA IPC."""
        return False

    def cudart(self) -> None:
        """No CUDA runtime."""
        return None


def initialize_global_process_group(timeout_second: int = 36000) -> tuple[int, int, int]:
    """verl's process-group setup with gloo alone (torchrun sets the rank variables)."""
    torch.distributed.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout_second))
    return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


# verl's trainers import this name from the module at call time, so replacing it here counts.
verl_distributed.initialize_global_process_group = initialize_global_process_group
