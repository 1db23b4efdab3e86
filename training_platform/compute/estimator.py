"""The analytic tier: a job's peak memory per GPU from the model's config.json alone.

TRL (SFT, DPO) as the platform runs it: weights loaded in float32 (TRL's default), bf16
autocast on the GPU, fused AdamW on the trainable parameters, data parallel over the job's GPUs
(accelerate's DDP, which keeps a bucket copy of the gradients). A step passes through three
states, and the peak is the largest:
- the end of the forward pass: weights, optimizer state (from the second step on), the bf16
  copies of the weights that autocast keeps for the backward pass, the saved activations and the
  logits with their float32 log-softmax;
- the start of the backward pass: the same with the loss's gradient over the logits;
- the end of the backward pass: weights, optimizer state and every gradient, and for tied
  embeddings two more copies of the embedding's gradient (the head's share waits for the
  embedding's before they are summed);
- the optimizer step: weights, gradients and optimizer state.

Saved activations per token and layer are those of the Hugging Face decoder layer under bf16
autocast with float32 weights, measured on the dry run of one-layer shapes and fitted
(ACTIVATION; tests/compute holds the fit to the dry run of whole 0.5B-8B models): with gradient
checkpointing a layer keeps its float32 input only, and one layer's activations live again while
it is recomputed.

verl (PPO, GRPO, GSPO; SFT) runs FSDP: float32 master weights, gradients and Adam state sharded
over the GPUs, the reference in bf16 (sharded), a critic for PPO like the actor; the rollout's
vLLM holds `gpu_memory_utilization` of the device's total memory (vLLM >= 0.7) for its weights
and KV cache while it generates, and sleeps (frees it) while the actor trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from training_platform.compute.architecture import Architecture

Algorithm = Literal["sft", "dpo", "ppo", "grpo", "gspo"]
Backend = Literal["trl", "verl"]
MIB = 2**20

# Saved bytes per token of one decoder layer, bf16 autocast over float32 weights, by width:
# hidden, intermediate (MLP), query width (heads x head_dim), key/value width. Fitted to the
# dry run of nine one-layer shapes (compute/calibrate.py); within 2% of each.
ACTIVATION = {"hidden": 27.2, "intermediate": 8.0, "query": 9.3, "key_value": 1.8}
CHECKPOINTED_PER_TOKEN = 4  # a checkpointed layer keeps its float32 input (x hidden)
# A LoRA-adapted linear additionally keeps its dropout's output and mask and the low-rank
# activation, per unit of the linear's input width.
LORA_PER_INPUT = 3.9
# The CUDA context and the allocator's rounding: what a device reading adds to the tensors.
CUDA_CONTEXT_MB = 600
FRAGMENTATION = 0.05


@dataclass(frozen=True)
class Workload:
    """What a job asks of each GPU: algorithm, batch, lengths, method and parallelism."""

    algorithm: Algorithm
    backend: Backend = "trl"
    micro_batch: int = 1
    seq_len: int = 1024
    lora_rank: int | None = None
    lora_targets: str | list[str] = "all-linear"
    gradient_checkpointing: bool = True
    gpus: int = 1
    # verl
    param_offload: bool = False
    optimizer_offload: bool = False
    rollout_tp: int = 1
    gpu_memory_utilization: float = 0.5
    gpu_memory_mb: int | None = None

    @property
    def lora(self) -> bool:
        return self.lora_rank is not None


@dataclass(frozen=True)
class Estimate:
    """Peak bytes per GPU, with its parts and the phase that sets it."""

    peak_bytes: int
    breakdown: dict[str, int]
    phase: str
    device_mb: int  # what a device reading (nvidia-smi) would show: context and rounding added
    basis: list[str] = field(default_factory=list)

    @property
    def peak_mb(self) -> int:
        return -(-self.peak_bytes // MIB)


def layer_activation_bytes(arch: Architecture, tokens: int, workload: Workload) -> int:
    """What one un-checkpointed layer saves for its backward pass."""
    per_token = (
        ACTIVATION["hidden"] * arch.hidden
        + ACTIVATION["intermediate"] * arch.intermediate
        + ACTIVATION["query"] * arch.q_width
        + ACTIVATION["key_value"] * arch.kv_width
    )
    if workload.lora:
        per_token += LORA_PER_INPUT * arch.lora_inputs(workload.lora_targets)
    return int(per_token * tokens)


def _trl(arch: Architecture, workload: Workload) -> Estimate:
    params = arch.parameters
    trainable = (
        arch.lora_parameters(workload.lora_rank, workload.lora_targets)
        if workload.lora_rank is not None
        else params
    )
    rows = workload.micro_batch * (2 if workload.algorithm == "dpo" else 1)
    tokens = rows * workload.seq_len
    weights = 4 * params
    if workload.algorithm == "dpo" and not workload.lora:
        weights += 4 * params  # the reference model, a float32 copy (LoRA disables the adapter)
    gradients = 4 * trainable
    optimizer = 8 * trainable
    # autocast's bf16 copies of the weights, saved for the backward pass: every layer's, or
    # one layer's at a time when the layers are recomputed; the head's always.
    layer_copies = 2 * arch.layer_linear_parameters
    head_copy = 2 * arch.vocab * arch.hidden
    one_layer = layer_activation_bytes(arch, tokens, workload)
    if workload.gradient_checkpointing:
        copies = layer_copies + head_copy
        activations = arch.layers * CHECKPOINTED_PER_TOKEN * arch.hidden * tokens + one_layer
    else:
        copies = arch.layers * layer_copies + head_copy
        activations = arch.layers * one_layer
    activations += 14 * arch.hidden * tokens  # final norm and the head's input
    logits_forward = 6 * tokens * arch.vocab  # bf16 logits, float32 log-softmax
    logits_backward = 10 * tokens * arch.vocab  # with the float32 gradient flowing back
    buffers = 4 * trainable if workload.gpus > 1 else 0  # DDP's gradient buckets
    # Full training: the head's weight gradient exists from the start of the backward pass.
    head_gradient = 0 if workload.lora else 4 * arch.vocab * arch.hidden
    tied_sum = 2 * head_gradient if arch.tied else 0
    forward = weights + optimizer + copies + activations + logits_forward
    backward = (
        weights + optimizer + copies + activations + logits_backward + head_gradient + buffers
    )
    end = weights + gradients + optimizer + tied_sum + buffers
    step = weights + gradients + optimizer + buffers
    phases = {
        "forward": forward,
        "backward": backward,
        "end of backward": end,
        "optimizer step": step,
    }
    phase = max(phases, key=lambda name: phases[name])
    late = phase in ("end of backward", "optimizer step")
    breakdown = {
        "weights": weights,
        "gradients": (gradients if late else 0)
        + (tied_sum if phase == "end of backward" else 0)
        + (head_gradient if phase == "backward" else 0),
        "optimizer": optimizer,
        "weight_copies": 0 if late else copies,
        "activations": 0 if late else activations,
        "logits": {"forward": logits_forward, "backward": logits_backward}.get(phase, 0),
        "kv_cache": 0,
        "buffers": buffers if phase != "forward" else 0,
    }
    basis = [
        f"{arch.describe()}",
        f"{'LoRA r=' + str(workload.lora_rank) if workload.lora else 'full'} training: "
        f"{trainable / 1e6:.1f}M trainable parameters, float32 weights (TRL's default), "
        "bf16 autocast, fused AdamW",
        f"{rows} row(s) x {workload.seq_len} tokens per forward pass, gradient checkpointing "
        f"{'on' if workload.gradient_checkpointing else 'off'}",
    ]
    if workload.algorithm == "dpo":
        basis.append("DPO: chosen and rejected rows together, a reference forward without grad")
    if workload.gpus > 1:
        basis.append(f"DDP over {workload.gpus} GPUs: a gradient bucket copy per GPU")
    return _finish(sum(breakdown.values()), breakdown, phase, basis)


def _finish(peak: int, breakdown: dict[str, int], phase: str, basis: list[str]) -> Estimate:
    device = int(peak * (1 + FRAGMENTATION) / MIB) + CUDA_CONTEXT_MB
    return Estimate(peak, breakdown, phase, device, basis)


def _verl(arch: Architecture, workload: Workload) -> Estimate:
    """FSDP actor (and critic for PPO), bf16 reference, and the rollout's vLLM share."""
    n = max(workload.gpus, 1)
    params = arch.parameters
    trainable = (
        arch.lora_parameters(workload.lora_rank, workload.lora_targets)
        if workload.lora_rank is not None
        else params
    )
    master = 0 if workload.param_offload else 4 * params // n
    gradients = 4 * trainable // n
    optimizer = 0 if workload.optimizer_offload else 8 * trainable // n
    tokens = workload.micro_batch * workload.seq_len
    # FSDP gathers one layer's bf16 weights at a time (and prefetches the next one)
    gathered = 2 * 2 * arch.layer_parameters + 2 * arch.vocab * arch.hidden
    if workload.gradient_checkpointing:
        activations = arch.layers * 2 * arch.hidden * tokens
        activations += layer_activation_bytes(arch, tokens, workload) // 2
    else:
        activations = arch.layers * layer_activation_bytes(arch, tokens, workload) // 2
    logits = 8 * tokens * arch.vocab  # bf16 logits, float32 log-probs and their gradient
    critic = 0
    if workload.algorithm == "ppo":
        critic = master + gradients + optimizer  # same size as the actor, a value head
    reference = 0 if workload.algorithm == "sft" or workload.lora else 2 * params // n
    train = master + gradients + optimizer + critic + reference + gathered + activations + logits
    breakdown = {
        "weights": master + reference + gathered + (critic // 4 if critic else 0),
        "gradients": gradients + (critic // 4 if critic else 0),
        "optimizer": optimizer + (critic // 2 if critic else 0),
        "activations": activations,
        "logits": logits,
        "kv_cache": 0,
        "buffers": 0,
    }
    basis = [
        arch.describe(),
        f"FSDP over {n} GPU(s): float32 master weights, gradients and Adam state sharded"
        + (", parameters offloaded" if workload.param_offload else "")
        + (", optimizer offloaded" if workload.optimizer_offload else ""),
        f"{workload.micro_batch} row(s) x {workload.seq_len} tokens per micro batch",
    ]
    phase = "training"
    if workload.algorithm != "sft":
        total = (workload.gpu_memory_mb or 0) * MIB
        rollout_share = int(workload.gpu_memory_utilization * total)
        # While vLLM generates, the actor's states stay (unless offloaded) beside its share.
        resident = master + optimizer + critic + reference
        rollout = resident + rollout_share
        basis.append(
            f"rollout: vLLM holds gpu_memory_utilization {workload.gpu_memory_utilization:g} of "
            f"the GPU's {total // MIB} MB (weights and KV cache, tensor parallel "
            f"{workload.rollout_tp}) while generating"
            if total
            else "rollout: the GPU's memory is unknown, its vLLM share is not counted"
        )
        if rollout > train:
            phase = "rollout"
            weights_in_share = 2 * params // max(workload.rollout_tp, 1)
            breakdown = {
                "weights": master + reference + min(weights_in_share, rollout_share),
                "gradients": 0,
                "optimizer": optimizer + (critic // 2 if critic else 0),
                "activations": 0,
                "logits": 0,
                "kv_cache": max(rollout_share - weights_in_share, 0),
                "buffers": critic - critic // 2 if critic else 0,
            }
    return _finish(sum(breakdown.values()), breakdown, phase, basis)


def estimate(arch: Architecture, workload: Workload) -> Estimate:
    """Peak memory per GPU of this workload on this architecture."""
    if workload.backend == "trl" and workload.algorithm in ("sft", "dpo"):
        return _trl(arch, workload)
    if workload.backend == "verl":
        return _verl(arch, workload)
    # TRL's online RL (GRPO, PPO) generates with the policy itself: sized as SFT of the prompt
    # and completion, a lower bound.
    sized = _trl(arch, replace(workload, algorithm="sft"))
    return replace(sized, basis=[*sized.basis, "TRL online RL sized as SFT: a lower bound"])
