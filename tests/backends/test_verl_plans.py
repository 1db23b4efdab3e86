"""verl backends: the plans they compute (golden files), their environment, and bad input.

The golden files tests/backends/golden/verl_<algorithm>_plan.json hold each algorithm's whole
plan for one fixed LaunchContext. After an intended change to a plan, regenerate and review:

    TP_TEST_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/backends/test_verl_plans.py

Whether verl accepts the overrides is tests/backends/test_verl_contract.py's job.
"""

from __future__ import annotations

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
from training_platform.backends.verl.common import (
    COMPAT_MODULE,
    CONFIG_FILE,
    CPU_MODULE,
    CPU_RL_MODULE,
    WRAPPER_MODULE,
    hydra_value,
)
from training_platform.backends.verl.merge import (
    FINAL_MODEL_DIR,
    STEP_DIR_PLACEHOLDER,
    merge_plan,
    shards_dir,
)
from training_platform.core.errors import InvalidInput

GOLDEN_DIR = Path(__file__).parent / "golden"
REGENERATE_FLAG = "TP_TEST_REGENERATE_GOLDEN"
ALGORITHMS = ("sft", "ppo", "grpo", "gspo")
RL = ("ppo", "grpo", "gspo")

GOLDEN_CONTEXT = LaunchContext(
    run_dir="/srv/tp/runs/17/attempt-1",
    python="/opt/tp/.venv/bin/python",
    model_path="/srv/tp/models/builtin/tiny-qwen2",
    dataset_path="/srv/tp/datasets/prepared/tiny.parquet",
    dataset_format="rl",
    devices=(0, 3),
    gpus=2,
    cpu_threads=4,
    reward_path="/opt/tp/training_platform/rewards/builtin.py",
    reward_function="math_answer",
    platform_dir="/opt/tp/training_platform",
)


def make_plan(algorithm: str, context: LaunchContext = GOLDEN_CONTEXT, **values: Any) -> LaunchPlan:
    """The plan of verl/<algorithm>, validated as the API validates a job."""
    backend = get_backend("verl", algorithm)
    parameters = validate_parameters(backend, values, gpus=context.gpus)
    return backend.plan(parameters, context)


def wrapper_config(plan: LaunchPlan) -> dict[str, Any]:
    """The verl_run.json the plan asks the runner to write."""
    config: dict[str, Any] = json.loads(plan.files[CONFIG_FILE])
    return config


def overrides(plan: LaunchPlan) -> dict[str, str]:
    """The verl command's Hydra overrides, key -> raw value text."""
    command = wrapper_config(plan)["command"]
    module = next(i for i, part in enumerate(command) if part.startswith("verl.trainer."))
    return dict(part.split("=", 1) for part in command[module + 1 :])


def readable(plan: LaunchPlan) -> dict[str, Any]:
    """The plan's JSON form with its JSON files decoded, so that golden diffs are readable."""
    data = plan.to_dict()
    data["files"] = {name: json.loads(text) for name, text in data["files"].items()}
    return data


def _error(algorithm: str, values: dict[str, Any], gpus: int) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        validate_parameters(get_backend("verl", algorithm), values, gpus=gpus)
    return caught.value


# --- golden files ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_plan_matches_the_golden_file(algorithm: str) -> None:
    plan = readable(make_plan(algorithm, total_steps=30))
    golden = GOLDEN_DIR / f"verl_{algorithm}_plan.json"
    if os.environ.get(REGENERATE_FLAG) == "1":
        golden.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    assert plan == json.loads(golden.read_text()), (
        f"the verl/{algorithm} plan changed; if intended, run {REGENERATE_FLAG}=1 pytest "
        f"{__file__} and review the diff of {golden.name}"
    )


# --- argv, env, files --------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_plan_runs_the_wrapper_with_verl_inside_its_config(algorithm: str) -> None:
    plan = make_plan(algorithm)
    assert (plan.backend, plan.algorithm) == ("verl", algorithm)
    assert plan.argv == (GOLDEN_CONTEXT.python, "-m", WRAPPER_MODULE, "--config", CONFIG_FILE)
    assert set(plan.files) == {CONFIG_FILE}
    config = wrapper_config(plan)
    assert config["run_dir"] == GOLDEN_CONTEXT.run_dir
    assert all(isinstance(part, str) for part in config["command"])
    assert config["env"]["VERL_USE_EXTERNAL_MODULES"] == COMPAT_MODULE
    assert LaunchPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_sft_runs_torchrun_with_one_process_per_gpu() -> None:
    command = wrapper_config(make_plan("sft"))["command"]
    assert command[:8] == [
        GOLDEN_CONTEXT.python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "verl.trainer.sft_trainer",
    ]


@pytest.mark.parametrize("algorithm", RL)
def test_rl_runs_main_ppo(algorithm: str) -> None:
    command = wrapper_config(make_plan(algorithm))["command"]
    assert command[:3] == [GOLDEN_CONTEXT.python, "-m", "verl.trainer.main_ppo"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_gpus_and_devices_come_from_the_context(algorithm: str) -> None:
    plan = make_plan(algorithm)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,3"
    assert plan.env["HF_HUB_OFFLINE"] == "1"
    assert plan.env["OMP_NUM_THREADS"] == "4"
    assert overrides(plan)["trainer.n_gpus_per_node"] == "2"
    unleased = LaunchContext(**{**GOLDEN_CONTEXT.__dict__, "devices": (), "model_is_local": False})
    plan = make_plan(algorithm, unleased)
    assert "CUDA_VISIBLE_DEVICES" not in plan.env
    assert "HF_HUB_OFFLINE" not in plan.env


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_names_and_paths_on_the_command_line_are_fixed_or_quoted(algorithm: str) -> None:
    hostile = LaunchContext(
        **{
            **GOLDEN_CONTEXT.__dict__,
            "model_path": "/srv/tp/models/my model; rm -rf ~",
            "dataset_path": "/srv/tp/datasets/$(reboot)/${oc.env:HOME}.parquet",
        }
    )
    found = overrides(make_plan(algorithm, hostile))
    model_key = "model.path" if algorithm == "sft" else "actor_rollout_ref.model.path"
    assert found[model_key] == hydra_value(hostile.model_path)
    assert found["data.train_files"] == "'/srv/tp/datasets/$(reboot)/\\${oc.env:HOME}.parquet'"
    assert found["trainer.project_name"] == "training-platform"
    assert found["trainer.experiment_name"] == f"verl-{algorithm}"
    assert found["trainer.default_local_dir"] == f"{GOLDEN_CONTEXT.run_dir}/checkpoints"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_fresh_attempt_never_resumes_and_a_resumed_one_names_its_checkpoint(
    algorithm: str,
) -> None:
    fresh = overrides(make_plan(algorithm))
    assert fresh["trainer.resume_mode"] == "disable"
    assert fresh["trainer.resume_from_path"] == "null"
    checkpoint = "/srv/tp/runs/17/attempt-1/checkpoints/global_step_20"
    resumed = LaunchContext(**{**GOLDEN_CONTEXT.__dict__, "resume_from": checkpoint})
    found = overrides(make_plan(algorithm, resumed))
    assert found["trainer.resume_mode"] == "resume_path"
    assert found["trainer.resume_from_path"] == checkpoint


def test_the_cpu_smoke_mode_is_one_process_with_the_cpu_plugin() -> None:
    cpu = LaunchContext(**{**GOLDEN_CONTEXT.__dict__, "gpus": 0, "devices": ()})
    plan = make_plan("sft", cpu, device="cpu")
    config = wrapper_config(plan)
    assert "--nproc_per_node=1" in config["command"]
    assert config["env"] == {
        "VERL_USE_EXTERNAL_MODULES": f"{COMPAT_MODULE},{CPU_MODULE}",
        "VERL_PLATFORM": "cpu",
        "VERL_ENGINE_DEVICE": "cuda",
    }
    found = overrides(plan)
    assert found["engine.strategy"] == "fsdp2"
    assert found["trainer.device"] == "cpu"
    assert found["+model.override_config.attn_implementation"] == "sdpa"


@pytest.mark.parametrize("algorithm", RL)
def test_the_rl_cpu_smoke_mode_runs_verl_in_the_vllm_environment(algorithm: str) -> None:
    cpu = LaunchContext(
        **{**GOLDEN_CONTEXT.__dict__, "gpus": 0, "devices": (), "vllm_python": "/opt/vllm/python"}
    )
    plan = make_plan(algorithm, cpu, device="cpu")
    assert plan.argv[0] == GOLDEN_CONTEXT.python  # the wrapper: the training environment's
    config = wrapper_config(plan)
    assert config["command"][:3] == ["/opt/vllm/python", "-m", "verl.trainer.main_ppo"]
    assert config["env"]["VERL_USE_EXTERNAL_MODULES"] == (
        f"{COMPAT_MODULE},{CPU_MODULE},{CPU_RL_MODULE}"
    )
    assert config["env"]["VERL_PLATFORM"] == "cpu_rl"
    assert config["env"]["TP_VLLM_CPU_RELOADABLE"] == "1"
    found = overrides(plan)
    assert found["trainer.device"] == "cpu"
    assert found["trainer.n_gpus_per_node"] == "1"  # the run's Ray has one logical GPU
    assert found["+ray_kwargs.ray_init.num_gpus"] == "1"
    assert found["actor_rollout_ref.rollout.free_cache_engine"] == "false"
    assert found["+actor_rollout_ref.rollout.enable_sleep_mode"] == "false"
    assert "CUDA_VISIBLE_DEVICES" not in plan.env
    without = LaunchContext(**{**cpu.__dict__, "vllm_python": ""})
    with pytest.raises(ValueError, match="make vllm-env"):
        make_plan(algorithm, without, device="cpu")


def test_steps_are_counted_by_the_wrapper_only_when_not_given() -> None:
    assert wrapper_config(make_plan("grpo", total_steps=7))["max_steps"] == 7
    config = wrapper_config(make_plan("sft", total_epochs=3, train_batch_size=8))
    assert config["max_steps"] is None
    assert config["steps_from"] == {
        "dataset": GOLDEN_CONTEXT.dataset_path,
        "batch_size": 8,
        "data_parallel": 2,
        "epochs": 3,
    }


def test_planning_is_pure() -> None:
    for algorithm in ALGORITHMS:
        assert make_plan(algorithm) == make_plan(algorithm)
    assert not Path(GOLDEN_CONTEXT.run_dir).exists()


def test_every_pair_is_registered_and_declares_its_data() -> None:
    verl = {b.algorithm: b for b in all_backends() if b.backend == "verl"}
    assert set(verl) == set(ALGORITHMS)
    assert verl["sft"].data_task == "sft"
    assert all(verl[a].data_task == "rl" for a in RL)
    assert all(b.requires_gpu for b in verl.values())
    for backend in verl.values():
        for name, field in backend.parameters.model_fields.items():
            assert field.description, f"verl/{backend.algorithm}: {name} has no description"


def test_the_merge_plan_converts_shards_to_a_hugging_face_directory() -> None:
    step = "/srv/tp/runs/17/attempt-1/checkpoints/global_step_20"
    assert shards_dir(step, "sft") == step
    assert shards_dir(step, "grpo") == f"{step}/actor"
    plan = merge_plan(f"{step}/actor", "/srv/tp/models/out", "/opt/py")
    assert plan.argv == (
        "/opt/py",
        "-m",
        "verl.model_merger",
        "merge",
        "--backend",
        "fsdp",
        "--local_dir",
        f"{step}/actor",
        "--target_dir",
        "/srv/tp/models/out",
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_wrapper_converts_the_last_checkpoint_with_the_merge_plans_argv(
    algorithm: str,
) -> None:
    entry = wrapper_config(make_plan(algorithm))["final_model"]
    shards = shards_dir(STEP_DIR_PLACEHOLDER, algorithm)
    target = f"{GOLDEN_CONTEXT.run_dir}/{FINAL_MODEL_DIR}"
    merge = merge_plan(shards, target, GOLDEN_CONTEXT.python)
    # One argv builder: the wrapper only puts the step directory in for the placeholder.
    assert entry == {
        "argv": list(merge.argv),
        "env": dict(merge.env),
        "placeholder": STEP_DIR_PLACEHOLDER,
        "shards": shards,
        "target_dir": FINAL_MODEL_DIR,
        "base_model": GOLDEN_CONTEXT.model_path,
    }
    assert entry["shards"] == (
        STEP_DIR_PLACEHOLDER if algorithm == "sft" else f"{STEP_DIR_PLACEHOLDER}/actor"
    )
    assert wrapper_config(make_plan(algorithm, export_final_model=False))["final_model"] is None


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ("grpo", "gspo"))
def test_group_algorithms_need_more_than_one_response_per_prompt(algorithm: str) -> None:
    error = _error(algorithm, {"rollout": {"n": 1}}, gpus=1)
    assert error.loc == ("body", "hyperparameters", "rollout", "n")
    validate_parameters(get_backend("verl", "ppo"), {"rollout": {"n": 1}}, gpus=1)


@pytest.mark.parametrize("algorithm", RL)
def test_tensor_parallel_must_fit_the_gpus_asked_for(algorithm: str) -> None:
    for tp, gpus in ((4, 2), (2, 3)):
        error = _error(algorithm, {"rollout": {"tensor_model_parallel_size": tp}}, gpus=gpus)
        assert error.loc == ("body", "hyperparameters", "rollout", "tensor_model_parallel_size")
        assert f"{gpus} GPU" in error.message
    backend = get_backend("verl", algorithm)
    validate_parameters(backend, {"rollout": {"tensor_model_parallel_size": 2}}, gpus=4)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_lora_rank_zero_is_impossible(algorithm: str) -> None:
    error = _error(algorithm, {"lora": {"rank": 0}}, gpus=1)
    assert error.loc == ("body", "hyperparameters", "lora", "rank")
    assert _error(algorithm, {"lora": {}}, gpus=1).loc[-2:] == ("lora", "rank")


def test_vllm_caps_the_lora_rank() -> None:
    error = _error("grpo", {"lora": {"rank": 1024}}, gpus=1)
    assert error.loc == ("body", "hyperparameters", "lora", "rank")
    backend = get_backend("verl", "grpo")
    validate_parameters(backend, {"lora": {"rank": 1024}, "rollout": {"name": "sglang"}}, gpus=1)


@pytest.mark.parametrize("algorithm", RL)
def test_rl_needs_a_gpu_unless_the_cpu_smoke_mode_is_chosen(algorithm: str) -> None:
    error = _error(algorithm, {}, gpus=0)
    assert error.loc == ("body", "resources", "gpus")
    assert "gpus >= 1" in error.message
    assert "'cpu'" in error.message
    validate_parameters(get_backend("verl", algorithm), {"device": "cpu"}, gpus=0)
    for values, field in (
        ({"device": "cpu"}, "device"),
        ({"device": "cpu", "strategy": "fsdp"}, "strategy"),
        ({"device": "cpu", "lora": {"rank": 8}}, "lora"),
        ({"device": "cpu", "param_offload": True}, "param_offload"),
        ({"device": "cpu", "rollout": {"name": "sglang"}}, "name"),
        (
            {"device": "cpu", "rollout": {"tensor_model_parallel_size": 2}},
            "tensor_model_parallel_size",
        ),
    ):
        gpus = 1 if field == "device" else 0
        assert _error(algorithm, values, gpus=gpus).loc[-1] == field, values


def test_sft_needs_a_gpu_unless_the_cpu_smoke_mode_is_chosen() -> None:
    error = _error("sft", {}, gpus=0)
    assert error.loc == ("body", "hyperparameters", "device")
    assert "cpu" in error.message
    validate_parameters(get_backend("verl", "sft"), {"device": "cpu"}, gpus=0)
    assert _error("sft", {"device": "cpu"}, gpus=1).loc[-1] == "device"
    assert _error("sft", {"device": "cpu", "strategy": "fsdp"}, gpus=0).loc[-1] == "strategy"
    offload = {"device": "cpu", "optimizer_offload": True}
    assert _error("sft", offload, gpus=0).loc[-1] == "optimizer_offload"


@pytest.mark.parametrize(
    ("algorithm", "values", "gpus", "field"),
    [
        ("ppo", {"ppo_mini_batch_size": 128, "train_batch_size": 64}, 1, "ppo_mini_batch_size"),
        ("grpo", {"train_batch_size": 3, "ppo_mini_batch_size": 3}, 2, "train_batch_size"),
        ("sft", {"train_batch_size": 3}, 2, "train_batch_size"),
        ("sft", {"assistant_only_loss": False}, 1, "assistant_only_loss"),
        ("ppo", {"no_such_field": 1}, 1, "no_such_field"),
        ("gspo", {"reward": "../../etc/passwd"}, 1, "reward"),
        ("sft", {"lora": {"rank": 8, "target_modules": ["q_proj; rm"]}}, 1, "target_modules"),
    ],
)
def test_bad_values_name_their_field(
    algorithm: str, values: dict[str, Any], gpus: int, field: str
) -> None:
    error = _error(algorithm, values, gpus=gpus)
    assert field in error.loc, error.loc
