"""What every TRL pair shares: parameter blocks, the RL reward choice and the plan itself.

Every pair starts the same program, training_platform.trainers.trl_train, with a JSON config
that the trainer validates with its own models (tests/backends/test_trl_*.py hold the two in
step).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from training_platform.backends.base import LaunchContext, LaunchPlan
from training_platform.core.errors import InvalidInput

TRAINER_MODULE = "training_platform.trainers.trl_train"
CONFIG_FILE = "train_config.json"

# The functions of training_platform/rewards/builtin.py (a test holds the two lists equal);
# backends are pure and do not import it.
BUILTIN_REWARDS = ("exact_match", "format", "math_answer")
REWARD_FILE_PREFIX = "file:"
_REWARD_FILE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"

ModuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")]
ModuleNames = Annotated[list[ModuleName], Field(min_length=1, max_length=64)]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]


class LoraParameters(BaseModel):
    """A LoRA adapter: trains small low-rank matrices beside frozen weights."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, le=1024, description="Rank r of the low-rank update matrices.")
    alpha: int = Field(16, ge=1, le=4096, description="Scale of the update (alpha / rank).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: Literal["all-linear"] | ModuleNames = Field(
        "all-linear",
        description='Modules that get an adapter: "all-linear" or names such as "q_proj".',
    )


class TrlParameters(BaseModel):
    """Hyperparameters every TRL algorithm takes."""

    model_config = ConfigDict(extra="forbid")

    num_train_epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the dataset.")
    max_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Optimizer steps; overrides epochs when set."
    )
    learning_rate: float = Field(2e-5, gt=0, le=1, description="Peak learning rate.")
    per_device_train_batch_size: int = Field(
        8, ge=1, le=4096, description="Examples per forward pass."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Forward passes summed into one optimizer step."
    )
    warmup_steps: int = Field(
        0, ge=0, le=1_000_000, description="Steps of linear learning-rate warmup."
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    lr_scheduler_type: Scheduler = Field("linear", description="Learning-rate schedule.")
    logging_steps: int = Field(1, ge=1, le=1_000_000, description="Steps between metric records.")
    save_steps: int = Field(500, ge=1, le=10_000_000, description="Steps between checkpoints.")
    save_total_limit: int = Field(
        2, ge=1, le=1000, description="Checkpoints kept; older ones are deleted."
    )
    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="Seed of weights init, data order, sampling."
    )
    lora: LoraParameters | None = Field(
        None, description="Train a LoRA adapter instead of every weight; absent: full training."
    )
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute each layer's activations in the backward pass instead of "
        "keeping them: less memory, about a third more compute.",
    )

    # Several GPUs of one host run through `accelerate launch` (data parallel).
    max_gpus: ClassVar[int] = 8

    @model_validator(mode="after")
    def _gpus_it_can_use(self, info: ValidationInfo) -> TrlParameters:
        gpus = (info.context or {}).get("gpus", 0)
        if gpus > self.max_gpus:
            raise ValueError(
                f"this TRL algorithm uses at most {self.max_gpus} GPU(s) of one host; the job "
                f"asks for {gpus} (resources.gpus): ask for fewer, or use the verl backend"
            )
        return self


class RlParameters(TrlParameters):
    """Hyperparameters of the algorithms that learn from a reward on sampled completions."""

    reward: str = Field(
        "math_answer",
        description=(
            f"Reward function: a built-in ({', '.join(BUILTIN_REWARDS)}) "
            f"or {REWARD_FILE_PREFIX}<name> of an uploaded reward file."
        ),
        examples=[*BUILTIN_REWARDS, f"{REWARD_FILE_PREFIX}my_reward"],
    )
    max_completion_length: int = Field(
        256, ge=1, le=32_768, description="Most tokens sampled per completion."
    )
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of rollouts.")

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, value: str) -> str:
        if value in BUILTIN_REWARDS:
            return value
        if value.startswith(REWARD_FILE_PREFIX) and re.fullmatch(
            _REWARD_FILE_NAME, value[len(REWARD_FILE_PREFIX) :]
        ):
            return value
        raise ValueError(
            f"unknown reward {value!r}; built-in rewards: {', '.join(BUILTIN_REWARDS)}, "
            f"or {REWARD_FILE_PREFIX}<name> for an uploaded reward file"
        )


def group_size_fits(value: int, info: ValidationInfo, steps_default: int | None = None) -> int:
    """num_generations >= 2 and a divisor of the generation batch (TRL's own rule)."""
    if value < 2:
        raise ValueError(
            "must be at least 2: GRPO scores each completion against the others of its prompt"
        )
    data = info.data
    batch = data.get("per_device_train_batch_size")
    steps = data.get("steps_per_generation") or steps_default
    steps = steps or data.get("gradient_accumulation_steps")
    if batch is not None and steps is not None and (batch * steps) % value:
        raise ValueError(
            f"must divide the generation batch, per_device_train_batch_size x "
            f"steps_per_generation = {batch * steps}: every prompt needs a full group"
        )
    return value


def trl_plan(
    *,
    backend: str,
    algorithm: str,
    data_task: str,
    hyperparameters: BaseModel,
    context: LaunchContext,
) -> LaunchPlan:
    """The trainer's argv, environment and config file for one TRL run."""
    if context.dataset_format != data_task:
        raise InvalidInput(
            ("body", "dataset"),
            f"{backend}/{algorithm} needs {data_task} data, not {context.dataset_format}",
        )
    values: dict[str, Any] = hyperparameters.model_dump(exclude={"reward"})
    if values["max_steps"] is None:
        values["max_steps"] = -1
    config: dict[str, Any] = {
        "algorithm": algorithm,
        "model_path": context.model_path,
        "dataset_path": context.dataset_path,
        "dataset_format": context.dataset_format,
        **({"validation_path": context.validation_path} if context.validation_path else {}),
        "output_dir": context.run_dir,
        "metrics_path": f"{context.run_dir}/metrics.jsonl",
        "resume_from": context.resume_from,
        "hyperparameters": values,
    }
    if isinstance(hyperparameters, RlParameters):
        if not context.reward_path or not context.reward_function:
            raise InvalidInput(
                ("body", "hyperparameters", "reward"),
                f"{algorithm} needs a reward function; none was resolved for this job",
            )
        config["reward"] = {"path": context.reward_path, "function": context.reward_function}
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if context.model_is_local:
        env["HF_HUB_OFFLINE"] = "1"
    if context.devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in context.devices)
    # Spinning OpenMP threads fight each other (and the platform) on shared CPUs: a tiny
    # model trains 10-20x slower with two busy threads than with one.
    env["OMP_NUM_THREADS"] = str(context.cpu_threads)
    trainer = ("-m", TRAINER_MODULE, "--config", CONFIG_FILE)
    if context.gpus > 1 and not context.simulated_devices:
        # One process per leased GPU. Simulated GPUs are not there: one process, on CPU.
        argv: tuple[str, ...] = (
            context.python,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(context.gpus),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            *trainer,
        )
    else:
        argv = (context.python, *trainer)
    return LaunchPlan(
        backend=backend,
        algorithm=algorithm,
        argv=argv,
        env=env,
        files={CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True)},
    )
