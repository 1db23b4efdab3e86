"""Merging: spec -> LaunchPlan for training_platform.trainers.merge (mergekit underneath).

The job's hyperparameters name its models by catalog id only, never by path: the platform
resolves the ids to directories (`LaunchContext.models`) when it plans the run. The method
rules below are the one place that says which method takes which parameters; the surgery
context checks requests against them before anything is stored.
"""

from __future__ import annotations

import json
import math
import typing
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training_platform.backends.base import LaunchContext, LaunchPlan, register
from training_platform.core.errors import InvalidInput

__all__ = [
    "CONFIG_FILE",
    "MERGE_MODULE",
    "METHODS",
    "BuiltinMerge",
    "MergeJobInput",
    "MergeJobParameters",
    "method_errors",
]

MERGE_MODULE = "training_platform.trainers.merge"
CONFIG_FILE = "merge_config.json"
# Where the merged model goes, relative to the run directory (as a training run's final model).
MODEL_DIR = "model"
# Output shards are held in memory until written: a bound on a merge's memory beyond its
# working tensors (mergekit's default is 5e9 bytes).
OUT_SHARD_BYTES = 1 << 30

Method = Literal[
    "linear",
    "slerp",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "model_stock",
    "breadcrumbs",
    "della",
]
METHODS: tuple[str, ...] = typing.get_args(Method)
Dtype = Literal["float32", "bfloat16", "float16"]


class MethodRule:
    """What a method takes: per-model parameters (required ones apart), global ones, how many
    models besides the base, and whether it needs a base."""

    def __init__(
        self,
        *,
        per_model: tuple[str, ...] = (),
        required: tuple[str, ...] = (),
        shared: tuple[str, ...] = (),
        shared_required: tuple[str, ...] = (),
        base: bool = True,
        min_models: int = 1,
        max_models: int = 16,
    ) -> None:
        self.per_model, self.required = per_model, required
        self.shared, self.shared_required = shared, shared_required
        self.base, self.min_models, self.max_models = base, min_models, max_models


_TASK_VECTOR = ("normalize", "lambda")
RULES: dict[str, MethodRule] = {
    # mergekit's own defaults apply to what is left out (normalize: on for linear and ties and
    # della, off otherwise; rescale: on for the dare methods and della; lambda 1).
    "linear": MethodRule(
        per_model=("weight",), required=("weight",), shared=("normalize",), base=False, min_models=2
    ),
    "slerp": MethodRule(shared=("t",), shared_required=("t",), max_models=1),
    "task_arithmetic": MethodRule(per_model=("weight",), required=("weight",), shared=_TASK_VECTOR),
    "ties": MethodRule(
        per_model=("weight", "density"),
        required=("weight", "density"),
        shared=(*_TASK_VECTOR, "int8_mask"),
    ),
    "dare_ties": MethodRule(
        per_model=("weight", "density"),
        required=("weight", "density"),
        shared=(*_TASK_VECTOR, "rescale", "int8_mask"),
    ),
    "dare_linear": MethodRule(
        per_model=("weight", "density"),
        required=("weight", "density"),
        shared=(*_TASK_VECTOR, "rescale"),
    ),
    "model_stock": MethodRule(shared=("filter_wise",), min_models=2),
    "breadcrumbs": MethodRule(
        per_model=("weight", "density", "gamma"),
        required=("weight", "density"),
        shared=_TASK_VECTOR,
    ),
    "della": MethodRule(
        per_model=("weight", "density", "epsilon"),
        required=("weight", "density"),
        shared=(*_TASK_VECTOR, "rescale", "int8_mask"),
    ),
}
PER_MODEL_FIELDS = ("weight", "density", "gamma", "epsilon")
SHARED_FIELDS = ("t", "normalize", "rescale", "lambda", "int8_mask", "filter_wise")


class InputParameters(BaseModel):
    """A model's own parameters in a merge (which ones apply depends on the method)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"weight": 0.5, "density": 0.7}]}
    )

    weight: float | None = Field(
        None, ge=-10, le=10, description="Its share (linear) or its task vector's scale."
    )
    density: float | None = Field(
        None, gt=0, le=1, description="Share of its task vector kept (ties, dare, della)."
    )
    gamma: float | None = Field(
        None, ge=0, lt=1, description="breadcrumbs: share of the largest changes dropped."
    )
    epsilon: float | None = Field(
        None, ge=0, lt=1, description="della: spread of the drop probabilities around density."
    )


class SharedParameters(BaseModel):
    """The merge's global parameters (which ones apply depends on the method)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={"examples": [{"t": 0.5}, {"normalize": True, "lambda": 1.0}]},
    )

    t: float | None = Field(None, ge=0, le=1, description="slerp: 0 is the base, 1 the other.")
    normalize: bool | None = Field(None, description="Divide by the sum of the weights.")
    rescale: bool | None = Field(None, description="dare, della: keep the task vector's L1 norm.")
    lambda_: float | None = Field(
        None, alias="lambda", gt=0, le=10, description="Scale of the merged task vector."
    )
    int8_mask: bool | None = Field(None, description="Sign masks in int8 (less memory).")
    filter_wise: bool | None = Field(None, description="model_stock: one ratio per row.")

    def given(self) -> dict[str, float | bool]:
        """The parameters set, by mergekit's names."""
        values = self.model_dump(by_alias=True, exclude_none=True)
        return {str(k): v for k, v in values.items()}


def method_errors(
    method: str,
    has_base: bool,
    inputs: list[dict[str, Any]],
    shared: dict[str, Any],
) -> list[tuple[tuple[str | int, ...], str]]:
    """Every way the request breaks the method's rules: (location under the body, message).

    `inputs` are the non-base models' parameters (by mergekit's names, None for unset),
    `shared` the global parameters that are set."""
    rule = RULES[method]
    errors: list[tuple[tuple[str | int, ...], str]] = []
    if rule.base and not has_base:
        errors.append((("base",), f"{method} needs a base model"))
    if not rule.base and has_base:
        errors.append((("base",), f"{method} takes no base model; list every model in models"))
    count = len(inputs)
    if not rule.min_models <= count <= rule.max_models:
        wanted = (
            f"exactly {rule.min_models}"
            if rule.min_models == rule.max_models
            else f"{rule.min_models} to {rule.max_models}"
        )
        besides = " besides the base" if rule.base else ""
        errors.append((("models",), f"{method} merges {wanted} models{besides}, not {count}"))
    for index, values in enumerate(inputs):
        for name in PER_MODEL_FIELDS:
            value = values.get(name)
            if value is not None and name not in rule.per_model:
                takes = ", ".join(rule.per_model) or "no per-model parameters"
                errors.append(
                    (("models", index, name), f"{method} takes no {name} (it takes {takes})")
                )
            elif value is None and name in rule.required:
                errors.append((("models", index, name), f"{method} needs a {name} for each model"))
    for name in SHARED_FIELDS:
        if name in shared and name not in rule.shared:
            takes = ", ".join(rule.shared) or "none"
            errors.append(
                (("parameters", name), f"{method} takes no {name} (its parameters: {takes})")
            )
    for name in rule.shared_required:
        if name not in shared:
            errors.append((("parameters", name), f"{method} needs parameters.{name}"))
    weights = [float(v["weight"]) for v in inputs if v.get("weight") is not None]
    normalize = shared.get("normalize", method in ("linear", "ties", "della"))
    if weights and normalize and math.isclose(sum(weights), 0.0, abs_tol=1e-9):
        errors.append((("models",), "the weights sum to 0, which normalize divides by"))
    return errors


class MergeJobInput(InputParameters):
    """A model of a merge job, by catalog id; an adapter names the model it was trained on."""

    model_id: int = Field(..., ge=1)
    adapter_base_id: int | None = Field(
        None, ge=1, description="The model is a LoRA adapter of this one: merged into it first."
    )


class MergeJobParameters(BaseModel):
    """A merge job: the method, its models by catalog id, the parameters and the output."""

    model_config = ConfigDict(extra="forbid")

    method: Method
    base: MergeJobInput | None = None
    models: list[MergeJobInput] = Field(..., min_length=1, max_length=16)
    parameters: SharedParameters = Field(default_factory=SharedParameters)
    dtype: Dtype | None = Field(None, description="Of the merged weights; default: the base's.")
    tokenizer: Literal["base", "union"] = Field(
        "base",
        description="base: the base's (or first model's) tokenizer; union: every token of "
        "every model, embeddings of new tokens taken from the models that have them.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="For the random drops of dare, della.")
    # The model card's account of the merge: catalog names, never paths.
    card: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rules(self) -> MergeJobParameters:
        errors = method_errors(
            self.method,
            self.base is not None,
            [m.model_dump(include=set(PER_MODEL_FIELDS)) for m in self.models],
            self.parameters.given(),
        )
        if errors:
            loc, message = errors[0]
            raise ValueError(f"{'.'.join(str(p) for p in loc)}: {message}")
        return self

    def catalog_models(self) -> set[int]:
        """Every catalog id the plan needs a directory for."""
        ids: set[int] = set()
        for item in [self.base, *self.models]:
            if item is not None:
                ids.add(item.model_id)
                if item.adapter_base_id is not None:
                    ids.add(item.adapter_base_id)
        return ids


def _reference(item: MergeJobInput, models: dict[int, str]) -> str:
    """mergekit's model reference: a directory, or `base+adapter` for a LoRA adapter."""
    path = models[item.model_id]
    if item.adapter_base_id is not None:
        return f"{models[item.adapter_base_id]}+{path}"
    return path


def mergekit_config(parameters: MergeJobParameters, models: dict[int, str]) -> dict[str, Any]:
    """The mergekit configuration (what `mergekit-yaml` reads) of a merge job."""
    entries: list[dict[str, Any]] = []
    for item in parameters.models:
        own = item.model_dump(include=set(PER_MODEL_FIELDS), exclude_none=True)
        entries.append({"model": _reference(item, models), **({"parameters": own} if own else {})})
    config: dict[str, Any] = {"merge_method": parameters.method, "models": entries}
    if parameters.base is not None:
        base = _reference(parameters.base, models)
        config["base_model"] = base
        if parameters.method in ("slerp", "model_stock"):
            # Both read the base's tensors among the inputs.
            config["models"] = [{"model": base}, *entries]
    shared = parameters.parameters.given()
    if shared:
        config["parameters"] = shared
    if parameters.dtype is not None:
        config["dtype"] = parameters.dtype
    if parameters.tokenizer == "union":
        config["tokenizer"] = {"source": "union"}
    return config


@register
class BuiltinMerge:
    """Merge models with mergekit: linear, slerp, task arithmetic, ties, dare, model stock."""

    backend: ClassVar[str] = "builtin"
    algorithm: ClassVar[str] = "merge"
    description: ClassVar[str] = (
        "Merge registered models (linear, slerp, task arithmetic, ties, dare, model stock, "
        "breadcrumbs, della) into a new model with mergekit; LoRA adapters merged into their "
        "base first. Submit through /merges, which checks that the models fit together."
    )
    requires_gpu: ClassVar[bool] = False
    data_task: ClassVar[str | None] = None
    parameters: ClassVar[type[BaseModel]] = MergeJobParameters
    graceful_stop: ClassVar[bool] = False

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """The program's argv, environment and config file."""
        assert isinstance(hyperparameters, MergeJobParameters)
        models = dict(context.models)
        missing = sorted(hyperparameters.catalog_models() - set(models))
        if missing:
            raise InvalidInput(
                ("body", "hyperparameters", "models"),
                f"catalog models {missing} are not on this host",
            )
        config = {
            "mergekit": mergekit_config(hyperparameters, models),
            "output_dir": context.run_dir,
            "model_dir": MODEL_DIR,
            "metrics_path": f"{context.run_dir}/metrics.jsonl",
            "seed": hyperparameters.seed,
            "out_shard_bytes": OUT_SHARD_BYTES,
            "device": f"cuda:{context.devices[0]}"
            if context.devices and not context.simulated_devices
            else "cpu",
            "card": hyperparameters.card,
        }
        env = {
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(context.cpu_threads),
        }
        if context.devices and not context.simulated_devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in context.devices)
            config["device"] = "cuda:0"
        return LaunchPlan(
            backend=self.backend,
            algorithm=self.algorithm,
            argv=(context.python, "-m", MERGE_MODULE, "--config", CONFIG_FILE),
            env=env,
            files={CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True)},
        )
