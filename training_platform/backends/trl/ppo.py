"""PPO on the platform's own trainer (trainers/ppo.py): spec -> LaunchPlan for trl_train."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from training_platform.backends.base import (
    KL_ESTIMATOR_TEXT,
    KlEstimator,
    LaunchContext,
    LaunchPlan,
    register,
)
from training_platform.backends.trl.common import RlParameters, trl_plan


class PpoParameters(RlParameters):
    """Hyperparameters of PPO, with their limits."""

    # The platform's own PPO (trainers/ppo.py) is one process: it uses one GPU.
    max_gpus: ClassVar[int] = 1

    learning_rate: float = Field(3e-6, gt=0, le=1, description="Peak learning rate.")
    per_device_train_batch_size: int = Field(
        8, ge=1, le=4096, description="Prompts per forward pass (one completion each)."
    )
    kl_coef: float = Field(
        0.05,
        ge=0,
        le=10,
        description="Per-token KL penalty towards the reference model, in the reward; 0: off.",
    )
    kl_loss_coef: float = Field(
        0.0, ge=0, le=10, description="Weight of a KL loss term on the policy; 0: off."
    )
    kl_estimator: KlEstimator = Field("k1", description=KL_ESTIMATOR_TEXT)
    cliprange: float = Field(0.2, gt=0, le=10, description="Clip range of the policy ratio.")
    cliprange_value: float = Field(
        0.2, gt=0, le=100, description="Clip range of the value prediction."
    )
    vf_coef: float = Field(0.1, gt=0, le=100, description="Weight of the value loss.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount factor over tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    ppo_epochs: int = Field(4, ge=1, le=64, description="Passes over each rollout batch.")
    num_mini_batches: int = Field(
        1, ge=1, le=1024, description="Optimizer steps per pass over a rollout batch."
    )
    whiten_rewards: bool = Field(False, description="Normalize per-token rewards per batch.")
    max_grad_norm: float = Field(1.0, gt=0, le=1000, description="Gradient clipping norm.")


@register
class TrlPpo:
    """PPO with a value head, on the TRL training environment (CPU or one GPU)."""

    backend: ClassVar[str] = "trl"
    graceful_stop: ClassVar[bool] = True
    algorithm: ClassVar[str] = "ppo"
    description: ClassVar[str] = (
        "Proximal policy optimization with a value head; the platform's own trainer, as TRL "
        "has no PPO since 1.13 (CPU or GPU)."
    )
    requires_gpu: ClassVar[bool] = False
    data_task: ClassVar[str] = "rl"
    parameters: ClassVar[type[BaseModel]] = PpoParameters

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The trainer's argv, environment and config file."""
        return trl_plan(
            backend=self.backend,
            algorithm=self.algorithm,
            data_task=self.data_task,
            hyperparameters=hyperparameters,
            context=context,
        )
