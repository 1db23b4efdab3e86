"""TRL GRPO and GSPO (its sequence-level variant): spec -> LaunchPlan for trainers.trl_train."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from training_platform.backends.base import LaunchContext, LaunchPlan, register
from training_platform.backends.trl.common import RlParameters, group_size_fits, trl_plan


class _GroupParameters(RlParameters):
    """What GRPO and GSPO share: groups of completions per prompt."""

    learning_rate: float = Field(1e-6, gt=0, le=1, description="Peak learning rate.")
    per_device_train_batch_size: int = Field(
        8, ge=1, le=4096, description="Completions (not prompts) per forward pass."
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of rollouts.")
    num_iterations: int = Field(
        1, ge=1, le=64, description="Updates per generated batch (mu in the GRPO paper)."
    )
    steps_per_generation: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Optimizer steps per generated batch; unset: gradient_accumulation_steps.",
    )
    # Declared last so the batch fields it is checked against are validated before it.
    num_generations: int = Field(
        4,
        le=256,
        description="Completions sampled per prompt (at least 2); must divide the batch.",
        json_schema_extra={"minimum": 2},
    )

    @field_validator("num_generations")
    @classmethod
    def _group_size(cls, value: int, info: ValidationInfo) -> int:
        return group_size_fits(value, info)


class GrpoParameters(_GroupParameters):
    """Hyperparameters of TRL GRPO, with their limits."""

    beta: float = Field(
        0.0, ge=0, le=10, description="KL penalty towards the reference model; 0 loads none."
    )
    epsilon: float = Field(0.2, gt=0, le=10, description="Clip range of the policy ratio.")
    epsilon_high: float | None = Field(
        None, gt=0, le=10, description="Upper clip range (DAPO: 0.28); unset: epsilon."
    )
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        "dapo", description="How token losses are averaged (dapo avoids length bias)."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the reward std of the group, batch, or not."
    )


class GspoParameters(_GroupParameters):
    """Hyperparameters of GSPO: sequence-level ratios, a tight clip range and no KL term."""

    epsilon: float = Field(3e-4, gt=0, le=1, description="Lower clip range of the sequence ratio.")
    epsilon_high: float = Field(
        4e-4, gt=0, le=1, description="Upper clip range of the sequence ratio."
    )
    steps_per_generation: int | None = Field(
        4,
        ge=1,
        le=1024,
        description="Optimizer steps per generated batch (the GSPO paper: 4, off-policy).",
    )


class _GroupPlanner:
    backend: ClassVar[str] = "trl"
    graceful_stop: ClassVar[bool] = True
    algorithm: ClassVar[str]
    requires_gpu: ClassVar[bool] = False
    data_task: ClassVar[str] = "rl"

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The trainer's argv, environment and config file."""
        return trl_plan(
            backend=self.backend,
            algorithm=self.algorithm,
            data_task=self.data_task,
            hyperparameters=hyperparameters,
            context=context,
        )


@register
class TrlGrpo(_GroupPlanner):
    """GRPO with TRL's GRPOTrainer on CPU or one GPU."""

    algorithm: ClassVar[str] = "grpo"
    description: ClassVar[str] = "Group relative policy optimization with TRL (CPU or GPU)."
    parameters: ClassVar[type[BaseModel]] = GrpoParameters


@register
class TrlGspo(_GroupPlanner):
    """GSPO: TRL's GRPOTrainer with importance_sampling_level="sequence"."""

    algorithm: ClassVar[str] = "gspo"
    description: ClassVar[str] = "Group sequence policy optimization with TRL (CPU or GPU)."
    parameters: ClassVar[type[BaseModel]] = GspoParameters
