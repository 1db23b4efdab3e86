"""Evaluation: spec -> LaunchPlan for training_platform.trainers.evaluate.

The program generates greedily for each held-out prompt of a prepared rl dataset, scores the
completion against `reward_model.ground_truth` with a rule metric and reports the accuracy as
job metrics. It saves no model.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training_platform.backends.base import LaunchContext, LaunchPlan, register
from training_platform.core.errors import InvalidInput

__all__ = ["CONFIG_FILE", "EVALUATE_MODULE", "BuiltinEvaluate", "EvaluateParameters"]

EVALUATE_MODULE = "training_platform.trainers.evaluate"
CONFIG_FILE = "eval_config.json"
KEY_FILE = "endpoint.key"


class EvaluateParameters(BaseModel):
    """How to generate and how to score."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["exact_match", "numeric_match"] = Field(
        "numeric_match",
        description=(
            "numeric_match: the last number of the completion equals the answer; "
            "exact_match: the completion equals the answer (case and spacing aside)."
        ),
    )
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Most tokens generated per prompt.")
    max_samples: int | None = Field(
        None, ge=1, description="Score only the first this many rows; absent: every row."
    )
    batch_size: int = Field(16, ge=1, le=1024, description="Prompts generated together.")
    engine: Literal["auto", "transformers", "vllm", "api"] = Field(
        "auto",
        description=(
            "Generation engine. auto: vLLM when the job has GPUs and vLLM is installed on the "
            "host, otherwise transformers (always transformers on CPU); api with an endpoint."
        ),
    )
    endpoint: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="An endpoint to evaluate (by name) instead of a model: the api engine.",
    )
    kv_cache_gib: float = Field(
        1.0, gt=0, le=1024, description="vLLM on CPU: GiB of memory for its KV cache."
    )
    enforce_eager: bool = Field(
        False, description="vLLM: no torch.compile or graph capture (starts sooner, runs slower)."
    )
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: the top mass kept.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="For sampling (temperature > 0).")
    n: int = Field(
        1,
        ge=1,
        le=64,
        description="Completions per prompt (sampled: needs temperature > 0); pass@k scores them.",
    )

    @model_validator(mode="after")
    def _engine_of_endpoint(self) -> EvaluateParameters:
        if self.endpoint is not None and self.engine not in ("auto", "api"):
            raise ValueError(f"an endpoint is evaluated by the api engine, not {self.engine}")
        if self.endpoint is None and self.engine == "api":
            raise ValueError("the api engine needs an endpoint")
        if self.endpoint is not None:
            self.engine = "api"
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 completions per prompt need a temperature > 0 (sampling)")
        return self


@register
class BuiltinEvaluate:
    """Greedy generation on held-out prompts, scored by a rule metric."""

    backend: ClassVar[str] = "builtin"
    algorithm: ClassVar[str] = "evaluate"
    description: ClassVar[str] = (
        "Accuracy of a model on held-out prompt/answer rows (greedy generation, rule metric)."
    )
    requires_gpu: ClassVar[bool] = False
    data_task: ClassVar[str] = "rl"
    validates: ClassVar[bool] = True  # uses a validation split (job.validation)
    parameters: ClassVar[type[BaseModel]] = EvaluateParameters
    graceful_stop: ClassVar[bool] = False

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The program's argv, environment and config file."""
        if context.dataset_format != self.data_task:
            raise InvalidInput(
                ("body", "dataset"),
                f"{self.backend}/{self.algorithm} needs {self.data_task} data, "
                f"not {context.dataset_format}",
            )
        # Simulated GPUs are not there: the program runs on CPU, where auto means transformers.
        gpus = 0 if context.simulated_devices else len(context.devices) or context.gpus
        config: dict[str, Any] = {
            "model_path": context.model_path,
            # With a validation split, only the held-out rows are evaluated.
            "dataset_path": context.validation_path or context.dataset_path,
            "output_dir": context.run_dir,
            "metrics_path": f"{context.run_dir}/metrics.jsonl",
            "gpus": gpus,
            **hyperparameters.model_dump(exclude={"endpoint"}),
        }
        secrets: dict[str, str] = {}
        if getattr(hyperparameters, "endpoint", None) is not None:
            if context.endpoint is None:
                raise InvalidInput(("body", "hyperparameters", "endpoint"), "unknown endpoint")
            config["endpoint"] = dict(context.endpoint)
            if context.endpoint_key:
                # Never in the config, the stored plan or an argv: a 0600 file the run removes.
                secrets[KEY_FILE] = context.endpoint_key
                config["api_key_file"] = KEY_FILE
        env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        python = context.python
        engine = getattr(hyperparameters, "engine", "auto")
        if context.vllm_python and (engine == "vllm" or (engine == "auto" and gpus > 0)):
            # vLLM's own environment (its torch and transformers pins differ from training's).
            python = context.vllm_python
            if not gpus:
                kv_cache = getattr(hyperparameters, "kv_cache_gib", 1.0)
                env["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache:g}"
                # The engine core in this process: a second process would import vLLM (and
                # torch) again, seconds of CPU an offline batch does not need.
                env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if context.model_is_local:
            env["HF_HUB_OFFLINE"] = "1"
        if context.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in context.devices)
        # As for training (backends/trl/common.py): busy OpenMP threads fight on shared CPUs.
        env["OMP_NUM_THREADS"] = str(context.cpu_threads)
        return LaunchPlan(
            backend=self.backend,
            algorithm=self.algorithm,
            argv=(python, "-m", EVALUATE_MODULE, "--config", CONFIG_FILE),
            env=env,
            files={CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True)},
            secrets=secrets,
        )
