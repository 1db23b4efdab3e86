"""Serving: spec -> LaunchPlan for training_platform.trainers.serve.

The program starts an OpenAI-compatible server for the job's model on 127.0.0.1 and keeps it
up until the job is cancelled; the platform's API is the only way in (serving/routes.py).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from training_platform.backends.base import LaunchContext, LaunchPlan, register

__all__ = ["CONFIG_FILE", "SERVE_MODULE", "BuiltinServe", "ServeParameters"]

SERVE_MODULE = "training_platform.trainers.serve"
CONFIG_FILE = "serve_config.json"


class ServeParameters(BaseModel):
    """Which server, and how much it may hold."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description=(
            "Server. auto: vLLM's OpenAI server where vLLM is installed on the host, otherwise "
            "`transformers serve`."
        ),
    )
    max_model_len: int | None = Field(
        None, ge=16, le=1 << 20, description="vLLM: longest prompt + completion, in tokens."
    )
    kv_cache_gib: float = Field(
        1.0, gt=0, le=1024, description="vLLM on CPU: GiB of memory for its KV cache."
    )
    enforce_eager: bool = Field(
        False, description="vLLM: no torch.compile or graph capture (starts sooner, runs slower)."
    )
    start_timeout_s: float = Field(
        600.0, gt=0, le=86400, description="Give up when the server does not answer by then."
    )


@register
class BuiltinServe:
    """An OpenAI-compatible server for a model, reached through the platform's API."""

    backend: ClassVar[str] = "builtin"
    algorithm: ClassVar[str] = "serve"
    description: ClassVar[str] = (
        "Serve a model over an OpenAI-compatible API (vLLM or transformers) until stopped."
    )
    requires_gpu: ClassVar[bool] = False
    data_task: ClassVar[str | None] = None
    parameters: ClassVar[type[BaseModel]] = ServeParameters
    graceful_stop: ClassVar[bool] = False

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The program's argv, environment and config file."""
        gpus = 0 if context.simulated_devices else len(context.devices) or context.gpus
        config: dict[str, Any] = {
            "model_path": context.model_path,
            "output_dir": context.run_dir,
            "gpus": gpus,
            **hyperparameters.model_dump(),
        }
        env = {
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # `transformers serve` lists the hub cache on /v1/models; a private empty one.
            "HF_HUB_CACHE": f"{context.run_dir}/hf-cache",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "OMP_NUM_THREADS": str(context.cpu_threads),
        }
        if context.model_is_local:
            env["HF_HUB_OFFLINE"] = "1"
        if context.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in context.devices)
        python = context.python
        if context.vllm_python and getattr(hyperparameters, "engine", "auto") != "transformers":
            python = context.vllm_python  # vLLM's own environment
        return LaunchPlan(
            backend=self.backend,
            algorithm=self.algorithm,
            argv=(python, "-m", SERVE_MODULE, "--config", CONFIG_FILE),
            env=env,
            files={CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True)},
        )
