"""Hyperparameters of verl's RL algorithms (PPO, GRPO, GSPO), with their cross-field rules."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from training_platform.backends.base import KL_ESTIMATOR_TEXT, KlEstimator
from training_platform.backends.verl.common import (
    VerlCommon,
    field_error,
    gpus_of,
    refuse_on_cpu,
)

VLLM_MAX_LORA_RANK = 512  # the largest of vLLM's MaxLoRARanks, which verl checks against
REWARD_PATTERN = r"^(file:)?[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MICRO_BATCH_CHOICES = (4, 2, 1)  # 4 was the fixed default before; smaller when 4 does not divide


def batch_problems(
    *, train_batch_size: int, n: int, ppo_mini_batch_size: int, micro: int | None, gpus: int
) -> list[tuple[tuple[str, ...], str]]:
    """What verl's update loop would refuse at its first step, by field: the batch rules of
    its trainer (ActorConfig.validate, validate_config) and of its engine workers
    (train_mini_batch splits ppo_mini_batch_size x rollout.n over the data-parallel ranks,
    make_iterator cuts each rank's share of a step into mini batches, prepare_micro_batches cuts
    a mini batch into micro batches; each asserts an exact division). The FSDP actor, critic
    and reference are data parallel over every GPU of the job."""
    found: list[tuple[tuple[str, ...], str]] = []
    if ppo_mini_batch_size > train_batch_size:
        found.append(
            (("ppo_mini_batch_size",), f"must be at most train_batch_size ({train_batch_size})")
        )
    elif train_batch_size % ppo_mini_batch_size:
        found.append(
            (
                ("ppo_mini_batch_size",),
                f"must divide train_batch_size ({train_batch_size}): a step is cut into whole "
                "mini batches",
            )
        )
    if (train_batch_size * n) % gpus:
        found.append(
            (
                ("train_batch_size",),
                f"train_batch_size x rollout.n ({train_batch_size * n}) must be divisible by the "
                f"GPU count ({gpus})",
            )
        )
    mini = ppo_mini_batch_size * n
    if mini % gpus:
        found.append(
            (
                ("ppo_mini_batch_size",),
                f"ppo_mini_batch_size x rollout.n ({mini}) must be divisible by the GPU count "
                f"({gpus}): each GPU takes an equal share of a mini batch",
            )
        )
    elif micro is not None and (mini // gpus) % micro:
        found.append(
            (
                ("micro_batch_size_per_gpu",),
                f"must divide each GPU's share of a mini batch: ppo_mini_batch_size x rollout.n / "
                f"GPUs = {mini // gpus}",
            )
        )
    return found


def default_micro_batch(*, ppo_mini_batch_size: int, n: int, gpus: int) -> int:
    """The largest of MICRO_BATCH_CHOICES that divides each GPU's share of a mini batch."""
    share = ppo_mini_batch_size * n // gpus if (ppo_mini_batch_size * n) % gpus == 0 else 1
    return next(m for m in MICRO_BATCH_CHOICES if share % m == 0)


class RolloutOptions(BaseModel):
    """How responses are generated: the inference engine and its sampling."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["vllm", "sglang"] = Field("vllm", description="Inference engine for rollouts.")
    n: int = Field(1, ge=1, le=64, description="Responses sampled per prompt.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    tensor_model_parallel_size: int = Field(
        1, ge=1, le=64, description="GPUs one inference engine spans (divides the GPU count)."
    )
    gpu_memory_utilization: float = Field(
        0.5, gt=0, lt=1, description="Share of GPU memory the inference engine may take."
    )


class GroupRolloutOptions(RolloutOptions):
    """Rollouts for group-relative advantages: several responses per prompt."""

    n: int = Field(5, ge=2, le=64, description="Responses per prompt (a group; at least 2).")


class RlParameters(VerlCommon):
    """What PPO, GRPO and GSPO share."""

    device: Literal["gpu", "cpu"] = Field(
        "gpu",
        description="cpu: smoke test for tiny models, with gpus 0: a Ray of its own with one "
        "logical GPU, the actor on the CPU over gloo, rollouts by vLLM's CPU build (the "
        "host's vLLM environment). A proof of the platform's path, not a way to train.",
    )

    reward: str = Field(
        "math_answer",
        pattern=REWARD_PATTERN,
        description="Reward: a builtin name (math_answer, exact_match, format) or "
        "file:<uploaded file name>.",
    )
    actor_lr: float = Field(1e-6, gt=0, le=1, description="Policy learning rate.")
    train_batch_size: int = Field(64, ge=1, le=65_536, description="Prompts per training step.")
    ppo_mini_batch_size: int = Field(
        16, ge=1, le=65_536, description="Prompts per policy update within a step."
    )
    micro_batch_size_per_gpu: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Sequences per forward pass on one GPU (policy, critic, reference and "
        "rollout log-probs). It must divide each GPU's share of a mini batch "
        "(ppo_mini_batch_size x rollout.n / GPUs); default: the largest of "
        f"{', '.join(map(str, MICRO_BATCH_CHOICES))} that does.",
    )
    max_prompt_length: int = Field(512, ge=16, le=131_072, description="Prompt tokens (at most).")
    max_response_length: int = Field(
        512, ge=1, le=131_072, description="Generated tokens per response (at most)."
    )
    val_before_train: bool = Field(False, description="Validate once before the first step.")
    val_samples: int = Field(
        256, ge=1, le=1_000_000, description="Prompts drawn from the dataset for validation."
    )
    rollout: RolloutOptions = Field(
        default_factory=RolloutOptions, description="Response generation."
    )

    @model_validator(mode="after")
    def _fits_the_resources(self, info: ValidationInfo) -> Self:
        gpus = gpus_of(info)
        if self.device == "cpu":
            refuse_on_cpu(
                self,
                gpus,
                (
                    self.lora is not None,
                    ("lora",),
                    "the CPU smoke mode trains all weights",
                    self.lora,
                ),
                (
                    self.rollout.name != "vllm",
                    ("rollout", "name"),
                    "vLLM's CPU build is the CPU rollout",
                    self.rollout.name,
                ),
            )
            gpus = 1  # the run's Ray has one logical GPU: verl's batch rules see one
        elif gpus < 1:
            raise field_error(
                ("gpus",),
                "verl RL generates with vLLM or SGLang: ask for gpus >= 1, or set device "
                "'cpu' for the smoke test with a tiny model",
                gpus,
            )
        tp = self.rollout.tensor_model_parallel_size
        if tp > gpus or gpus % tp:
            raise field_error(
                ("rollout", "tensor_model_parallel_size"),
                f"must divide the {gpus} GPU(s) the job asks for",
                tp,
            )
        if (
            self.lora is not None
            and self.rollout.name == "vllm"
            and self.lora.rank > VLLM_MAX_LORA_RANK
        ):
            raise field_error(
                ("lora", "rank"),
                f"vLLM serves LoRA ranks up to {VLLM_MAX_LORA_RANK}",
                self.lora.rank,
            )
        if self.micro_batch_size_per_gpu is None:
            self.micro_batch_size_per_gpu = default_micro_batch(
                ppo_mini_batch_size=self.ppo_mini_batch_size, n=self.rollout.n, gpus=gpus
            )
        problems = batch_problems(
            train_batch_size=self.train_batch_size,
            n=self.rollout.n,
            ppo_mini_batch_size=self.ppo_mini_batch_size,
            micro=self.micro_batch_size_per_gpu,
            gpus=gpus,
        )
        if problems:
            loc, message = problems[0]
            raise field_error(loc, message, getattr(self, loc[0]))
        return self

    @property
    def micro(self) -> int:
        """micro_batch_size_per_gpu, filled in by validation."""
        assert self.micro_batch_size_per_gpu is not None
        return self.micro_batch_size_per_gpu


class KlOptions(BaseModel):
    """KL to the frozen reference policy, as a reward penalty and/or a loss term."""

    kl_coef: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Per-token KL penalty subtracted from the reward (verl use_kl_in_reward); "
        "0: off.",
    )
    kl_loss_coef: float = Field(
        0.0, ge=0, le=10, description="Weight of a KL loss term on the policy (verl use_kl_loss)."
    )
    kl_estimator: KlEstimator = Field("k1", description=KL_ESTIMATOR_TEXT)

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0 or self.kl_loss_coef > 0


class PpoParameters(RlParameters, KlOptions):
    """PPO: GAE advantages from a critic trained beside the policy."""

    kl_coef: float = Field(
        0.05,
        ge=0,
        le=10,
        description="Per-token KL penalty subtracted from the reward (verl use_kl_in_reward; "
        "the TRL backend's PPO default too); 0: off.",
    )
    critic_lr: float = Field(1e-5, gt=0, le=1, description="Critic learning rate.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor.")
    lam: float = Field(1.0, ge=0, le=1, description="GAE lambda.")


class GrpoParameters(RlParameters, KlOptions):
    """GRPO: group-relative advantages, KL to the reference policy as a loss term."""

    rollout: GroupRolloutOptions = Field(
        default_factory=GroupRolloutOptions, description="Response generation (groups)."
    )
    kl_loss_coef: float = Field(
        0.001, ge=0, le=10, description="Weight of the KL loss term (verl use_kl_loss); 0: off."
    )
    kl_estimator: KlEstimator = Field("low_var_kl", description=KL_ESTIMATOR_TEXT)


class GspoParameters(RlParameters):
    """GSPO: GRPO with sequence-level importance ratios and tight clipping, no KL loss."""

    rollout: GroupRolloutOptions = Field(
        default_factory=GroupRolloutOptions, description="Response generation (groups)."
    )
    clip_ratio_low: float = Field(3e-4, gt=0, le=1, description="Lower clip of the ratio.")
    clip_ratio_high: float = Field(4e-4, gt=0, le=1, description="Upper clip of the ratio.")
