"""TRL SFT backend: the plan it computes, pinned by a golden file and checked against the trainer.

The golden file tests/backends/golden/trl_sft_plan.json holds the whole plan for one fixed
LaunchContext. After an intended change to the plan, regenerate it and review the diff:

    TP_TEST_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/backends/test_trl_sft.py

(tests/conftest.py drops TP_* variables from os.environ at import, so the flag is also read from
the environment the process was started with.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, get_args

import annotated_types
import pytest

from training_platform.backends.base import LaunchContext, LaunchPlan, get_backend
from training_platform.backends.trl.sft import CONFIG_FILE, TRAINER_MODULE, SftParameters, TrlSft
from training_platform.runners.launcher import METRICS_FILE
from training_platform.trainers.trl_train import TrainConfig, load_config

GOLDEN = Path(__file__).parent / "golden" / "trl_sft_plan.json"
REGENERATE_FLAG = "TP_TEST_REGENERATE_GOLDEN"

GOLDEN_CONTEXT = LaunchContext(
    run_dir="/srv/tp/runs/17/attempt-1",
    python="/opt/tp/.venv/bin/python",
    model_path="/srv/tp/models/builtin/tiny-qwen2",
    dataset_path="/srv/tp/datasets/builtin/tiny-sft.jsonl",
    dataset_format="messages",
    model_is_local=True,
    devices=(0, 3),
    cpu_threads=4,
)

# Every field differs from its default (test_every_field_is_changed holds that).
CHANGED: dict[str, Any] = {
    "num_train_epochs": 2.5,
    "max_steps": 40,
    "learning_rate": 3e-4,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "max_length": 256,
    "warmup_steps": 5,
    "weight_decay": 0.01,
    "lr_scheduler_type": "cosine",
    "logging_steps": 2,
    "save_steps": 10,
    "save_total_limit": 3,
    "seed": 7,
    "assistant_only_loss": True,
    "lora_r": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.1,
}


def _regenerate() -> bool:
    return os.environ.get(REGENERATE_FLAG) == "1"


def make_plan(context: LaunchContext = GOLDEN_CONTEXT, **values: Any) -> LaunchPlan:
    """The plan of trl/sft for these hyperparameters, validated as the API does."""
    return TrlSft().plan(SftParameters.model_validate(values), context)


def written_config(plan: LaunchPlan) -> dict[str, Any]:
    """The trainer config file the plan asks the runner to write."""
    config: dict[str, Any] = json.loads(plan.files[CONFIG_FILE])
    return config


def readable(plan: LaunchPlan) -> dict[str, Any]:
    """The plan's JSON form with its JSON files decoded, so that golden diffs are readable."""
    data = plan.to_dict()
    data["files"] = {name: json.loads(text) for name, text in data["files"].items()}
    return data


# --- argv, env, files ---------------------------------------------------------------------


def test_the_plan_is_an_argv_list_without_a_shell() -> None:
    context = LaunchContext(
        run_dir="/srv/tp/runs/1/attempt-1",
        python="/opt/tp/bin/python",
        model_path="/srv/tp/models/my model; rm -rf ~",
        dataset_path="/srv/tp/datasets/$(reboot).jsonl",
        dataset_format="messages",
    )
    plan = make_plan(context)

    assert isinstance(plan.argv, tuple)
    assert all(isinstance(part, str) for part in plan.argv)
    assert plan.argv == (context.python, "-m", TRAINER_MODULE, "--config", CONFIG_FILE)
    # User-influenced paths travel in the config file, never on the command line.
    assert not any("rm -rf" in part or "$(" in part for part in plan.argv)
    assert (plan.backend, plan.algorithm) == ("trl", "sft")
    assert LaunchPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_files_stay_inside_the_run_dir() -> None:
    plan = make_plan()
    assert set(plan.files) == {CONFIG_FILE}
    for name in plan.files:
        assert not Path(name).is_absolute()
        assert ".." not in Path(name).parts


def test_the_config_carries_the_resolved_paths_and_every_hyperparameter() -> None:
    config = written_config(make_plan(**CHANGED))

    assert config["algorithm"] == "sft"
    assert config["model_path"] == GOLDEN_CONTEXT.model_path
    assert config["dataset_path"] == GOLDEN_CONTEXT.dataset_path
    assert config["dataset_format"] == GOLDEN_CONTEXT.dataset_format
    assert config["output_dir"] == GOLDEN_CONTEXT.run_dir
    # The trainer writes metrics where the runner reads them.
    assert Path(config["metrics_path"]) == Path(GOLDEN_CONTEXT.run_dir) / METRICS_FILE
    assert config["hyperparameters"] == CHANGED


def test_max_steps_none_becomes_minus_one() -> None:
    assert written_config(make_plan())["hyperparameters"]["max_steps"] == -1
    assert written_config(make_plan(max_steps=12))["hyperparameters"]["max_steps"] == 12


def test_environment_follows_the_context() -> None:
    plan = make_plan()
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,3"
    assert plan.env["OMP_NUM_THREADS"] == "4"
    assert plan.env["HF_HUB_OFFLINE"] == "1"

    hub = LaunchContext(
        run_dir="/r",
        python="/p",
        model_path="Qwen/Qwen2.5-0.5B",
        dataset_path="/d.jsonl",
        dataset_format="messages",
        model_is_local=False,
        devices=(),
        cpu_threads=1,
    )
    plan = make_plan(hub)
    assert "HF_HUB_OFFLINE" not in plan.env
    assert "CUDA_VISIBLE_DEVICES" not in plan.env
    assert plan.env["OMP_NUM_THREADS"] == "1"
    assert all(isinstance(value, str) for value in plan.env.values())


def test_planning_is_pure() -> None:
    # Same input, same plan; paths that do not exist are no concern of the backend.
    assert make_plan(**CHANGED) == make_plan(**CHANGED)
    assert not Path(GOLDEN_CONTEXT.run_dir).exists()


def test_the_plan_matches_the_golden_file() -> None:
    plan = readable(make_plan(max_steps=30))
    if _regenerate():
        GOLDEN.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert plan == expected, (
        f"the trl/sft plan changed; if intended, run {REGENERATE_FLAG}=1 pytest {__file__} "
        "and review the diff of the golden file"
    )


# --- contract with the trainer ------------------------------------------------------------


def _bounds(name: str) -> tuple[Any, Any]:
    """The smallest and largest value SftParameters accepts for a numeric field."""
    field = SftParameters.model_fields[name]
    numeric = [
        t for t in (get_args(field.annotation) or (field.annotation,)) if t is not type(None)
    ]
    kind = numeric[0]
    step = 1 if kind is int else 1e-6
    low = high = None
    for limit in field.metadata:
        if isinstance(limit, annotated_types.Ge):
            low = limit.ge
        elif isinstance(limit, annotated_types.Gt):
            low = limit.gt + step
        elif isinstance(limit, annotated_types.Le):
            high = limit.le
        elif isinstance(limit, annotated_types.Lt):
            high = limit.lt - step
    assert low is not None and high is not None, f"{name} has no bounds"
    return kind(low), kind(high)


NUMERIC = [
    name
    for name, field in SftParameters.model_fields.items()
    if field.annotation in (int, float, int | None)
]
LOWEST = {name: _bounds(name)[0] for name in NUMERIC}
HIGHEST = {name: _bounds(name)[1] for name in NUMERIC}
SCHEDULERS = get_args(SftParameters.model_fields["lr_scheduler_type"].annotation)


def test_every_field_is_changed_in_the_changed_set() -> None:
    defaults = SftParameters().model_dump()
    assert set(CHANGED) == set(defaults), "update CHANGED with the new/removed fields"
    assert [name for name in defaults if CHANGED[name] == defaults[name]] == []


def _trainer_accepts(plan: LaunchPlan, tmp_path: Path) -> TrainConfig:
    """The trainer's own loader, on the config file exactly as the runner would write it."""
    config_path = tmp_path / CONFIG_FILE
    config_path.write_text(plan.files[CONFIG_FILE])
    strict = TrainConfig.model_validate_json(plan.files[CONFIG_FILE])
    assert load_config(config_path) == strict
    return strict


@pytest.fixture
def context(tmp_path: Path) -> LaunchContext:
    """A context whose model dir and dataset file exist, as the trainer checks."""
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    dataset = tmp_path / "datasets" / "tiny-sft.jsonl"
    dataset.parent.mkdir()
    dataset.write_text('{"messages": []}\n')
    return LaunchContext(
        run_dir=str(tmp_path / "runs" / "1" / "attempt-1"),
        python="/usr/bin/python3",
        model_path=str(model),
        dataset_path=str(dataset),
        dataset_format="messages",
    )


@pytest.mark.parametrize(
    "values",
    [{}, CHANGED, LOWEST, HIGHEST],
    ids=["defaults", "every-field-changed", "lowest-allowed", "highest-allowed"],
)
def test_the_trainer_accepts_the_config_the_backend_writes(
    values: dict[str, Any], context: LaunchContext, tmp_path: Path
) -> None:
    plan = make_plan(context, **values)
    config = _trainer_accepts(plan, tmp_path)

    assert str(config.model_path) == context.model_path
    assert str(config.dataset_path) == context.dataset_path
    assert str(config.output_dir) == context.run_dir
    # Nothing was dropped or reinterpreted on the way: the trainer sees what was asked for.
    assert config.hyperparameters.model_dump() == written_config(plan)["hyperparameters"]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_the_trainer_accepts_every_scheduler_the_backend_offers(
    scheduler: str, context: LaunchContext, tmp_path: Path
) -> None:
    config = _trainer_accepts(make_plan(context, lr_scheduler_type=scheduler), tmp_path)
    assert config.hyperparameters.lr_scheduler_type == scheduler


@pytest.mark.parametrize("dataset_format", TrlSft.dataset_formats)
def test_the_trainer_accepts_every_dataset_format_the_backend_declares(
    dataset_format: str, context: LaunchContext, tmp_path: Path
) -> None:
    context = LaunchContext(**{**context.__dict__, "dataset_format": dataset_format})
    config = _trainer_accepts(make_plan(context), tmp_path)
    assert config.dataset_format == dataset_format


def test_the_registered_pair_is_this_backend() -> None:
    backend = get_backend("trl", "sft")
    assert backend.parameters is SftParameters
    assert backend.requires_gpu is False
