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
A pure-bf16 workload (weights, gradients and AdamW state in bf16, no autocast), how
torchtune, LitGPT and PEFT's benchmarks run, has its own coefficients: the published-peaks
regression set (calibrate.published) is in that precision. Under gradient checkpointing the
layer being recomputed lives in the backward pass only.

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
# "mixed": float32 weights, bf16 autocast (TRL's default load); "bf16": weights, gradients and
# AdamW state in bf16, no autocast (torchtune's and LitGPT's default; a model loaded in bf16).
Precision = Literal["mixed", "bf16"]
MIB = 2**20

# Saved bytes per token of one decoder layer, bf16 autocast over float32 weights, by width:
# hidden, intermediate (MLP), query width (heads x head_dim), key/value width. Fitted to the
# dry run of nine one-layer shapes (compute/calibrate.py); within 2% of each.
ACTIVATION = {"hidden": 27.2, "intermediate": 8.0, "query": 9.3, "key_value": 1.8}
# The same in pure bf16, fitted the same way (compute/calibrate.py `fit`).
ACTIVATION_BF16 = {"hidden": 18.9, "intermediate": 7.6, "query": 6.5, "key_value": 1.4}
# A checkpointed layer keeps its input (x hidden): float32 in mixed precision, bf16 in pure.
CHECKPOINTED_PER_TOKEN = {"mixed": 4, "bf16": 2}
HEAD_INPUT_BF16 = 4  # the final norm's and the head's saved input per token (x hidden)
# A LoRA-adapted linear additionally keeps its dropout's output and mask and the low-rank
# activation, per unit of the linear's input width.
LORA_PER_INPUT = 3.9
# Under a bf16 base PEFT keeps the adapters in float32 and casts each adapted input up.
LORA_PER_INPUT_BF16 = 6.6
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
    precision: Precision = "mixed"
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
    fit = ACTIVATION_BF16 if workload.precision == "bf16" else ACTIVATION
    per_token = (
        fit["hidden"] * arch.hidden
        + fit["intermediate"] * arch.intermediate
        + fit["query"] * arch.q_width
        + fit["key_value"] * arch.kv_width
    )
    if workload.lora:
        lora = LORA_PER_INPUT_BF16 if workload.precision == "bf16" else LORA_PER_INPUT
        per_token += lora * arch.lora_inputs(workload.lora_targets)
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
    bf16 = workload.precision == "bf16"
    width = 2 if bf16 else 4  # bytes of a weight, a gradient, an Adam moment
    # LoRA's adapters stay float32 under a bf16 base (PEFT's autocast_adapter_dtype)
    state = 4 if workload.lora else width
    weights = width * params
    if workload.algorithm == "dpo" and not workload.lora:
        weights += width * params  # the reference model, a copy (LoRA disables the adapter)
    gradients = state * trainable
    optimizer = 2 * state * trainable
    # autocast's bf16 copies of the weights, saved for the backward pass: every layer's, or
    # one layer's at a time when the layers are recomputed; the head's always. None in pure bf16.
    layer_copies = 0 if bf16 else 2 * arch.layer_linear_parameters
    head_copy = 0 if bf16 else 2 * arch.vocab * arch.hidden
    one_layer = layer_activation_bytes(arch, tokens, workload)
    if workload.gradient_checkpointing:
        copies = layer_copies + head_copy
        kept = CHECKPOINTED_PER_TOKEN[workload.precision]
        activations = arch.layers * kept * arch.hidden * tokens
        recompute = one_layer  # alive in the backward pass only
    else:
        copies = arch.layers * layer_copies + head_copy
        activations = arch.layers * one_layer
        recompute = 0
    # the final norm and the head's input
    activations += (HEAD_INPUT_BF16 if bf16 else 14) * arch.hidden * tokens
    # bf16 logits and the loss's float32 log-softmax; in pure bf16 the logits are saved twice
    # and upcast beside the log-softmax. The backward pass adds the float32 gradient.
    logits_forward = (12 if bf16 else 6) * tokens * arch.vocab
    logits_backward = 10 * tokens * arch.vocab
    buffers = 4 * trainable if workload.gpus > 1 else 0  # DDP's gradient buckets
    # Full training: the head's weight gradient exists from the start of the backward pass.
    head_gradient = 0 if workload.lora else width * arch.vocab * arch.hidden
    tied_sum = 2 * head_gradient if arch.tied else 0
    forward = weights + optimizer + copies + activations + logits_forward
    backward = (
        weights
        + optimizer
        + copies
        + activations
        + recompute
        + logits_backward
        + head_gradient
        + buffers
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
        "activations": 0 if late else activations + (recompute if phase == "backward" else 0),
        "logits": {"forward": logits_forward, "backward": logits_backward}.get(phase, 0),
        "kv_cache": 0,
        "buffers": buffers if phase != "forward" else 0,
    }
    basis = [
        f"{arch.describe()}",
        f"{'LoRA r=' + str(workload.lora_rank) if workload.lora else 'full'} training: "
        f"{trainable / 1e6:.1f}M trainable parameters, "
        + (
            "weights, gradients and AdamW state in bf16"
            if bf16
            else "float32 weights (TRL's default), bf16 autocast, fused AdamW"
        ),
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
