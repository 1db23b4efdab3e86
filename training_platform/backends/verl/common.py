"""What every verl backend shares: Hydra overrides, common parameters, the wrapper plan.

A verl plan never starts verl directly: its argv runs `training_platform.trainers.verl_run`,
which reads `verl_run.json` (the real verl command and its environment), starts verl as its
child, and turns verl's own metrics file into the platform's metrics.jsonl records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from training_platform.backends.base import LaunchContext, LaunchPlan
from training_platform.backends.verl.merge import final_model_config

WRAPPER_MODULE = "training_platform.trainers.verl_run"
CONFIG_FILE = "verl_run.json"
VERL_METRICS_FILE = "verl_metrics.jsonl"  # verl's `file` logger writes here (VERL_FILE_LOGGER_PATH)
CHECKPOINT_DIR = "checkpoints"
HYDRA_DIR = "hydra"
# Fixed names: a user's job name never reaches a command line.
PROJECT_NAME = "training-platform"
# Loaded into every verl process through verl's own hook (VERL_USE_EXTERNAL_MODULES).
COMPAT_MODULE = "training_platform.trainers.verl_ext.compat"
CPU_MODULE = "training_platform.trainers.verl_ext.cpu"
CPU_RL_MODULE = "training_platform.trainers.verl_ext.cpu_rl"
# The environment of verl's CPU smoke mode (trainers/verl_ext/cpu.py). verl registers its FSDP
# engines for cuda and npu only: the cuda one runs on CPU tensors here.
CPU_ENV = {
    "VERL_USE_EXTERNAL_MODULES": f"{COMPAT_MODULE},{CPU_MODULE}",
    "VERL_PLATFORM": "cpu",
    "VERL_ENGINE_DEVICE": "cuda",
}

HydraScalar = str | int | float | bool | None
HydraValue = HydraScalar | Sequence[str]

ModuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")]


class LoraOptions(BaseModel):
    """LoRA adapters instead of full fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(ge=1, le=1024, description="LoRA rank (at least 1).")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator (alpha / rank).")
    target_modules: (
        Literal["all-linear"] | Annotated[list[ModuleName], Field(min_length=1, max_length=64)]
    ) = Field("all-linear", description="Modules with adapters: 'all-linear' or module names.")


class VerlCommon(BaseModel):
    """Parameters every verl algorithm accepts."""

    model_config = ConfigDict(extra="forbid")

    total_epochs: int = Field(1, ge=1, le=1000, description="Passes over the dataset.")
    total_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Training steps; overrides total_epochs when set."
    )
    strategy: Literal["fsdp", "fsdp2"] = Field("fsdp2", description="FSDP implementation.")
    param_offload: bool = Field(False, description="Keep parameters in CPU memory between uses.")
    optimizer_offload: bool = Field(False, description="Keep optimizer state in CPU memory.")
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa", description="Attention kernel; flash_attention_2 needs flash-attn on the host."
    )
    lora: LoraOptions | None = Field(None, description="Train LoRA adapters; absent: all weights.")
    save_freq: int = Field(
        100, ge=1, le=10_000_000, description="Save a checkpoint every N steps and at the end."
    )
    test_freq: int | None = Field(
        None, ge=1, le=10_000_000, description="Validate every N steps; absent: never."
    )
    max_checkpoints: int | None = Field(
        None, ge=1, le=10_000, description="Keep only the newest N checkpoints; absent: keep all."
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Random seed.")
    export_final_model: bool = Field(
        True,
        description=(
            "After training, convert the last checkpoint (FSDP shards) into a Hugging Face "
            "model in <run dir>/model, the job's output model; false: keep the shards only."
        ),
    )


def gpus_of(info: ValidationInfo) -> int:
    """The GPU count the job asked for, from the validation context (0 when absent)."""
    context = info.context if isinstance(info.context, Mapping) else {}
    return int(context.get("gpus", 0))


def field_error(loc: tuple[str, ...], message: str, value: Any) -> ValidationError:
    """A ValidationError for `loc`; raised from a model validator it keeps that location."""
    detail = InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=loc, input=value
    )
    return ValidationError.from_exception_data("parameters", [detail])


# What a refusal names: (is it wrong, field location, why, the value).
Refusal = tuple[bool, tuple[str, ...], str, Any]


def refuse_on_cpu(values: VerlCommon, gpus: int, *more: Refusal) -> None:
    """Raise for the first setting verl's CPU smoke mode cannot run (`more`: the algorithm's)."""
    refusals: list[Refusal] = [
        (gpus > 0, ("device",), "device 'cpu' runs without GPUs: ask for gpus = 0", "cpu"),
        (
            values.strategy != "fsdp2",
            ("strategy",),
            "the CPU smoke mode needs fsdp2",
            values.strategy,
        ),
        (
            values.attn_implementation == "flash_attention_2",
            ("attn_implementation",),
            "flash-attn needs a GPU",
            values.attn_implementation,
        ),
        (values.param_offload, ("param_offload",), "offloading means nothing on CPU", True),
        (values.optimizer_offload, ("optimizer_offload",), "offloading means nothing on CPU", True),
        *more,
    ]
    for wrong, loc, message, value in refusals:
        if wrong:
            raise field_error(loc, message, value)


# A backslash needs escaping in a quoted Hydra value only before a quote, an interpolation
# or the end of the value; everywhere else Hydra keeps it as it is.
_ESCAPED_BACKSLASHES = re.compile(r"(\\+)(?='|\$\{|$)")
# Words and paths that Hydra reads back as the same string without quotes.
_PLAIN = re.compile(r"^[A-Za-z/][A-Za-z0-9_./-]*$")
_KEYWORDS = frozenset({"null", "true", "false", "nan", "inf"})


def hydra_value(value: HydraValue) -> str:
    """A value as Hydra's override grammar reads it back exactly (strings quoted, `${` escaped)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _KEYWORDS:
            return value
        text = _ESCAPED_BACKSLASHES.sub(lambda m: m.group(1) * 2, value)
        return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"
    return "[" + ",".join(hydra_value(item) for item in value) + "]"


def overrides(pairs: Sequence[tuple[str, HydraValue]]) -> list[str]:
    """`key=value` Hydra overrides, in order."""
    return [f"{key}={hydra_value(value)}" for key, value in pairs]


def trainer_pairs(
    values: VerlCommon, context: LaunchContext, *, experiment: str, gpus: int
) -> list[tuple[str, HydraValue]]:
    """The `trainer.*` and `hydra.*` overrides of every verl run."""
    pairs: list[tuple[str, HydraValue]] = [
        ("trainer.project_name", PROJECT_NAME),
        ("trainer.experiment_name", experiment),
        ("trainer.logger", ["console", "file"]),
        ("trainer.default_local_dir", f"{context.run_dir}/{CHECKPOINT_DIR}"),
        ("trainer.nnodes", 1),
        ("trainer.n_gpus_per_node", gpus),
        ("trainer.total_epochs", values.total_epochs),
        ("trainer.total_training_steps", values.total_steps),
        ("trainer.save_freq", values.save_freq),
        ("trainer.test_freq", values.test_freq or -1),
    ]
    # A fresh attempt must never pick up an old checkpoint on its own ("auto" would).
    if context.resume_from:
        pairs += [
            ("trainer.resume_mode", "resume_path"),
            ("trainer.resume_from_path", context.resume_from),
        ]
    else:
        pairs += [("trainer.resume_mode", "disable"), ("trainer.resume_from_path", None)]
    # Hydra's own run directory (resolved config, log) goes under the run dir, not ./outputs.
    pairs.append(("hydra.run.dir", f"{context.run_dir}/{HYDRA_DIR}"))
    return pairs


def base_env(context: LaunchContext) -> dict[str, str]:
    """Environment of the wrapper and verl: devices, offline hub, threads."""
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if context.model_is_local:
        env["HF_HUB_OFFLINE"] = "1"
    if context.devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in context.devices)
    env["OMP_NUM_THREADS"] = str(context.cpu_threads)
    return env


def wrapper_plan(
    *,
    backend: str,
    algorithm: str,
    context: LaunchContext,
    command: Sequence[str],
    verl_env: Mapping[str, str],
    max_steps: int | None,
    steps_from: Mapping[str, Any] | None,
    export_final_model: bool,
) -> LaunchPlan:
    """The plan that runs `command` under the verl_run wrapper."""
    config = {
        "command": list(command),
        "env": dict(verl_env),
        "run_dir": context.run_dir,
        "verl_metrics": VERL_METRICS_FILE,
        "checkpoint_dir": CHECKPOINT_DIR,
        "max_steps": max_steps,
        # When only epochs are given, the wrapper counts the steps from the dataset's rows.
        "steps_from": dict(steps_from) if steps_from else None,
        # After verl succeeds, the wrapper merges the last checkpoint into <run dir>/model.
        "final_model": final_model_config(context, algorithm) if export_final_model else None,
    }
    return LaunchPlan(
        backend=backend,
        algorithm=algorithm,
        argv=(context.python, "-m", WRAPPER_MODULE, "--config", CONFIG_FILE),
        env=base_env(context),
        files={CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True)},
    )
