"""TRL direct preference optimization: spec -> LaunchPlan for trainers.trl_train."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from training_platform.backends.base import LaunchContext, LaunchPlan, register
from training_platform.backends.trl.common import TrlParameters, trl_plan

DpoLoss = Literal[
    "sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero"
]


class DpoParameters(TrlParameters):
    """Hyperparameters of TRL DPO, with their limits."""

    learning_rate: float = Field(1e-6, gt=0, le=1, description="Peak learning rate.")
    max_length: int = Field(
        1024, ge=8, le=131_072, description="Tokens of prompt plus answer; longer are truncated."
    )
    beta: float = Field(
        0.1, gt=0, le=100, description="Strength of the pull towards the reference model."
    )
    loss_type: DpoLoss = Field(
        "sigmoid", description="Preference loss: sigmoid is the DPO paper's; ipo, hinge, ..."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed share of flipped labels (robust loss)."
    )


@register
class TrlDpo:
    """DPO with TRL's DPOTrainer on CPU or one GPU."""

    backend: ClassVar[str] = "trl"
    graceful_stop: ClassVar[bool] = True
    algorithm: ClassVar[str] = "dpo"
    description: ClassVar[str] = "Direct preference optimization with TRL (CPU or GPU)."
    requires_gpu: ClassVar[bool] = False
    data_task: ClassVar[str] = "preference"
    validates: ClassVar[bool] = True  # uses a validation split (job.validation)
    parameters: ClassVar[type[BaseModel]] = DpoParameters

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The trainer's argv, environment and config file."""
        return trl_plan(
            backend=self.backend,
            algorithm=self.algorithm,
            data_task=self.data_task,
            hyperparameters=hyperparameters,
            context=context,
        )
