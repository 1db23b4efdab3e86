"""The backend seam: pure translators from a job spec to a LaunchPlan, registered by pair.

A backend never touches the disk, the network or a process; it only computes. Runners
carry out the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel

from training_platform.core.errors import InvalidInput

# What a backend's prepared dataset holds (see docs/datasets.md for the exact columns):
#   sft         parquet, column `messages` (OpenAI chat messages, at least one assistant turn)
#   preference  parquet, columns `prompt`, `chosen`, `rejected` (strings)
#   rl          parquet, verl's RL layout: `data_source`, `prompt` (chat messages), `ability`,
#               `reward_model` {style, ground_truth}, `extra_info` {index, split}
DATA_TASKS = ("sft", "preference", "rl")

# KL to the reference policy, estimated per token: the same names on both backends (verl's
# kl_penalty / kl_loss_type; the TRL backend's PPO computes them in trainers/ppo.py).
KlEstimator = Literal["k1", "k2", "k3", "low_var_kl"]
KL_ESTIMATOR_TEXT = (
    "How the KL to the reference policy is estimated per token: k1 = log p - log p_ref, "
    "k2 = (log p - log p_ref)^2 / 2, k3 = p_ref/p - 1 - log(p_ref/p), low_var_kl = k3 clipped "
    "to [-10, 10] (verl's kl_penalty / kl_loss_type)."
)


@dataclass(frozen=True)
class LaunchContext:
    """Everything a backend needs to know about where and on what the plan will run."""

    run_dir: str  # absolute, on the host that runs the plan
    python: str  # interpreter of the platform's environment on that host
    model_path: str  # a local model directory, or a hub id when model_is_local is False
    dataset_path: str  # the prepared dataset file for the backend's data task
    dataset_format: str  # the data task of that file: sft | preference | rl
    # The held-out rows of the job's validation split, prepared like dataset_path (None: none).
    validation_path: str | None = None
    model_is_local: bool = True
    devices: tuple[int, ...] = ()  # leased GPU indices (empty: CPU, or none leased yet)
    simulated_devices: bool = False  # the leased GPUs are simulated: run on CPU as one process
    gpus: int = 0  # GPUs the job asked for
    cpu_threads: int = 1
    resume_from: str | None = None  # absolute checkpoint directory to continue from
    reward_path: str | None = None  # file holding the reward function (RL algorithms)
    reward_function: str | None = None  # its name in that file
    platform_dir: str = ""  # the installed training_platform package on that host
    # The interpreter of a vLLM environment on that host ("" when it has none): the vllm
    # engine's programs run with it (vLLM pins its own torch and transformers).
    vllm_python: str = ""
    # An endpoint the run calls (evaluation of an endpoint): its address and limits, and its
    # API key apart, for the plan's secrets only.
    endpoint: Mapping[str, Any] | None = None
    endpoint_key: str | None = field(default=None, repr=False)
    # Catalog models a plan names by id besides the job's model (a merge's inputs): id ->
    # local directory, resolved by the platform (a request never carries a path).
    models: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchPlan:
    """What to start: an argv list (never a shell string), its environment and its files."""

    backend: str
    algorithm: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)  # run-dir-relative path -> content
    # Files written with mode 0600 and never stored: not in to_dict, plan.json or the job's
    # plan (an endpoint's API key). The program reads and removes them.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored on the job and written to plan.json: without the secrets."""
        return {
            "backend": self.backend,
            "algorithm": self.algorithm,
            "argv": list(self.argv),
            "env": dict(self.env),
            "files": dict(self.files),
        }

    def to_payload(self) -> dict[str, Any]:
        """to_dict with the secrets, for a runner that hands the plan to another process."""
        return {**self.to_dict(), "secrets": dict(self.secrets)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LaunchPlan:
        """Inverse of to_dict (and of to_payload)."""
        return cls(
            backend=str(data["backend"]),
            algorithm=str(data["algorithm"]),
            argv=tuple(str(a) for a in data["argv"]),
            env={str(k): str(v) for k, v in dict(data.get("env", {})).items()},
            files={str(k): str(v) for k, v in dict(data.get("files", {})).items()},
            secrets={str(k): str(v) for k, v in dict(data.get("secrets", {})).items()},
        )


class Backend(Protocol):
    """A (backend, algorithm) pair that can plan runs."""

    backend: ClassVar[str]
    algorithm: ClassVar[str]
    description: ClassVar[str]
    requires_gpu: ClassVar[bool]
    # One of DATA_TASKS: what the prepared dataset must hold; None: the pair takes no dataset.
    data_task: ClassVar[str | None]
    parameters: ClassVar[type[BaseModel]]
    # Whether the trainer saves a checkpoint and exits when STOP_FILE appears in its run
    # directory (pause, time limit); otherwise it can only be killed or suspended.
    graceful_stop: ClassVar[bool]

    def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
        """Translate validated hyperparameters into a plan. Pure."""
        ...


_REGISTRY: dict[tuple[str, str], Backend] = {}


_B = TypeVar("_B")


def register(cls: type[_B]) -> type[_B]:
    """Class decorator: add a backend, refusing a pair that is already taken."""
    instance: Backend = cls()  # type: ignore[assignment]
    key = (instance.backend, instance.algorithm)
    if key in _REGISTRY:
        raise ValueError(f"backend pair {key} registered twice")
    _REGISTRY[key] = instance
    return cls


def all_backends() -> list[Backend]:
    """Every registered pair, sorted."""
    _load_builtin()
    return [_REGISTRY[key] for key in sorted(_REGISTRY)]


def get_backend(backend: str, algorithm: str) -> Backend:
    """The pair, or InvalidInput that says which backends do support the algorithm."""
    _load_builtin()
    found = _REGISTRY.get((backend, algorithm))
    if found is not None:
        return found
    backends = sorted({b for b, _ in _REGISTRY})
    if backend not in backends:
        raise InvalidInput(
            ("body", "backend"), f"unknown backend {backend!r}; available: {', '.join(backends)}"
        )
    supporters = sorted(b for b, a in _REGISTRY if a == algorithm)
    offered = sorted(a for b, a in _REGISTRY if b == backend)
    hint = (
        f"; use backend {' or '.join(repr(s) for s in supporters)}"
        if supporters
        else f"; {backend} offers: {', '.join(offered)}"
    )
    raise InvalidInput(
        ("body", "algorithm"), f"backend {backend!r} does not support {algorithm!r}{hint}"
    )


def validate_parameters(backend: Backend, values: Mapping[str, Any], *, gpus: int = 0) -> BaseModel:
    """The backend's parameter model, or InvalidInput naming the first bad field.

    Cross-field rules that depend on the job's resources (tensor parallel <= GPUs asked for)
    read `gpus` from the validation context: `info.context["gpus"]`.
    """
    from pydantic import ValidationError

    try:
        return backend.parameters.model_validate(dict(values), context={"gpus": gpus})
    except ValidationError as error:
        first = error.errors()[0]
        # A rule about the GPUs asked for belongs to resources.gpus, not to a hyperparameter.
        if first["loc"][:1] == ("gpus",):
            raise InvalidInput(("body", "resources", "gpus"), str(first["msg"])) from None
        loc = ("body", "hyperparameters", *first["loc"])
        raise InvalidInput(loc, str(first["msg"])) from None


_BUILTIN_LOADERS: list[Callable[[], None]] = []


def _load_builtin() -> None:
    # Importing the packages registers their pairs; done lazily so that this module stays
    # importable from anywhere without import cycles.
    if not _BUILTIN_LOADERS:
        import training_platform.backends.builtin
        import training_platform.backends.trl  # noqa: F401
        from training_platform.backends import verl  # noqa: F401

        _BUILTIN_LOADERS.append(lambda: None)


def parameter_error(field: str, message: str) -> InvalidInput:
    """An InvalidInput for a hyperparameter, for checks outside the parameter model."""
    return InvalidInput(("body", "hyperparameters", field), message)
