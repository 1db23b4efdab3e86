"""Run one TRL training job: `python -m training_platform.trainers.trl_train --config PATH`.

A launch plan starts this program in its own process. Everything it writes lands under the
config's `output_dir` (checkpoints/, model/, cache/, heartbeat) plus the `metrics_path` file, whose
records are described in `training_platform.trainers.progress`. Exit status: 0 when the final
model is saved, 1 when the run fails (traceback on stderr), 2 when the config cannot start a run
(one line on stderr). stdout carries human-readable progress lines for the job log.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2

# Read once by the Hugging Face libraries at import, so they are set before the first import.
HF_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # model_path is a local directory by contract; never wait on a hub
    # Carriage-return progress bars garble the job log; the progress callback prints step lines.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}

# Dataset file suffix -> the `datasets` builder that reads it.
DATASET_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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


class Hyperparameters(BaseModel):
    """Training knobs shared by every algorithm; each has a default."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # -1 trains for num_train_epochs; a positive value stops after that many optimizer steps.
    max_steps: int = Field(default=30, ge=-1)
    num_train_epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    per_device_train_batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    max_length: int = Field(default=128, gt=0)
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
    assistant_only_loss: bool = False
    lora_r: int = Field(default=0, ge=0)
    lora_alpha: int = Field(default=16, gt=0)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (train for num_train_epochs) or a positive step count")
        return value


class TrainConfig(BaseModel):
    """The JSON file named by `--config`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    algorithm: Literal["sft"]
    model_path: AbsolutePath
    dataset_path: DatasetPath
    dataset_format: Literal["messages", "prompt_response"]
    output_dir: AbsolutePath
    metrics_path: AbsolutePath
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class ConfigError(Exception):
    """The config cannot start a run; the message fits on one line."""


def _describe(error: ValidationError) -> str:
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "config"
        problems.append(f"{where}: {problem['msg']}")
    return "; ".join(problems)


def load_config(path: Path) -> TrainConfig:
    """Read and validate the config, including that its inputs exist; raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from error
    try:
        config = TrainConfig.model_validate_json(text)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from error
    if not config.model_path.is_dir():
        raise ConfigError(f"model_path: no such directory: {config.model_path}")
    if not config.dataset_path.is_file():
        raise ConfigError(f"dataset_path: no such file: {config.dataset_path}")
    return config


def load_dataset_file(path: Path, *, cache_dir: Path) -> Dataset:
    """Load a JSONL/JSON/Parquet file as a `datasets.Dataset`, caching under `cache_dir`."""
    from datasets import load_dataset

    return load_dataset(
        DATASET_BUILDERS[path.suffix], data_files=str(path), split="train", cache_dir=str(cache_dir)
    )


def _require_columns(dataset: Dataset, columns: list[str], dataset_format: str) -> None:
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset_format {dataset_format!r} needs column(s) {', '.join(missing)}; "
            f"the dataset has {', '.join(dataset.column_names)}"
        )


def sft_dataset(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase, *, cache_dir: Path
) -> Dataset:
    """The training rows in a shape SFTTrainer understands."""
    dataset = load_dataset_file(config.dataset_path, cache_dir=cache_dir)
    if config.dataset_format == "messages":
        _require_columns(dataset, ["messages"], config.dataset_format)
        return dataset.select_columns(["messages"])
    _require_columns(dataset, ["prompt", "response"], config.dataset_format)
    # Prompt/completion rows make TRL compute the loss on the response only. With a chat template
    # they are rendered as a user/assistant exchange, the shape the model is later prompted in.
    conversational = tokenizer.chat_template is not None

    def to_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
        if conversational:
            return {
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "completion": [{"role": "assistant", "content": row["response"]}],
            }
        return {"prompt": row["prompt"], "completion": row["response"]}

    return dataset.map(to_prompt_completion, remove_columns=dataset.column_names)


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
        "save_total_limit": hp.save_total_limit,
        "seed": hp.seed,
        "data_seed": hp.seed,
        # The progress callback prints readable lines; a tqdm bar would garble the job log.
        "disable_tqdm": True,
    }


def lora_config(config: TrainConfig) -> LoraConfig | None:
    """The PEFT LoRA config asked for by the hyperparameters, or None for full fine-tuning."""
    hp = config.hyperparameters
    if hp.lora_r == 0:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def run_trainer(trainer: Trainer, config: TrainConfig, *, adapter: bool) -> None:
    """Train with progress records, then save the final model (or adapter) to output_dir/model."""
    from transformers import PrinterCallback

    from training_platform.trainers.progress import ProgressWriter, RunProgressCallback

    # disable_tqdm swaps the bar for PrinterCallback, which prints raw dicts and pops total_flos
    # out of the shared logs before other callbacks see it.
    trainer.remove_callback(PrinterCallback)
    writer = ProgressWriter(config.metrics_path)
    trainer.add_callback(RunProgressCallback(writer, run_dir=config.output_dir, adapter=adapter))

    # TRL trainers load the model in __init__; a PeftModel forwards `config` to its base model.
    model = cast("PreTrainedModel", trainer.model)
    parameters = list(model.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    print(f"model: {total} parameters, {trainable} trainable, device {trainer.args.device}")

    trainer.train()
    # The Trainer turns the KV cache off for training; the saved model is for inference.
    model.config.use_cache = True
    final_dir = config.output_dir / "model"
    # For a LoRA run this writes the adapter only; its adapter_config.json names the base model.
    trainer.save_model(str(final_dir))
    writer.checkpoint(step=trainer.state.global_step, path="model", final=True, adapter=adapter)
    print(f"saved final {'adapter' if adapter else 'model'} to {final_dir}")


def train_sft(config: TrainConfig) -> None:
    """Supervised fine-tuning with TRL's SFTTrainer."""
    from transformers import AutoTokenizer
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    hp = config.hyperparameters
    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    dataset = sft_dataset(config, tokenizer, cache_dir=config.output_dir / "cache")
    print(f"dataset: {len(dataset)} rows from {config.dataset_path} ({config.dataset_format})")
    args = SFTConfig(
        **common_training_args(config),
        max_length=hp.max_length,
        assistant_only_loss=hp.assistant_only_loss,
    )
    peft_config = lora_config(config)
    trainer = SFTTrainer(
        model=str(config.model_path),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    run_trainer(trainer, config, adapter=peft_config is not None)


# One entry per algorithm; DPO, GRPO and GSPO join here as train_dpo, train_grpo, ...
TRAINERS: dict[str, Callable[[TrainConfig], None]] = {"sft": train_sft}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m training_platform.trainers.trl_train")
    parser.add_argument("--config", type=Path, required=True, help="train_config.json")
    args = parser.parse_args(argv)
    # stdout is a log file that the platform tails while the run goes on.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    for name, value in HF_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    print(f"{config.algorithm} run in {config.output_dir}")
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        TRAINERS[config.algorithm](config)
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
