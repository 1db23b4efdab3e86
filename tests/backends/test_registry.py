"""The backend registry and parameter validation: duplicates, misses, and 422-style errors."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from training_platform.backends import base
from training_platform.backends.base import (
    LaunchContext,
    LaunchPlan,
    all_backends,
    get_backend,
    register,
    validate_parameters,
)
from training_platform.backends.trl.sft import SftParameters, TrlSft
from training_platform.core.errors import InvalidInput


class _NoParameters(BaseModel):
    pass


def _backend_class(backend: str, algorithm: str) -> type:
    class Fake:
        description: ClassVar[str] = "test double"
        requires_gpu: ClassVar[bool] = False
        data_task: ClassVar[str] = "sft"
        parameters: ClassVar[type[BaseModel]] = _NoParameters

        def plan(self, hyperparameters: BaseModel, context: LaunchContext) -> LaunchPlan:
            return LaunchPlan(backend=backend, algorithm=algorithm, argv=(context.python,))

    Fake.backend = backend  # type: ignore[attr-defined]
    Fake.algorithm = algorithm  # type: ignore[attr-defined]
    return Fake


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], Any]:
    """A private copy of the registry (with the built-in pairs), restored after the test."""
    all_backends()  # loads the built-in pairs into the real registry first
    private = dict(base._REGISTRY)
    monkeypatch.setattr(base, "_REGISTRY", private)
    return private


def test_the_builtin_trl_sft_pair_is_registered() -> None:
    pairs = [(b.backend, b.algorithm) for b in all_backends()]
    assert ("trl", "sft") in pairs
    assert pairs == sorted(pairs)
    assert isinstance(get_backend("trl", "sft"), TrlSft)


def test_registering_a_pair_twice_is_refused(registry: dict[tuple[str, str], Any]) -> None:
    register(_backend_class("fake", "sft"))
    first = registry[("fake", "sft")]

    with pytest.raises(ValueError, match=r"fake.*sft.*registered twice"):
        register(_backend_class("fake", "sft"))
    with pytest.raises(ValueError, match="registered twice"):
        register(_backend_class("trl", "sft"))

    assert registry[("fake", "sft")] is first
    assert isinstance(registry[("trl", "sft")], TrlSft)


def test_an_unknown_backend_names_the_field_and_lists_the_backends(
    registry: dict[tuple[str, str], Any],
) -> None:
    register(_backend_class("fake", "ppo"))

    with pytest.raises(InvalidInput) as caught:
        get_backend("nope", "sft")

    assert caught.value.loc == ("body", "backend")
    assert caught.value.status_code == 422
    assert "'nope'" in caught.value.message
    assert "available: builtin, fake, trl, verl" in caught.value.message


def test_an_unsupported_algorithm_lists_what_the_backend_offers() -> None:
    with pytest.raises(InvalidInput) as caught:
        get_backend("trl", "kto")

    assert caught.value.loc == ("body", "algorithm")
    assert "'kto'" in caught.value.message
    assert "trl offers: dpo, grpo, gspo, ppo, sft" in caught.value.message


def test_verl_dpo_points_at_trl() -> None:
    with pytest.raises(InvalidInput) as caught:
        get_backend("verl", "dpo")
    assert caught.value.loc == ("body", "algorithm")
    assert caught.value.message == "backend 'verl' does not support 'dpo'; use backend 'trl'"


def test_an_algorithm_offered_elsewhere_names_the_backends_that_have_it(
    registry: dict[tuple[str, str], Any],
) -> None:
    register(_backend_class("fake", "kto"))

    with pytest.raises(InvalidInput) as caught:
        get_backend("trl", "kto")

    assert caught.value.loc == ("body", "algorithm")
    assert "use backend 'fake'" in caught.value.message


def test_validate_parameters_accepts_an_empty_spec_with_defaults() -> None:
    parameters = validate_parameters(get_backend("trl", "sft"), {})
    assert parameters == SftParameters()
    assert parameters.model_dump()["learning_rate"] == 2e-5


def test_validate_parameters_keeps_given_values() -> None:
    parameters = validate_parameters(
        get_backend("trl", "sft"), {"learning_rate": 1e-4, "max_steps": 20, "lora": {"rank": 8}}
    )
    dumped = parameters.model_dump()
    assert dumped["learning_rate"] == 1e-4 and dumped["max_steps"] == 20
    assert dumped["lora"]["rank"] == 8
    assert {k: v for k, v in dumped.items() if k not in ("learning_rate", "max_steps", "lora")} == {
        k: v
        for k, v in SftParameters().model_dump().items()
        if k not in ("learning_rate", "max_steps", "lora")
    }


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"learning_rate": -1e-5}, "learning_rate"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"num_train_epochs": -1}, "num_train_epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": -1}, "max_steps"),
        ({"per_device_train_batch_size": 1_000_000}, "per_device_train_batch_size"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"max_length": 4}, "max_length"),
        ({"max_length": 10**9}, "max_length"),
        ({"warmup_steps": -3}, "warmup_steps"),
        ({"weight_decay": 5}, "weight_decay"),
        ({"lr_scheduler_type": "sawtooth"}, "lr_scheduler_type"),
        ({"seed": -1}, "seed"),
        ({"lora_r": -8}, "lora_r"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lr": 0.1}, "lr"),
        ({"learning_rate": 1e-4, "epochs": 3}, "epochs"),
    ],
)
def test_validate_parameters_names_the_bad_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_parameters(get_backend("trl", "sft"), values)

    assert caught.value.loc == ("body", "hyperparameters", field)
    assert caught.value.status_code == 422
    # The field is named by loc (clients print "hyperparameters.<field>: <reason>"); the message
    # is the reason alone, so it is never said twice.
    assert caught.value.message and field not in caught.value.message.split(":")[0]
