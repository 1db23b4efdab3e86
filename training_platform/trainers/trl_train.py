"""Run one training job: `python -m training_platform.trainers.trl_train --config PATH`.

A launch plan starts this program in its own process. SFT, DPO, GRPO and GSPO run on TRL's
trainers; PPO runs on the platform's own small implementation (training_platform.trainers.ppo),
because TRL 1.13+ has none. Everything it writes lands under the config's `output_dir`
(checkpoints/, model/, cache/, heartbeat) plus the `metrics_path` file, whose records are
described in `training_platform.trainers.progress`. Exit status: 0 when the final model is saved,
1 when the run fails (traceback on stderr), 2 when the config cannot start a run (one line on
stderr). stdout carries human-readable progress lines for the job log.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from training_platform.trainers.lean import skip_unused_imports

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_STOPPED = 75  # runners.launcher.EXIT_STOPPED: checkpoint saved, stopped on request

# Read once by the Hugging Face libraries at import, so they are set before the first import.
HF_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # model_path is a local directory by contract; never wait on a hub
    # Carriage-return progress bars garble the job log; the progress callback prints step lines.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}

# Dataset file suffix -> the `datasets` builder that reads it.
DATASET_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}

# Columns each data task's prepared file must have (training_platform/backends/base.py).
DATA_TASK_COLUMNS = {
    "sft": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "rl": ("data_source", "prompt", "reward_model"),
}
# What the RL trainers read of an rl row: the prompt, and what the reward function is given.
RL_COLUMNS = ("prompt", "data_source", "reward_model", "extra_info")


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def _dataset_file(path: Path) -> Path:
    if path.suffix not in DATASET_BUILDERS:
        raise ValueError(f"must end with one of {', '.join(DATASET_BUILDERS)}")
    return path


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
DatasetPath = Annotated[Path, AfterValidator(_absolute), AfterValidator(_dataset_file)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LoraSettings(_Strict):
    """A LoRA adapter instead of full fine-tuning."""

    rank: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | tuple[str, ...] = "all-linear"


class Hyperparameters(_Strict):
    """Training knobs shared by every algorithm; each has a default."""

    # -1 trains for num_train_epochs; a positive value stops after that many optimizer steps
    # (PPO: rollout batches).
    max_steps: int = Field(default=30, ge=-1)
    num_train_epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    per_device_train_batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    # Schedulers that need no extra arguments.
    lr_scheduler_type: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    ] = "linear"
    logging_steps: int = Field(default=1, gt=0)
    save_steps: int = Field(default=10, gt=0)
    save_total_limit: int | None = Field(default=2, gt=0)
    seed: int = Field(default=0, ge=0)
    gradient_checkpointing: bool = True
    lora: LoraSettings | None = None

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (train for num_train_epochs) or a positive step count")
        return value


class SftHyperparameters(Hyperparameters):
    """SFT: next-token loss on the assistant turns of the conversations (on every token with
    assistant_only_loss false)."""

    max_length: int = Field(default=128, gt=0)
    assistant_only_loss: bool = True


class DpoHyperparameters(Hyperparameters):
    """DPO: preference loss against a frozen reference model."""

    max_length: int = Field(default=128, gt=0)
    beta: float = Field(default=0.1, gt=0)
    loss_type: Literal[
        "sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero"
    ] = "sigmoid"
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)


class _SamplingHyperparameters(Hyperparameters):
    """Rollout settings shared by the RL algorithms."""

    max_completion_length: int = Field(default=32, gt=0)
    temperature: float = Field(default=1.0, gt=0)


def _groups_fit(value: int, batch: int, steps: int) -> int:
    if value < 2:
        raise ValueError("must be at least 2: each completion is judged against its group")
    if (batch * steps) % value:
        raise ValueError(
            "must divide the generation batch "
            f"(per_device_train_batch_size x steps = {batch * steps})"
        )
    return value


class _GroupHyperparameters(_SamplingHyperparameters):
    """What GRPO and GSPO share: groups of num_generations completions per prompt."""

    top_p: float = Field(default=1.0, gt=0, le=1)
    num_iterations: int = Field(default=1, gt=0)
    steps_per_generation: int | None = Field(default=None, gt=0)
    # After the batch fields, so that they are validated before it is checked against them.
    num_generations: int = Field(default=4)

    @field_validator("num_generations")
    @classmethod
    def _groups(cls, value: int, info: ValidationInfo) -> int:
        data = info.data
        steps = data.get("steps_per_generation") or data.get("gradient_accumulation_steps", 1)
        return _groups_fit(value, data.get("per_device_train_batch_size", value), steps)


class GrpoHyperparameters(_GroupHyperparameters):
    """GRPO: group-relative advantages over num_generations completions per prompt."""

    beta: float = Field(default=0.0, ge=0)
    epsilon: float = Field(default=0.2, gt=0)
    epsilon_high: float | None = Field(default=None, gt=0)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"


class GspoHyperparameters(_GroupHyperparameters):
    """GSPO: GRPO with sequence-level importance ratios, a tight clip range and no KL term."""

    # Off-policy steps are where sequence-level clipping differs from GRPO (TRL's GSPO recipe).
    steps_per_generation: int | None = Field(default=4, gt=0)
    epsilon: float = Field(default=3e-4, gt=0)
    epsilon_high: float = Field(default=4e-4, gt=0)


class PpoHyperparameters(_SamplingHyperparameters):
    """PPO: clipped policy loss with a learned value head and a KL penalty in the reward."""

    kl_coef: float = Field(default=0.05, ge=0)
    kl_loss_coef: float = Field(default=0.0, ge=0)
    kl_estimator: Literal["k1", "k2", "k3", "low_var_kl"] = "k1"
    cliprange: float = Field(default=0.2, gt=0)
    cliprange_value: float = Field(default=0.2, gt=0)
    vf_coef: float = Field(default=0.1, gt=0)
    gamma: float = Field(default=1.0, gt=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1)
    ppo_epochs: int = Field(default=4, gt=0)
    num_mini_batches: int = Field(default=1, gt=0)
    whiten_rewards: bool = False
    max_grad_norm: float = Field(default=1.0, gt=0)


class RewardSettings(_Strict):
    """Where the reward function lives: a Python file and a function name in it."""

    path: AbsolutePath
    function: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class _RunConfig(_Strict):
    model_path: AbsolutePath
    dataset_path: DatasetPath
    # The held-out rows of a validation split (TRL SFT and DPO evaluate on them as they train).
    validation_path: DatasetPath | None = None
    output_dir: AbsolutePath
    metrics_path: AbsolutePath
    # A checkpoint directory of an earlier run: training continues from its global step.
    resume_from: AbsolutePath | None = None


class SftConfig(_RunConfig):
    """Config of an SFT run."""

    algorithm: Literal["sft"]
    dataset_format: Literal["sft"]
    hyperparameters: SftHyperparameters = Field(default_factory=SftHyperparameters)


class DpoConfig(_RunConfig):
    """Config of a DPO run."""

    algorithm: Literal["dpo"]
    dataset_format: Literal["preference"]
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class GrpoConfig(_RunConfig):
    """Config of a GRPO run."""

    algorithm: Literal["grpo"]
    dataset_format: Literal["rl"]
    reward: RewardSettings
    hyperparameters: GrpoHyperparameters = Field(default_factory=GrpoHyperparameters)


class GspoConfig(_RunConfig):
    """Config of a GSPO run."""

    algorithm: Literal["gspo"]
    dataset_format: Literal["rl"]
    reward: RewardSettings
    hyperparameters: GspoHyperparameters = Field(default_factory=GspoHyperparameters)


class PpoConfig(_RunConfig):
    """Config of a PPO run."""

    algorithm: Literal["ppo"]
    dataset_format: Literal["rl"]
    reward: RewardSettings
    hyperparameters: PpoHyperparameters = Field(default_factory=PpoHyperparameters)


TrainConfig = Annotated[
    SftConfig | DpoConfig | GrpoConfig | GspoConfig | PpoConfig, Field(discriminator="algorithm")
]
TRAIN_CONFIG: TypeAdapter[TrainConfig] = TypeAdapter(TrainConfig)
ALGORITHMS = ("sft", "dpo", "grpo", "gspo", "ppo")


class ConfigError(Exception):
    """The config cannot start a run; the message fits on one line."""


def _describe(error: ValidationError) -> str:
    problems = []
    for problem in error.errors():
        loc = list(problem["loc"])
        # The union member's tag leads every location; the config file has no such level.
        if loc and loc[0] in ALGORITHMS:
            loc = loc[1:]
        if problem["type"] == "union_tag_invalid":
            loc = ["algorithm"]
            problem["msg"] = f"Input should be one of {', '.join(ALGORITHMS)}"
        where = ".".join(str(part) for part in loc) or "config"
        problems.append(f"{where}: {problem['msg']}")
    return "; ".join(problems)


def parse_config(text: str) -> TrainConfig:
    """Validate the config file's text; raises ConfigError."""
    try:
        return TRAIN_CONFIG.validate_json(text)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from error


def load_config(path: Path) -> TrainConfig:
    """Read and validate the config, including that its inputs exist; raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from error
    config = parse_config(text)
    if not config.model_path.is_dir():
        raise ConfigError(f"model_path: no such directory: {config.model_path}")
    if not config.dataset_path.is_file():
        raise ConfigError(f"dataset_path: no such file: {config.dataset_path}")
    if config.validation_path is not None and not config.validation_path.is_file():
        raise ConfigError(f"validation_path: no such file: {config.validation_path}")
    if config.resume_from is not None and not config.resume_from.is_dir():
        raise ConfigError(f"resume_from: no such directory: {config.resume_from}")
    reward = getattr(config, "reward", None)
    if isinstance(reward, RewardSettings) and not reward.path.is_file():
        raise ConfigError(f"reward.path: no such file: {reward.path}")
    return config


# --- data --------------------------------------------------------------------------------


def load_dataset_file(path: Path, *, cache_dir: Path) -> Dataset:
    """Load a JSONL/JSON/Parquet file as a `datasets.Dataset`, caching under `cache_dir`."""
    from datasets import load_dataset

    return load_dataset(
        DATASET_BUILDERS[path.suffix], data_files=str(path), split="train", cache_dir=str(cache_dir)
    )


def file_columns(path: Path) -> list[str] | None:
    """The columns of a Parquet file (its schema) or of a JSONL file (its first row), read
    without the training libraries; None where that cannot be told so cheaply (.json)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as rows:
            for line in rows:
                if line.strip():
                    row = json.loads(line)
                    return list(row) if isinstance(row, dict) else None
    return None


def check_columns(config: TrainConfig) -> None:
    """Refuse a dataset without the columns of its data task before anything heavy loads."""
    for field, path in (
        ("dataset_path", config.dataset_path),
        ("validation_path", config.validation_path),
    ):
        if path is None:
            continue
        try:
            columns = file_columns(path)
        except Exception:  # noqa: S112 - unreadable here: the full load says why, later
            continue
        wanted = DATA_TASK_COLUMNS[config.dataset_format]
        missing = [c for c in wanted if columns is not None and c not in columns]
        if missing:
            raise ConfigError(
                f"{field}: {config.dataset_format} data needs column(s) "
                f"{', '.join(missing)}; the file has {', '.join(columns or [])}"
            )


def task_dataset(config: TrainConfig, *, validation: bool = False) -> Dataset:
    """The prepared dataset (or its held-out rows), checked for the columns of its data task."""
    path = config.validation_path if validation else config.dataset_path
    assert path is not None
    dataset = load_dataset_file(path, cache_dir=config.output_dir / "cache")
    missing = [c for c in DATA_TASK_COLUMNS[config.dataset_format] if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"dataset_path: {config.dataset_format} data needs column(s) {', '.join(missing)}; "
            f"the file has {', '.join(dataset.column_names)}"
        )
    print(
        f"{'validation' if validation else 'dataset'}: {len(dataset)} rows from {path} "
        f"({config.dataset_format})"
    )
    return dataset


def prompt_text(messages: list[dict[str, str]]) -> str:
    """A prompt's turns as one text, for a model without a chat template (as
    training_platform.datasets.formats.prompt_text; this program imports nothing of the
    platform's runtime)."""
    if len(messages) == 1:
        return str(messages[0]["content"])
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def preference_dataset(dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """Preference rows as chat turns when the model has a chat template, else plain text.

    The prepared prompt is a list of messages: a multi-turn prompt reaches DPO as its turns.
    """
    dataset = dataset.select_columns(["prompt", "chosen", "rejected"])
    chat = tokenizer.chat_template is not None
    turns = [len(p) if isinstance(p, list) else 1 for p in dataset["prompt"]]
    print(
        f"preference prompts: {min(turns)}-{max(turns)} turns, "
        + ("kept as chat turns" if chat else "joined into text (no chat template)")
    )

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row["prompt"]
        if isinstance(prompt, str):  # prepared before prompts became messages
            prompt = [{"role": "user", "content": prompt}]
        if not chat:
            return {
                "prompt": prompt_text(prompt),
                "chosen": row["chosen"],
                "rejected": row["rejected"],
            }
        return {
            "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }

    return dataset.map(shape, remove_columns=dataset.column_names)


# --- rewards -----------------------------------------------------------------------------

RewardFunction = Callable[..., Any]


def load_reward_function(reward: RewardSettings) -> RewardFunction:
    """Import the reward file by path and return its function; ConfigError when it is absent."""
    spec = importlib.util.spec_from_file_location(f"tp_reward_{reward.path.stem}", reward.path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"reward.path: cannot import {reward.path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = getattr(module, reward.function, None)
    if not callable(function):
        raise ConfigError(f"reward.function: {reward.path} has no function {reward.function!r}")
    return cast("RewardFunction", function)


def score(
    function: RewardFunction,
    *,
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any,
) -> float:
    """One reward, called the way verl calls it; a dict result gives its "score"."""
    result = function(
        data_source=data_source,
        solution_str=solution_str,
        ground_truth=ground_truth,
        extra_info=extra_info,
    )
    if isinstance(result, dict):
        result = result["score"]
    return float(result)


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content", "")) for message in completion)


def trl_reward(function: RewardFunction, name: str) -> Callable[..., list[float | None]]:
    """A verl-style reward function wrapped as a TRL reward function (batch in, list out)."""

    def reward(
        completions: list[Any],
        data_source: list[str],
        reward_model: list[dict[str, Any]],
        extra_info: list[Any] | None = None,
        **_: Any,
    ) -> list[float | None]:
        infos = extra_info or [None] * len(completions)
        return [
            score(
                function,
                data_source=source,
                solution_str=completion_text(completion),
                ground_truth=model["ground_truth"],
                extra_info=info,
            )
            for completion, source, model, info in zip(
                completions, data_source, reward_model, infos, strict=True
            )
        ]

    # TRL names the metric rewards/<__name__>/mean.
    reward.__name__ = name
    return reward


# --- TRL runs ----------------------------------------------------------------------------


def common_training_args(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments every TRL config class takes, derived from the run config."""
    import torch

    hp = config.hyperparameters
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return {
        "output_dir": str(config.output_dir / "checkpoints"),
        "report_to": [],
        # TRL refuses to start on CPU unless told so and unless bf16 is off.
        "use_cpu": not cuda,
        "bf16": bf16,
        "fp16": cuda and not bf16,
        "max_steps": hp.max_steps,
        "num_train_epochs": hp.num_train_epochs,
        "learning_rate": hp.learning_rate,
        "per_device_train_batch_size": hp.per_device_train_batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "warmup_steps": hp.warmup_steps,
        "weight_decay": hp.weight_decay,
        "lr_scheduler_type": hp.lr_scheduler_type,
        "logging_strategy": "steps",
        "logging_steps": hp.logging_steps,
        "save_strategy": "steps",
        "save_steps": hp.save_steps,
        # A validation split: its loss at every save (eval_loss, ... in the metrics).
        **(
            {
                "eval_strategy": "steps",
                "eval_steps": hp.save_steps,
                "per_device_eval_batch_size": hp.per_device_train_batch_size,
            }
            if config.validation_path is not None
            else {}
        ),
        "save_total_limit": hp.save_total_limit,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "gradient_checkpointing": hp.gradient_checkpointing,
        # The progress callback prints readable lines; a tqdm bar would garble the job log.
        "disable_tqdm": True,
        # Report a NaN or infinite loss as it is: the platform's alert rules must see it (the
        # Trainer's default hides it behind the window's average).
        "logging_nan_inf_filter": False,
    }


def lora_config(settings: LoraSettings | None) -> LoraConfig | None:
    """The PEFT LoRA config asked for by the hyperparameters, or None for full fine-tuning."""
    if settings is None:
        return None
    from peft import LoraConfig

    targets = settings.target_modules
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="CAUSAL_LM",
    )


def steps_done(checkpoint: Path) -> tuple[int, int] | None:
    """(step, max_steps) when a Trainer checkpoint already holds every step of its run."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        step, max_steps = int(state["global_step"]), int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (step, max_steps) if 0 < max_steps <= step else None


def run_trainer(trainer: Trainer, config: TrainConfig, *, adapter: bool) -> None:
    """Train with progress records, then save the final model (or adapter) to output_dir/model."""
    from transformers import PrinterCallback

    from training_platform.trainers.progress import (
        ProgressWriter,
        RunProgressCallback,
        StoppedOnRequest,
        directory_size,
    )

    # disable_tqdm swaps the bar for PrinterCallback, which prints raw dicts and pops total_flos
    # out of the shared logs before other callbacks see it.
    trainer.remove_callback(PrinterCallback)
    writer = ProgressWriter(config.metrics_path)
    progress = RunProgressCallback(writer, run_dir=config.output_dir, adapter=adapter)
    trainer.add_callback(progress)

    # TRL trainers load the model in __init__; a PeftModel forwards `config` to its base model.
    model = cast("PreTrainedModel", trainer.model)
    parameters = list(model.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    print(f"model: {total} parameters, {trainable} trainable, device {trainer.args.device}")

    resume = str(config.resume_from) if config.resume_from else None
    done = steps_done(config.resume_from) if config.resume_from else None
    if resume and done is not None:
        # Killed after its last checkpoint: training again would run a step past max_steps
        # (at learning rate 0). The checkpoint is the trained model: load it and export it.
        step, max_steps = done
        print(f"the checkpoint at step {step} holds all {max_steps} steps: exporting it")
        writer.started(max_steps=max_steps)
        trainer._load_from_checkpoint(resume)
        trainer.state.global_step = step
    else:
        if resume:
            print(f"resuming from {resume}")
        trainer.train(resume_from_checkpoint=resume)
    if progress.stopped:
        writer.stopped(step=trainer.state.global_step)
        raise StoppedOnRequest(trainer.state.global_step)
    # The Trainer turns the KV cache off for training; the saved model is for inference.
    model.config.use_cache = True
    final_dir = config.output_dir / "model"
    # For a LoRA run this writes the adapter only; its adapter_config.json names the base model.
    trainer.save_model(str(final_dir))
    writer.checkpoint(
        step=trainer.state.global_step,
        path="model",
        final=True,
        adapter=adapter,
        size_bytes=directory_size(final_dir),
    )
    print(f"saved final {'adapter' if adapter else 'model'} to {final_dir}")


def check_assistant_masks(tokenizer: Any) -> None:
    """ConfigError unless TRL can tell the assistant's tokens apart in this model's chat
    template: its own `{% generation %}` markers, or a training template TRL ships for it."""
    from trl.chat_template_utils import get_training_chat_template

    if not tokenizer.chat_template:
        raise ConfigError(
            "hyperparameters.assistant_only_loss: the model has no chat template, so its "
            "assistant turns cannot be told apart; set assistant_only_loss to false to train "
            "on every token"
        )
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        raise ConfigError(
            "hyperparameters.assistant_only_loss: the model's chat template has no "
            "{% generation %} markers and TRL ships no training template for it; add the "
            "markers around the assistant content, or set assistant_only_loss to false to "
            "train on every token"
        ) from None


def train_sft(config: SftConfig) -> None:
    """Supervised fine-tuning with TRL's SFTTrainer."""
    from transformers import AutoTokenizer
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    hp = config.hyperparameters
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    if hp.assistant_only_loss:
        check_assistant_masks(tokenizer)
    dataset = task_dataset(config).select_columns(["messages"])
    held = (
        task_dataset(config, validation=True).select_columns(["messages"])
        if config.validation_path is not None
        else None
    )
    args = SFTConfig(
        **common_training_args(config),
        max_length=hp.max_length,
        assistant_only_loss=hp.assistant_only_loss,
    )
    peft_config = lora_config(hp.lora)
    trainer = SFTTrainer(
        model=str(config.model_path),
        args=args,
        train_dataset=dataset,
        eval_dataset=held,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    run_trainer(trainer, config, adapter=peft_config is not None)


def train_dpo(config: DpoConfig) -> None:
    """Direct preference optimization with TRL's DPOTrainer."""
    from transformers import AutoTokenizer
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    hp = config.hyperparameters
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    dataset = preference_dataset(task_dataset(config), tokenizer)
    held = (
        preference_dataset(task_dataset(config, validation=True), tokenizer)
        if config.validation_path is not None
        else None
    )
    args = DPOConfig(
        **common_training_args(config),
        max_length=hp.max_length,
        beta=hp.beta,
        loss_type=[hp.loss_type],
        label_smoothing=hp.label_smoothing,
    )
    peft_config = lora_config(hp.lora)
    trainer = DPOTrainer(
        model=str(config.model_path),
        args=args,
        train_dataset=dataset,
        eval_dataset=held,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    run_trainer(trainer, config, adapter=peft_config is not None)


def _grpo_args(config: GrpoConfig | GspoConfig) -> dict[str, Any]:
    hp = config.hyperparameters
    common = {
        **common_training_args(config),
        "num_generations": hp.num_generations,
        "max_completion_length": hp.max_completion_length,
        "temperature": hp.temperature,
        "top_p": hp.top_p,
        "epsilon": hp.epsilon,
        "epsilon_high": hp.epsilon_high,
        "num_iterations": hp.num_iterations,
        "steps_per_generation": hp.steps_per_generation,
        # The reward wrapper reads data_source, reward_model and extra_info from the rows.
        "remove_unused_columns": False,
    }
    if isinstance(config, GspoConfig):
        # TRL's recipe for GSPO (paper v2, section 5.1): sequence-level ratios, no KL term.
        return {**common, "importance_sampling_level": "sequence", "loss_type": "grpo", "beta": 0.0}
    grpo = config.hyperparameters
    return {
        **common,
        "beta": grpo.beta,
        "loss_type": grpo.loss_type,
        "scale_rewards": grpo.scale_rewards,
    }


def train_grpo(config: GrpoConfig | GspoConfig) -> None:
    """GRPO (and GSPO, its sequence-level variant) with TRL's GRPOTrainer."""
    from transformers import AutoTokenizer
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    function = load_reward_function(config.reward)
    dataset = task_dataset(config)
    dataset = dataset.select_columns([c for c in RL_COLUMNS if c in dataset.column_names])
    args = GRPOConfig(**_grpo_args(config))
    peft_config = lora_config(config.hyperparameters.lora)
    trainer = GRPOTrainer(
        model=str(config.model_path),
        reward_funcs=[trl_reward(function, config.reward.function)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    run_trainer(trainer, config, adapter=peft_config is not None)


def train_ppo(config: PpoConfig) -> None:
    """PPO with the platform's own trainer (TRL has none since 1.13)."""
    from training_platform.trainers.ppo import train

    train(config)


TRAINERS: dict[str, Callable[[Any], None]] = {
    "sft": train_sft,
    "dpo": train_dpo,
    "grpo": train_grpo,
    "gspo": train_grpo,
    "ppo": train_ppo,
}


START_MODEL_DIR = "start-model"


def start_model(model_path: Path, output_dir: Path) -> Path:
    """The model a run starts from: `model_path`, or, where that holds a LoRA adapter (a LoRA
    stage's final model), the adapter merged into its base (PEFT's merge_and_unload, in the
    base's dtype), saved once in the run directory: a LoRA stage hands on like any other."""
    if (model_path / "config.json").is_file() or not (model_path / "adapter_config.json").is_file():
        return model_path
    target = output_dir / START_MODEL_DIR
    if (target / "config.json").is_file():
        return target  # an earlier attempt of this run merged it
    adapter = json.loads((model_path / "adapter_config.json").read_text(encoding="utf-8"))
    base = Path(str(adapter.get("base_model_name_or_path") or ""))
    if not base.is_absolute() or not (base / "config.json").is_file():
        raise ConfigError(f"model_path: a LoRA adapter whose base model {base} is not here")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"model_path holds a LoRA adapter: merging it into its base {base}")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, str(model_path)).merge_and_unload()
    with_tokenizer = model_path if (model_path / "tokenizer_config.json").is_file() else base
    staging = output_dir / f".{START_MODEL_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    AutoTokenizer.from_pretrained(with_tokenizer).save_pretrained(staging)
    staging.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m training_platform.trainers.trl_train")
    parser.add_argument("--config", type=Path, required=True, help="train_config.json")
    args = parser.parse_args(argv)
    # stdout is a log file that the platform tails while the run goes on.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    try:
        config = load_config(args.config)
        check_columns(config)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    for name, value in HF_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    skip_unused_imports()
    print(f"{config.algorithm} run in {config.output_dir}")
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        start = start_model(config.model_path, config.output_dir)
        TRAINERS[config.algorithm](config.model_copy(update={"model_path": start}))
    except ConfigError as error:
        # Found only once the inputs are opened: a dataset without its columns, a reward file
        # without its function.
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except Exception as error:
        from training_platform.trainers.progress import StoppedOnRequest

        if isinstance(error, StoppedOnRequest):
            print(f"{error}; exiting with {EXIT_STOPPED}")
            return EXIT_STOPPED
        traceback.print_exc()
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    # Run the copy that ppo.py imports, not this __main__ copy: one ConfigError class, so the
    # PPO trainer's config errors exit 2 like the others.
    from training_platform.trainers.trl_train import main as package_main

    sys.exit(package_main())
