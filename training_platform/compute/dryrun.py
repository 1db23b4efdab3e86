"""The second tier: one real training step of the real architecture on fake tensors.

The model is built from its config under PyTorch's FakeTensorMode (no weights, no GPU, no
memory), then two steps of what TRL's SFT trainer does run on it (forward under bf16 autocast
with float32 weights as TRL loads them, or everything in bf16 for a pure-bf16 workload;
backward, fused AdamW), and torch's MemTracker counts
every storage by kind (parameters, gradients, optimizer state, activations, temporaries) at
the peak. Two steps,
because the optimizer's state exists from the first step on and the second forward carries it.

It runs on the CPU (a CPU-only torch cannot fake CUDA tensors), so CPU autocast chooses the
precision of each op; CUDA's autocast agrees on every op these decoders use (matmuls and
attention in bf16, norms and the loss in float32).
"""

from __future__ import annotations

import time
from copy import deepcopy
from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

from training_platform.compute.architecture import Architecture
from training_platform.compute.estimator import Workload


@dataclass(frozen=True)
class DryRun:
    """The peak a fake step measured, by kind of storage, in bytes."""

    peak_bytes: int
    breakdown: dict[str, int]
    seconds: float


class _NoHook:
    """The handle of a hook that was never installed."""

    def remove(self) -> None:
        """Nothing to remove."""


def _tracker() -> Any:
    from torch.distributed._tools.mem_tracker import MemTracker

    class PeakTracker(MemTracker):  # type: ignore[no-untyped-call]
        """MemTracker keeping the device peak only.

        The stock tracker also records each module's own peak, walking every tracked module on
        every op (90% of the time of a 24-layer step); the platform needs the device's peak.
        """

        def _track_module_params_and_buffers(
            self, module: Any, install_grad_hooks: bool = True
        ) -> Any:
            # A frozen parameter (LoRA's base) takes no gradient hook: mark it as hooked.
            for param in module.parameters():
                if not param.requires_grad:
                    self._param_to_grad_hook_handles.setdefault(  # type: ignore[no-untyped-call]
                        param, (_NoHook(), _NoHook())
                    )
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

        def _update_peak_stats(self, peak_state: Any) -> None:
            for device, snapshot in self._curr_mem_snap.items():
                if self._peak_mem.get(device, 0) < snapshot["Total"]:
                    self._peak_mem[device] = snapshot["Total"]
                    self._peak_mem_snap[device] = deepcopy(snapshot)

    return PeakTracker()


def _stay(module: Any, *_args: Any, **_kwargs: Any) -> Any:
    """Module.to for modules that are already where they are asked to go."""
    return module


def build(config: dict[str, Any], workload: Workload, *, fake: bool) -> tuple[Any, Any, Any]:
    """The model, its optimizer and a batch as the workload trains them (in the caller's mode:
    under FakeTensorMode for the dry run, on a CUDA default device for a real one)."""
    import torch
    import transformers.initialization as init
    from transformers import AutoConfig, AutoModelForCausalLM

    if workload.backend != "trl" or workload.algorithm != "sft":
        raise ValueError("the dry run covers TRL SFT")
    arch = Architecture.from_config(config)
    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    hf_config = AutoConfig.for_model(arch.model_type, **fields)
    hf_config.use_cache = False
    bf16 = workload.precision == "bf16"
    with init.no_init_weights():
        model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            hf_config,
            dtype=torch.bfloat16 if bf16 else torch.float32,
            attn_implementation="sdpa",
        )
    model.tie_weights()
    if workload.lora_rank is not None:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=workload.lora_rank,
            lora_alpha=2 * workload.lora_rank,
            lora_dropout=0.05,
            target_modules=workload.lora_targets,
            task_type="CAUSAL_LM",
        )
        if fake:
            # PEFT moves each new adapter to its layer's device, where everything already is:
            # a fake parameter cannot be swapped in place, so the moves are skipped.
            with patch.object(torch.nn.Module, "to", _stay):
                model = get_peft_model(model, lora)
        else:
            model = get_peft_model(model, lora)
    if workload.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if workload.lora_rank is not None:
            model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    ids = torch.randint(0, arch.vocab, (workload.micro_batch, workload.seq_len))
    return model, optimizer, ids


def step(model: Any, optimizer: Any, ids: Any, workload: Workload, device_type: str) -> None:
    """One training step: forward (bf16 autocast over float32 weights, or pure bf16), backward,
    the optimizer's step."""
    import torch

    bf16 = workload.precision == "bf16"
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=not bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    del loss
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def dry_run(config: dict[str, Any], workload: Workload) -> DryRun:
    """Measure one TRL step's peak memory per GPU for this config and workload."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    started = time.monotonic()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model, optimizer, ids = build(config, workload, fake=True)
        tracker = _tracker()
        tracker.track_external(model, optimizer)
        with tracker:
            for _ in range(2):
                step(model, optimizer, ids, workload, "cpu")
                tracker.reset_mod_stats()  # the device peak stays; the modules are walked again
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    breakdown = {str(kind).rsplit(".", 1)[-1].lower(): int(n) for kind, n in peak.items()}
    total = breakdown.pop("total")
    return DryRun(total, breakdown, time.monotonic() - started)
