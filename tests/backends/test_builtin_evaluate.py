"""The builtin/evaluate pair: its parameters, and a pure plan for trainers/evaluate.py.

The golden file tests/backends/golden/builtin_evaluate_plan.json holds the whole plan for one
fixed LaunchContext. After an intended change, regenerate it and review the diff:

    TP_TEST_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/backends/test_builtin_evaluate.py
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from training_platform.backends.base import (
    LaunchContext,
    LaunchPlan,
    all_backends,
    get_backend,
    validate_parameters,
)
from training_platform.backends.builtin.evaluate import (
    CONFIG_FILE,
    EVALUATE_MODULE,
    BuiltinEvaluate,
    EvaluateParameters,
)
from training_platform.core.errors import InvalidInput
from training_platform.runners.launcher import METRICS_FILE
from training_platform.trainers.evaluate import parse_config

GOLDEN = Path(__file__).parent / "golden" / "builtin_evaluate_plan.json"
REGENERATE_FLAG = "TP_TEST_REGENERATE_GOLDEN"

CONTEXT = LaunchContext(
    run_dir="/srv/tp/runs/21/attempt-1",
    python="/opt/tp/.venv/bin/python",
    model_path="/srv/tp/runs/17/attempt-1/model",
    dataset_path="/srv/tp/datasets/prepared/rl/4567cdef-v1.parquet",
    dataset_format="rl",
    model_is_local=True,
    devices=(2, 5),
    gpus=2,
    cpu_threads=4,
    platform_dir="/opt/tp/training_platform",
)

# Every field differs from its default (a test holds that).
CHANGED: dict[str, Any] = {
    "metric": "exact_match",
    "max_new_tokens": 64,
    "max_samples": 20,
    "batch_size": 4,
    "engine": "transformers",
    "kv_cache_gib": 2.0,
    "enforce_eager": True,
    "temperature": 0.7,
    "top_p": 0.9,
    "seed": 3,
    "n": 4,
}


def backend() -> BuiltinEvaluate:
    found = get_backend("builtin", "evaluate")
    assert isinstance(found, BuiltinEvaluate)
    return found


def make_plan(context: LaunchContext = CONTEXT, **values: Any) -> LaunchPlan:
    """The plan for these parameters, validated as the API does."""
    parameters = validate_parameters(backend(), values, gpus=context.gpus)
    return backend().plan(parameters, context)


def written_config(plan: LaunchPlan) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(plan.files[CONFIG_FILE])
    return config


def test_the_pair_is_registered_and_runs_anywhere() -> None:
    assert ("builtin", "evaluate") in [(b.backend, b.algorithm) for b in all_backends()]
    pair = backend()
    assert pair.requires_gpu is False
    assert pair.data_task == "rl"
    assert pair.graceful_stop is False
    assert pair.parameters is EvaluateParameters
    assert pair.description


def test_the_parameters_their_defaults_and_descriptions() -> None:
    defaults = EvaluateParameters().model_dump()
    assert defaults == {
        "metric": "numeric_match",
        "max_new_tokens": 32,
        "max_samples": None,
        "batch_size": 16,
        "engine": "auto",
        "endpoint": None,
        "kv_cache_gib": 1.0,
        "enforce_eager": False,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "n": 1,
    }
    assert set(CHANGED) == set(defaults) - {"endpoint"}
    assert [name for name in CHANGED if CHANGED[name] == defaults[name]] == []
    fields = EvaluateParameters.model_fields
    assert [name for name, field in fields.items() if not field.description] == []
    assert EvaluateParameters.model_json_schema()["additionalProperties"] is False


def test_the_plan_runs_the_evaluate_program_with_its_config() -> None:
    plan = make_plan(**CHANGED)

    assert plan.argv == (CONTEXT.python, "-m", EVALUATE_MODULE, "--config", CONFIG_FILE)
    assert (plan.backend, plan.algorithm) == ("builtin", "evaluate")
    assert set(plan.files) == {CONFIG_FILE}
    assert LaunchPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    config = written_config(plan)
    assert config == {
        "model_path": CONTEXT.model_path,
        "dataset_path": CONTEXT.dataset_path,
        "output_dir": CONTEXT.run_dir,
        "metrics_path": f"{CONTEXT.run_dir}/{METRICS_FILE}",
        "gpus": 2,
        **CHANGED,
    }
    # The program accepts what the backend writes.
    parsed = parse_config(plan.files[CONFIG_FILE])
    assert parsed.metric == "exact_match" and parsed.max_samples == 20 and parsed.gpus == 2


def test_user_paths_stay_off_the_command_line() -> None:
    context = dataclasses.replace(CONTEXT, model_path="/srv/tp/models/x; rm -rf ~")
    plan = make_plan(context)
    assert not any("rm -rf" in part for part in plan.argv)
    assert written_config(plan)["model_path"] == context.model_path


def test_the_environment_follows_the_context() -> None:
    plan = make_plan()
    assert plan.env == {
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "2,5",
        "OMP_NUM_THREADS": "4",
    }

    cpu = dataclasses.replace(
        CONTEXT, model_path="Qwen/Qwen2.5-0.5B", model_is_local=False, devices=(), gpus=0
    )
    plan = make_plan(cpu)
    assert "HF_HUB_OFFLINE" not in plan.env and "CUDA_VISIBLE_DEVICES" not in plan.env
    assert written_config(plan)["gpus"] == 0


def test_simulated_gpus_count_as_none() -> None:
    # The program runs on CPU then, where engine auto must pick transformers.
    simulated = dataclasses.replace(CONTEXT, simulated_devices=True)
    assert written_config(make_plan(simulated))["gpus"] == 0


def test_planning_is_pure() -> None:
    assert make_plan(**CHANGED) == make_plan(**CHANGED)
    assert not Path(CONTEXT.run_dir).exists()


def test_the_plan_matches_the_golden_file() -> None:
    plan = make_plan().to_dict()
    plan["files"] = {name: json.loads(text) for name, text in plan["files"].items()}
    if os.environ.get(REGENERATE_FLAG) == "1":
        GOLDEN.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    assert plan == json.loads(GOLDEN.read_text()), (
        f"the builtin/evaluate plan changed; if intended, run {REGENERATE_FLAG}=1 pytest "
        f"{__file__} and review the diff of {GOLDEN.name}"
    )


def test_a_dataset_of_another_data_task_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        make_plan(dataclasses.replace(CONTEXT, dataset_format="sft"))
    assert caught.value.loc == ("body", "dataset")
    assert "needs rl data" in caught.value.message


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"metric": "bleu"}, "metric", "Input should be"),
        ({"max_new_tokens": 0}, "max_new_tokens", "greater than or equal to 1"),
        ({"max_new_tokens": 5000}, "max_new_tokens", "less than or equal to 4096"),
        ({"max_samples": 0}, "max_samples", "greater than or equal to 1"),
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"batch_size": 2048}, "batch_size", "less than or equal to 1024"),
        ({"engine": "sglang"}, "engine", "Input should be"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"n": 65}, "n", "less than or equal to 64"),
        ({"beam_width": 4}, "beam_width", "Extra inputs"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(
    values: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_parameters(backend(), values)
    assert caught.value.loc == ("body", "hyperparameters", field)
    assert caught.value.status_code == 422
    assert message in caught.value.message


def test_an_endpoint_is_planned_with_its_key_apart_from_the_config() -> None:
    parameters = validate_parameters(backend(), {"endpoint": "remote"})
    assert parameters.engine == "api"  # type: ignore[attr-defined]
    view = {"name": "remote", "base_url": "https://example.com/v1", "model": "m"}
    context = dataclasses.replace(
        CONTEXT, model_path="", endpoint=view, endpoint_key="sk-secret-123"
    )
    plan = backend().plan(parameters, context)
    config = json.loads(plan.files[CONFIG_FILE])
    assert config["endpoint"] == view and config["api_key_file"] == "endpoint.key"
    assert config["engine"] == "api" and "endpoint.key" not in plan.files
    assert plan.secrets == {"endpoint.key": "sk-secret-123"}
    assert "sk-secret-123" not in json.dumps(plan.to_dict()) + repr(plan) + repr(context)
    for values in ({"engine": "api"}, {"endpoint": "remote", "engine": "transformers"}):
        with pytest.raises(InvalidInput):
            validate_parameters(backend(), values)


def test_the_vllm_engine_runs_in_vllms_own_environment() -> None:
    context = dataclasses.replace(
        CONTEXT, vllm_python="/opt/vllm/bin/python", devices=(), gpus=0, simulated_devices=False
    )
    on_cpu = backend().plan(validate_parameters(backend(), {"engine": "vllm"}), context)
    assert on_cpu.argv[0] == "/opt/vllm/bin/python"
    assert on_cpu.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    transformers = backend().plan(
        validate_parameters(backend(), {"engine": "transformers"}), context
    )
    assert transformers.argv[0] == CONTEXT.python
    # auto takes vLLM only with GPUs; without a vLLM environment the platform's own Python.
    auto_cpu = dataclasses.replace(context, gpus=0, devices=(), simulated_devices=False)
    assert backend().plan(validate_parameters(backend(), {}), auto_cpu).argv[0] == CONTEXT.python
    plain = dataclasses.replace(CONTEXT, vllm_python="")
    assert backend().plan(validate_parameters(backend(), {"engine": "vllm"}), plain).argv[0] == (
        CONTEXT.python
    )
