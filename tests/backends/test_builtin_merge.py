"""The merge pair's rules and plan: which method takes what, and what the program is given."""

from __future__ import annotations

import json
from typing import Any

import pytest

from training_platform.backends.base import LaunchContext, get_backend, validate_parameters
from training_platform.backends.builtin.merge import MergeJobParameters, method_errors
from training_platform.core.errors import InvalidInput


def _errors(
    method: str, base: bool, inputs: list[dict[str, Any]], shared: dict[str, Any]
) -> list[tuple[Any, str]]:
    return method_errors(method, base, inputs, shared)


@pytest.mark.parametrize(
    ("method", "base", "inputs", "shared", "loc", "words"),
    [
        ("slerp", True, [{}], {}, ("parameters", "t"), "needs parameters.t"),
        ("slerp", True, [{}, {}], {"t": 0.5}, ("models",), "exactly 1 models besides the base"),
        ("slerp", False, [{}], {"t": 0.5}, ("base",), "needs a base"),
        ("linear", True, [{"weight": 1}, {"weight": 1}], {}, ("base",), "takes no base"),
        ("linear", False, [{"weight": 1}], {}, ("models",), "2 to 16 models"),
        ("linear", False, [{"weight": 1}, {}], {}, ("models", 1, "weight"), "needs a weight"),
        ("ties", True, [{"weight": 1}], {}, ("models", 0, "density"), "needs a density"),
        (
            "ties",
            True,
            [{"weight": 1, "density": 0.5, "gamma": 0.1}],
            {},
            ("models", 0, "gamma"),
            "takes no gamma",
        ),
        (
            "ties",
            True,
            [{"weight": 1, "density": 1}],
            {"rescale": True},
            ("parameters", "rescale"),
            "takes no rescale",
        ),
        ("model_stock", True, [{}], {}, ("models",), "2 to 16 models"),
        ("linear", False, [{"weight": 1}, {"weight": -1}], {}, ("models",), "sum to 0"),
    ],
)
def test_each_method_refuses_what_it_does_not_take(
    method: str,
    base: bool,
    inputs: list[dict[str, Any]],
    shared: dict[str, Any],
    loc: tuple[Any, ...],
    words: str,
) -> None:
    found = _errors(method, base, inputs, shared)
    assert found, "expected a refusal"
    assert found[0][0] == loc and words in found[0][1], found


def test_well_formed_requests_pass_for_every_method() -> None:
    good = {
        "linear": (False, [{"weight": 1}, {"weight": 2}], {"normalize": True}),
        "slerp": (True, [{}], {"t": 0.3}),
        "task_arithmetic": (True, [{"weight": 0.5}], {"lambda": 1.0}),
        "ties": (True, [{"weight": 0.5, "density": 0.5}], {"int8_mask": True}),
        "dare_ties": (True, [{"weight": 0.5, "density": 0.5}], {"rescale": False}),
        "dare_linear": (True, [{"weight": 0.5, "density": 0.5}], {}),
        "model_stock": (True, [{}, {}], {"filter_wise": True}),
        "breadcrumbs": (True, [{"weight": 0.5, "density": 0.9, "gamma": 0.01}], {}),
        "della": (True, [{"weight": 0.5, "density": 0.5, "epsilon": 0.1}], {}),
    }
    for method, (base, inputs, shared) in good.items():
        assert _errors(method, base, inputs, shared) == [], method


def test_a_job_names_models_by_catalog_id_and_the_plan_gets_their_directories() -> None:
    backend = get_backend("builtin", "merge")
    values = {
        "method": "ties",
        "base": {"model_id": 1},
        "models": [
            {"model_id": 2, "weight": 0.5, "density": 0.5},
            {"model_id": 3, "adapter_base_id": 1, "weight": 0.5, "density": 0.7},
        ],
        "parameters": {"lambda": 0.8},
    }
    parameters = validate_parameters(backend, values)
    assert isinstance(parameters, MergeJobParameters)
    assert parameters.catalog_models() == {1, 2, 3}
    context = LaunchContext(
        run_dir="/runs/7/attempt-1",
        python="/venv/bin/python",
        model_path="/models/a",
        dataset_path="",
        dataset_format="",
        models={1: "/models/a", 2: "/models/b", 3: "/runs/5/attempt-1/model"},
    )
    plan = backend.plan(parameters, context)
    assert plan.argv == (
        "/venv/bin/python",
        "-m",
        "training_platform.trainers.merge",
        "--config",
        "merge_config.json",
    )
    config = json.loads(plan.files["merge_config.json"])
    spec = config["mergekit"]
    assert spec["base_model"] == "/models/a" and spec["parameters"] == {"lambda": 0.8}
    # An adapter is merged into its base first: mergekit's BASE+ADAPTER reference.
    assert [m["model"] for m in spec["models"]] == [
        "/models/b",
        "/models/a+/runs/5/attempt-1/model",
    ]
    assert spec["models"][1]["parameters"] == {"weight": 0.5, "density": 0.7}
    assert config["device"] == "cpu" and plan.env["HF_HUB_OFFLINE"] == "1"
    missing = LaunchContext(**{**context.__dict__, "models": {1: "/models/a"}})
    with pytest.raises(InvalidInput, match=r"\[2, 3\] are not on this host"):
        backend.plan(parameters, missing)


def test_a_job_that_breaks_the_rules_is_refused_naming_the_field() -> None:
    backend = get_backend("builtin", "merge")
    with pytest.raises(InvalidInput) as caught:
        validate_parameters(
            backend, {"method": "slerp", "base": {"model_id": 1}, "models": [{"model_id": 2}]}
        )
    assert "parameters.t" in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        validate_parameters(
            backend,
            {
                "method": "ties",
                "base": {"model_id": 1},
                "models": [{"model_id": 2, "weight": 1, "density": 1.5}],
            },
        )
    assert caught.value.loc == ("body", "hyperparameters", "models", 0, "density")
