"""TRL backends (sft, dpo, grpo, gspo, ppo): their plans, pinned by golden files and checked
against the trainer's own config model.

The golden files tests/backends/golden/trl_<algorithm>_plan.json hold the whole plan for one
fixed LaunchContext. After an intended change to a plan, regenerate them and review the diff:

    TP_TEST_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/backends/test_trl_backends.py

(tests/conftest.py drops TP_* variables from os.environ at import, so the flag is also read from
the environment the process was started with.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, get_args

import annotated_types
import pytest
from pydantic import BaseModel

from training_platform.backends.base import (
    DATA_TASKS,
    Backend,
    LaunchContext,
    LaunchPlan,
    get_backend,
    validate_parameters,
)
from training_platform.backends.trl.common import CONFIG_FILE, TRAINER_MODULE, LoraParameters
from training_platform.core.errors import InvalidInput
from training_platform.runners.launcher import METRICS_FILE
from training_platform.trainers.trl_train import TRAIN_CONFIG, TrainConfig, load_config

ALGORITHMS = ("sft", "dpo", "grpo", "gspo", "ppo")
RL = ("grpo", "gspo", "ppo")
GOLDEN_DIR = Path(__file__).parent / "golden"
REGENERATE_FLAG = "TP_TEST_REGENERATE_GOLDEN"

GOLDEN_CONTEXT = LaunchContext(
    run_dir="/srv/tp/runs/17/attempt-1",
    python="/opt/tp/.venv/bin/python",
    model_path="/srv/tp/models/builtin/tiny-qwen2",
    dataset_path="/srv/tp/datasets/prepared/sft/0123abcd-v1.parquet",
    dataset_format="sft",
    model_is_local=True,
    devices=(3,),
    gpus=1,
    cpu_threads=4,
    reward_path="/opt/tp/training_platform/rewards/builtin.py",
    reward_function="math_answer",
    platform_dir="/opt/tp/training_platform",
)

COMMON_CHANGED: dict[str, Any] = {
    "num_train_epochs": 2.5,
    "max_steps": 40,
    "learning_rate": 3e-4,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "warmup_steps": 5,
    "weight_decay": 0.01,
    "lr_scheduler_type": "cosine",
    "logging_steps": 2,
    "save_steps": 10,
    "save_total_limit": 3,
    "seed": 7,
    "gradient_checkpointing": False,
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
}
RL_CHANGED: dict[str, Any] = {
    "reward": "format",
    "max_completion_length": 64,
    "temperature": 0.7,
}
GROUP_CHANGED: dict[str, Any] = {
    "top_p": 0.9,
    "num_iterations": 2,
    "steps_per_generation": 2,
    "num_generations": 8,
}
# Every field differs from its default (test_every_field_is_changed holds that).
CHANGED: dict[str, dict[str, Any]] = {
    "sft": {**COMMON_CHANGED, "max_length": 256, "assistant_only_loss": False},
    "dpo": {
        **COMMON_CHANGED,
        "max_length": 256,
        "beta": 0.3,
        "loss_type": "robust",
        "label_smoothing": 0.1,
    },
    "grpo": {
        **COMMON_CHANGED,
        **RL_CHANGED,
        **GROUP_CHANGED,
        "beta": 0.04,
        "epsilon": 0.3,
        "epsilon_high": 0.28,
        "loss_type": "grpo",
        "scale_rewards": "batch",
    },
    "gspo": {
        **COMMON_CHANGED,
        **RL_CHANGED,
        **GROUP_CHANGED,
        "epsilon": 2e-4,
        "epsilon_high": 5e-4,
    },
    "ppo": {
        **COMMON_CHANGED,
        **RL_CHANGED,
        "kl_coef": 0.1,
        "kl_loss_coef": 0.01,
        "kl_estimator": "k3",
        "cliprange": 0.1,
        "cliprange_value": 0.5,
        "vf_coef": 0.5,
        "gamma": 0.99,
        "lam": 0.9,
        "ppo_epochs": 2,
        "num_mini_batches": 2,
        "whiten_rewards": True,
        "max_grad_norm": 0.5,
    },
}


def _regenerate() -> bool:
    return os.environ.get(REGENERATE_FLAG) == "1"


def backend_of(algorithm: str) -> Backend:
    """The registered trl pair."""
    return get_backend("trl", algorithm)


def context_for(
    algorithm: str, base: LaunchContext = GOLDEN_CONTEXT, **changes: Any
) -> LaunchContext:
    """`base` with the dataset format of the algorithm's data task."""
    return dataclasses.replace(base, dataset_format=backend_of(algorithm).data_task, **changes)


def make_plan(algorithm: str, context: LaunchContext | None = None, **values: Any) -> LaunchPlan:
    """The plan of trl/<algorithm> for these hyperparameters, validated as the API does."""
    backend = backend_of(algorithm)
    parameters = validate_parameters(backend, values)
    return backend.plan(parameters, context or context_for(algorithm))


def written_config(plan: LaunchPlan) -> dict[str, Any]:
    """The trainer config file the plan asks the runner to write."""
    config: dict[str, Any] = json.loads(plan.files[CONFIG_FILE])
    return config


def readable(plan: LaunchPlan) -> dict[str, Any]:
    """The plan's JSON form with its JSON files decoded, so that golden diffs are readable."""
    data = plan.to_dict()
    data["files"] = {name: json.loads(text) for name, text in data["files"].items()}
    return data


# --- registration and parameter models ----------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_pair_is_registered_and_runs_without_a_gpu(algorithm: str) -> None:
    backend = backend_of(algorithm)
    assert (backend.backend, backend.algorithm) == ("trl", algorithm)
    assert backend.requires_gpu is False
    assert backend.data_task in DATA_TASKS
    expected = {"sft": "sft", "dpo": "preference"}.get(algorithm, "rl")
    assert backend.data_task == expected


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    found = dict(model.model_fields)
    found.update({f"lora.{n}": f for n, f in LoraParameters.model_fields.items()})
    return found


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_parameter_has_a_description_and_a_json_schema(algorithm: str) -> None:
    parameters = backend_of(algorithm).parameters
    missing = [name for name, field in _fields(parameters).items() if not field.description]
    assert missing == []
    schema = parameters.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(parameters.model_fields)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_field_is_changed_in_the_changed_set(algorithm: str) -> None:
    defaults = backend_of(algorithm).parameters().model_dump()
    assert set(CHANGED[algorithm]) == set(defaults), "update CHANGED with new/removed fields"
    assert [name for name in defaults if CHANGED[algorithm][name] == defaults[name]] == []


# --- argv, env, files ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_plan_is_an_argv_list_without_a_shell(algorithm: str) -> None:
    context = context_for(
        algorithm,
        model_path="/srv/tp/models/my model; rm -rf ~",
        dataset_path="/srv/tp/datasets/$(reboot).parquet",
    )
    plan = make_plan(algorithm, context)

    assert plan.argv == (context.python, "-m", TRAINER_MODULE, "--config", CONFIG_FILE)
    # User-influenced paths travel in the config file, never on the command line.
    assert not any("rm -rf" in part or "$(" in part for part in plan.argv)
    assert (plan.backend, plan.algorithm) == ("trl", algorithm)
    assert LaunchPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert set(plan.files) == {CONFIG_FILE}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_config_carries_the_resolved_inputs_and_every_hyperparameter(algorithm: str) -> None:
    config = written_config(make_plan(algorithm, **CHANGED[algorithm]))
    context = context_for(algorithm)

    assert config["algorithm"] == algorithm
    assert config["model_path"] == context.model_path
    assert config["dataset_path"] == context.dataset_path
    assert config["dataset_format"] == backend_of(algorithm).data_task
    assert config["output_dir"] == context.run_dir
    assert config["resume_from"] is None
    # The trainer writes metrics where the runner reads them.
    assert Path(config["metrics_path"]) == Path(context.run_dir) / METRICS_FILE
    # The reward choice was resolved into a file and a function; it is no trainer knob.
    expected = {k: v for k, v in CHANGED[algorithm].items() if k != "reward"}
    assert config["hyperparameters"] == expected
    if algorithm in RL:
        assert config["reward"] == {"path": context.reward_path, "function": "math_answer"}
    else:
        assert "reward" not in config


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_resume_from_reaches_the_trainer(algorithm: str) -> None:
    checkpoint = "/srv/tp/runs/17/attempt-1/checkpoints/checkpoint-20"
    plan = make_plan(algorithm, context_for(algorithm, resume_from=checkpoint))
    assert written_config(plan)["resume_from"] == checkpoint


def test_max_steps_none_becomes_minus_one() -> None:
    assert written_config(make_plan("sft"))["hyperparameters"]["max_steps"] == -1
    assert written_config(make_plan("sft", max_steps=12))["hyperparameters"]["max_steps"] == 12


def test_environment_follows_the_context() -> None:
    plan = make_plan("grpo")
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "3"
    assert plan.env["OMP_NUM_THREADS"] == "4"
    assert plan.env["HF_HUB_OFFLINE"] == "1"

    hub = context_for("grpo", model_path="Qwen/Qwen2.5-0.5B", model_is_local=False, devices=())
    plan = make_plan("grpo", hub)
    assert "HF_HUB_OFFLINE" not in plan.env
    assert "CUDA_VISIBLE_DEVICES" not in plan.env
    assert all(isinstance(value, str) for value in plan.env.values())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_planning_is_pure(algorithm: str) -> None:
    # Same input, same plan; paths that do not exist are no concern of the backend.
    assert make_plan(algorithm, **CHANGED[algorithm]) == make_plan(algorithm, **CHANGED[algorithm])
    assert not Path(GOLDEN_CONTEXT.run_dir).exists()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_plan_matches_the_golden_file(algorithm: str) -> None:
    golden = GOLDEN_DIR / f"trl_{algorithm}_plan.json"
    task = backend_of(algorithm).data_task
    context = context_for(
        algorithm, dataset_path=f"/srv/tp/datasets/prepared/{task}/0123-v1.parquet"
    )
    plan = readable(make_plan(algorithm, context, max_steps=30))
    if _regenerate():
        golden.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    expected = json.loads(golden.read_text())
    assert plan == expected, (
        f"the trl/{algorithm} plan changed; if intended, run {REGENERATE_FLAG}=1 pytest "
        f"{__file__} and review the diff of {golden.name}"
    )


# --- refusals: InvalidInput names the field -----------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "values", "loc", "message"),
    [
        ("grpo", {"num_generations": 1}, ("num_generations",), "at least 2"),
        ("gspo", {"num_generations": 1}, ("num_generations",), "at least 2"),
        ("grpo", {"num_generations": 3}, ("num_generations",), "must divide the generation"),
        (
            "grpo",
            {"per_device_train_batch_size": 6, "num_generations": 4},
            ("num_generations",),
            "= 6",
        ),
        ("gspo", {"steps_per_generation": 1, "num_generations": 16}, ("num_generations",), "= 8"),
        ("sft", {"lora": {"rank": 0}}, ("lora", "rank"), "greater than or equal to 1"),
        ("ppo", {"lora": {"rank": 0}}, ("lora", "rank"), "greater than or equal to 1"),
        ("dpo", {"lora": {"rank": 4, "surprise": 1}}, ("lora", "surprise"), "Extra inputs"),
        ("sft", {"lora_r": 8}, ("lora_r",), "Extra inputs"),
        ("grpo", {"reward": "nope"}, ("reward",), "unknown reward 'nope'; built-in rewards"),
        ("ppo", {"reward": "file:../../etc/passwd"}, ("reward",), "unknown reward"),
        ("dpo", {"reward": "math_answer"}, ("reward",), "Extra inputs"),
        ("dpo", {"loss_type": "magic"}, ("loss_type",), "Input should be"),
        ("ppo", {"lam": 1.5}, ("lam",), "less than or equal to 1"),
        ("grpo", {"temperature": 0}, ("temperature",), "greater than 0"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(
    algorithm: str, values: dict[str, Any], loc: tuple[str, ...], message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_parameters(backend_of(algorithm), values)
    assert caught.value.loc == ("body", "hyperparameters", *loc)
    assert caught.value.status_code == 422
    assert message in caught.value.message


def test_the_accepted_reward_choices() -> None:
    for reward in ("math_answer", "format", "file:my_reward", "file:team.v2-final"):
        assert (
            validate_parameters(backend_of("grpo"), {"reward": reward}).model_dump()["reward"]
            == reward
        )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_gpus_beyond_what_the_algorithm_uses_are_refused(algorithm: str) -> None:
    backend = backend_of(algorithm)
    most = 1 if algorithm == "ppo" else 8  # our own PPO is one process
    validate_parameters(backend, {}, gpus=most)
    with pytest.raises(InvalidInput, match=rf"at most {most} GPU.*resources.gpus"):
        validate_parameters(backend, {}, gpus=most + 1)


@pytest.mark.parametrize("algorithm", ["sft", "dpo", "grpo", "gspo"])
def test_several_real_gpus_run_one_process_each_through_accelerate(algorithm: str) -> None:
    real = make_plan(algorithm, context_for(algorithm, gpus=4, devices=(0, 1, 2, 3)))
    assert real.argv[1:7] == (
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "4",
        "--num_machines",
    )
    assert real.argv[-4:] == ("-m", "training_platform.trainers.trl_train", "--config", CONFIG_FILE)
    assert real.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    simulated = make_plan(
        algorithm, context_for(algorithm, gpus=4, devices=(0, 1, 2, 3), simulated_devices=True)
    )
    assert simulated.argv[1:3] == ("-m", "training_platform.trainers.trl_train")
    assert simulated.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


@pytest.mark.parametrize("algorithm", RL)
def test_an_rl_plan_without_a_resolved_reward_is_refused(algorithm: str) -> None:
    context = context_for(algorithm, reward_path=None, reward_function=None)
    with pytest.raises(InvalidInput) as caught:
        make_plan(algorithm, context)
    assert caught.value.loc == ("body", "hyperparameters", "reward")


def test_a_dataset_of_another_data_task_is_refused() -> None:
    context = dataclasses.replace(GOLDEN_CONTEXT, dataset_format="preference")
    with pytest.raises(InvalidInput) as caught:
        make_plan("sft", context)
    assert caught.value.loc == ("body", "dataset")
    assert "needs sft data, not preference" in caught.value.message


# --- contract with the trainer ------------------------------------------------------------


def _bounds(field: Any) -> tuple[Any, Any]:
    """The smallest and largest value a numeric field accepts."""
    kinds = [t for t in (get_args(field.annotation) or (field.annotation,)) if t is not type(None)]
    kind = kinds[0]
    step = 1 if kind is int else 1e-6
    low = (field.json_schema_extra or {}).get("minimum")
    high = None
    for limit in field.metadata:
        if isinstance(limit, annotated_types.Ge):
            low = limit.ge
        elif isinstance(limit, annotated_types.Gt):
            low = limit.gt + step
        elif isinstance(limit, annotated_types.Le):
            high = limit.le
        elif isinstance(limit, annotated_types.Lt):
            high = limit.lt - step
    assert low is not None and high is not None, f"{field} has no bounds"
    return kind(low), kind(high)


def _extremes(algorithm: str, end: int) -> dict[str, Any]:
    parameters = backend_of(algorithm).parameters
    values = {
        name: _bounds(field)[end]
        for name, field in parameters.model_fields.items()
        if field.annotation in (int, float, int | None, float | None)
    }
    if "num_generations" in values and end == 0:
        # The smallest group (2) needs a generation batch it divides.
        values["per_device_train_batch_size"] = 2
    low_high = [_bounds(f)[end] for f in LoraParameters.model_fields.values() if f.metadata]
    values["lora"] = dict(zip(["rank", "alpha", "dropout"], low_high, strict=True))
    return values


def _trainer_accepts(plan: LaunchPlan, tmp_path: Path) -> TrainConfig:
    """The trainer's own loader, on the config file exactly as the runner would write it."""
    config_path = tmp_path / CONFIG_FILE
    config_path.write_text(plan.files[CONFIG_FILE])
    strict = TRAIN_CONFIG.validate_json(plan.files[CONFIG_FILE])
    assert load_config(config_path) == strict
    return strict


@pytest.fixture
def existing(tmp_path: Path) -> LaunchContext:
    """A context whose inputs (model, dataset, reward, checkpoint) exist, as the trainer checks."""
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    dataset = tmp_path / "datasets" / "prepared.parquet"
    dataset.parent.mkdir()
    dataset.write_bytes(b"PAR1")
    reward = tmp_path / "reward.py"
    reward.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
    )
    checkpoint = tmp_path / "runs" / "1" / "attempt-1" / "checkpoints" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    return LaunchContext(
        run_dir=str(tmp_path / "runs" / "1" / "attempt-2"),
        python="/usr/bin/python3",
        model_path=str(model),
        dataset_path=str(dataset),
        dataset_format="sft",
        resume_from=str(checkpoint),
        reward_path=str(reward),
        reward_function="compute_score",
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("values", ["defaults", "changed", "lowest", "highest"])
def test_the_trainer_accepts_the_config_the_backend_writes(
    algorithm: str, values: str, existing: LaunchContext, tmp_path: Path
) -> None:
    chosen = {
        "defaults": {},
        "changed": CHANGED[algorithm],
        "lowest": _extremes(algorithm, 0),
        "highest": _extremes(algorithm, 1),
    }[values]
    plan = make_plan(algorithm, context_for(algorithm, existing), **chosen)
    config = _trainer_accepts(plan, tmp_path)

    assert config.algorithm == algorithm
    assert str(config.model_path) == existing.model_path
    assert str(config.output_dir) == existing.run_dir
    assert str(config.resume_from) == existing.resume_from
    # Nothing was dropped or reinterpreted on the way: the trainer sees what was asked for.
    hyperparameters = config.hyperparameters.model_dump(mode="json")
    assert hyperparameters == written_config(plan)["hyperparameters"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_trainer_accepts_every_choice_the_backend_offers(
    algorithm: str, existing: LaunchContext, tmp_path: Path
) -> None:
    parameters = backend_of(algorithm).parameters
    choices = {
        name: get_args(field.annotation)
        for name, field in parameters.model_fields.items()
        if get_args(field.annotation)
        and all(isinstance(a, str) for a in get_args(field.annotation))
    }
    assert "lr_scheduler_type" in choices
    for name, options in choices.items():
        if name == "reward":
            continue
        for option in options:
            plan = make_plan(algorithm, context_for(algorithm, existing), **{name: option})
            config = _trainer_accepts(plan, tmp_path)
            assert getattr(config.hyperparameters, name) == option
