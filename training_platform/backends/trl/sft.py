"""TRL supervised fine-tuning: spec -> LaunchPlan for training_platform.trainers.trl_train."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from training_platform.backends.base import LaunchContext, LaunchPlan, register
from training_platform.backends.trl.common import (
    CONFIG_FILE,
    TRAINER_MODULE,
    TrlParameters,
    trl_plan,
)

__all__ = ["CONFIG_FILE", "TRAINER_MODULE", "SftParameters", "TrlSft"]


class SftParameters(TrlParameters):
    """Hyperparameters of TRL SFT, with their limits."""

    max_length: int = Field(
        1024, ge=8, le=131_072, description="Tokens per example; longer ones are truncated."
    )
    assistant_only_loss: bool = Field(
        True,
        description="Learn only the assistant turns, as verl SFT does (the chat template needs "
        "{% generation %} markers, or one TRL ships a training template for); false: every "
        "token.",
    )


@register
class TrlSft:
    """SFT with TRL's SFTTrainer on CPU or one GPU."""

    backend: ClassVar[str] = "trl"
    graceful_stop: ClassVar[bool] = True
    algorithm: ClassVar[str] = "sft"
    description: ClassVar[str] = "Supervised fine-tuning with TRL (CPU or GPU)."
    requires_gpu: ClassVar[bool] = False
    data_task: ClassVar[str] = "sft"
    validates: ClassVar[bool] = True  # uses a validation split (job.validation)
    parameters: ClassVar[type[BaseModel]] = SftParameters

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The trainer's argv, environment and config file."""
        return trl_plan(
            backend=self.backend,
            algorithm=self.algorithm,
            data_task=self.data_task,
            hyperparameters=hyperparameters,
            context=context,
        )
