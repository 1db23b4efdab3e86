"""TRL supervised fine-tuning: spec -> LaunchPlan for training_platform.trainers.trl_train."""

from __future__ import annotations

import json
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from training_platform.backends.base import LaunchContext, LaunchPlan, register

TRAINER_MODULE = "training_platform.trainers.trl_train"
CONFIG_FILE = "train_config.json"


class SftParameters(BaseModel):
    """Hyperparameters of TRL SFT, with their limits."""

    model_config = ConfigDict(extra="forbid")

    num_train_epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the dataset.")
    max_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Optimizer steps; overrides epochs when set."
    )
    learning_rate: float = Field(2e-5, gt=0, le=1, description="Peak learning rate.")
    per_device_train_batch_size: int = Field(8, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_length: int = Field(1024, ge=8, le=131_072, description="Tokens per example.")
    warmup_steps: int = Field(0, ge=0, le=1_000_000)
    weight_decay: float = Field(0.0, ge=0, le=1)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    logging_steps: int = Field(1, ge=1, le=1_000_000)
    save_steps: int = Field(500, ge=1, le=10_000_000)
    save_total_limit: int = Field(2, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    assistant_only_loss: bool = False
    lora_r: int = Field(0, ge=0, le=1024, description="LoRA rank; 0 trains all weights.")
    lora_alpha: int = Field(16, ge=1, le=4096)
    lora_dropout: float = Field(0.05, ge=0, lt=1)


@register
class TrlSft:
    """SFT with TRL's SFTTrainer on CPU or one GPU."""

    backend: ClassVar[str] = "trl"
    algorithm: ClassVar[str] = "sft"
    description: ClassVar[str] = "Supervised fine-tuning with TRL (CPU or GPU)."
    requires_gpu: ClassVar[bool] = False
    dataset_formats: ClassVar[tuple[str, ...]] = ("messages", "prompt_response")
    parameters: ClassVar[type[BaseModel]] = SftParameters

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The trainer's argv, environment and config file."""
        values = hyperparameters.model_dump()
        if values["max_steps"] is None:
            values["max_steps"] = -1
        config = {
            "algorithm": "sft",
            "model_path": context.model_path,
            "dataset_path": context.dataset_path,
            "dataset_format": context.dataset_format,
            "output_dir": context.run_dir,
            "metrics_path": f"{context.run_dir}/metrics.jsonl",
            "hyperparameters": values,
        }
        env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        if context.model_is_local:
            env["HF_HUB_OFFLINE"] = "1"
        if context.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in context.devices)
        # Spinning OpenMP threads fight each other (and the platform) on shared CPUs: a tiny
        # model trains 10-20x slower with two busy threads than with one.
        env["OMP_NUM_THREADS"] = str(context.cpu_threads)
        return LaunchPlan(
            backend=self.backend,
            algorithm=self.algorithm,
            argv=(context.python, "-m", TRAINER_MODULE, "--config", CONFIG_FILE),
            env=env,
            files={CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True)},
        )
