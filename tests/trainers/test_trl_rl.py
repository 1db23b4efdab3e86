"""GRPO, GSPO and PPO runs for real in a subprocess, on the tiny model and the bundled math prompts:
their records, metric names, checkpoints, final models and resumes, short runs of the values
tests/e2e/test_algorithms.py runs through the queue. That test starts them from an SFT warm-up
and asserts that the mean reward rises (a random model's completions all score 0); these runs
need no warm-up and do not repeat it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
BUILTIN_REWARDS = REPO_ROOT / "training_platform" / "rewards" / "builtin.py"


def _sibling(name: str) -> Any:
    # Tests are not a package (importlib mode); load the helpers of test_trl_train.py by path.
    spec = importlib.util.spec_from_file_location(f"_tp_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


helpers = _sibling("test_trl_train")
Run = helpers.Run


def rl_rows() -> list[dict[str, Any]]:
    """tiny-math as prepared rl rows (verl's layout)."""
    return [
        {
            "data_source": "training_platform",
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": row["answer"]},
            "extra_info": {"index": index, "split": "train"},
        }
        for index, row in enumerate(helpers.bundled_rows("tiny-math"))
    ]


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared rl parquet file."""
    return helpers.write_parquet(rl_rows(), tmp_path_factory.mktemp("prepared") / "rl.parquet")


def rl_config(
    algorithm: str, model: Path, data: Path, run_dir: Path, reward: str = "format", **hp: Any
) -> dict[str, Any]:
    """A trainer config for an RL run with a built-in reward."""
    return {
        "algorithm": algorithm,
        "model_path": str(model),
        "dataset_path": str(data),
        "dataset_format": "rl",
        "output_dir": str(run_dir),
        "metrics_path": str(run_dir / "metrics.jsonl"),
        "reward": {"path": str(BUILTIN_REWARDS), "function": reward},
        "hyperparameters": hp,
    }


ROLLOUT = {"learning_rate": 2e-3, "per_device_train_batch_size": 16, "max_completion_length": 16}
RUNS: dict[str, dict[str, Any]] = {
    # 16 completions per step: 2 prompts x 8; a small KL term so the kl metric shows.
    "grpo": {**ROLLOUT, "max_steps": 12, "save_steps": 4, "num_generations": 8, "beta": 0.04},
    # steps_per_generation 4 (the default): a rollout every 4 steps, sequence-level clipping.
    "gspo": {**ROLLOUT, "max_steps": 12, "save_steps": 4, "num_generations": 8},
    # 16 prompts per step, one completion each, 4 PPO epochs over them.
    "ppo": {**ROLLOUT, "max_steps": 12, "save_steps": 4},
}
RESUME_AT = {"grpo": 8, "gspo": 8, "ppo": 8}
REWARD_KEY = {"grpo": "reward", "gspo": "reward", "ppo": "reward/mean"}


def _rl_run(
    algorithm: str, model: Path, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:  # from the random tiny model: records and names, not learning
    base = tmp_path_factory.mktemp(algorithm)
    config = rl_config(algorithm, model, data, base / "run", **RUNS[algorithm])
    return helpers.run_to_completion(config, base)


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir: Path, rl_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _rl_run("grpo", tiny_model_dir, rl_data, tmp_path_factory)


@pytest.fixture(scope="module")
def gspo_run(tiny_model_dir: Path, rl_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _rl_run("gspo", tiny_model_dir, rl_data, tmp_path_factory)


@pytest.fixture(scope="module")
def ppo_run(tiny_model_dir: Path, rl_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _rl_run("ppo", tiny_model_dir, rl_data, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "gspo", "ppo"])
def test_records_and_metric_names(algorithm: str, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(f"{algorithm}_run")
    max_steps = RUNS[algorithm]["max_steps"]
    assert run.records[0]["type"] == "started"
    assert run.records[0]["max_steps"] == max_steps
    metrics = [r for r in run.records if r["type"] == "metrics"]
    assert [r["step"] for r in metrics] == list(range(1, max_steps + 1))
    keys = set().union(*(r["values"] for r in metrics))
    expected = {
        "grpo": {"loss", "reward", "reward_std", "kl", "rewards/format/mean", "learning_rate"},
        "gspo": {"loss", "reward", "rewards/format/mean", "clip_ratio/region_mean"},
        "ppo": {
            "loss",
            "reward/mean",
            "rewards/format/mean",
            "ppo/policy_loss",
            "ppo/value_loss",
            "ppo/kl",
            "ppo/clipfrac",
            "completions/mean_length",
            "learning_rate",
            "epoch",
        },
    }[algorithm]
    assert expected <= keys
    # The reward the trainer logs is the reward function's, step by step.
    assert run.metrics(REWARD_KEY[algorithm]) == run.metrics("rewards/format/mean")
    checkpoints = [r for r in run.records if r["type"] == "checkpoint"]
    save = RUNS[algorithm]["save_steps"]
    assert [r["step"] for r in checkpoints] == [*range(save, max_steps + 1, save), max_steps]
    assert all(r["size_bytes"] > 0 and r["adapter"] is False for r in checkpoints)
    (summary,) = [r for r in run.records if r["type"] == "summary"]
    assert {"train_runtime", "train_loss"} <= set(summary["values"])


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "gspo", "ppo"])
def test_the_final_model_reloads_and_generates(
    algorithm: str, request: pytest.FixtureRequest
) -> None:
    run = request.getfixturevalue(f"{algorithm}_run")
    print(f"{algorithm}: {helpers.generates(run.run_dir / 'model')!r}")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "gspo", "ppo"])
def test_a_resumed_run_continues_the_global_step(
    algorithm: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    earlier = request.getfixturevalue(f"{algorithm}_run")
    at = RESUME_AT[algorithm]
    config = json.loads((earlier.run_dir.parent / "train_config.json").read_text())
    config |= {
        "output_dir": str(tmp_path / "run"),
        "metrics_path": str(tmp_path / "run" / "metrics.jsonl"),
        "resume_from": str(earlier.run_dir / "checkpoints" / f"checkpoint-{at}"),
    }
    run = helpers.run_to_completion(config, tmp_path)
    steps = [r["step"] for r in run.records if r["type"] == "metrics"]
    max_steps = RUNS[algorithm]["max_steps"]
    assert steps == list(range(at + 1, max_steps + 1))
    final = [r for r in run.records if r["type"] == "checkpoint" and r["final"]]
    assert [r["step"] for r in final] == [max_steps]
    print(f"{algorithm} resumed at {at}: {run.wall_s:.1f} s wall")


@pytest.mark.slow
def test_ppo_with_lora_trains_an_adapter_that_reloads(
    tiny_model_dir: Path, rl_data: Path, tmp_path: Path
) -> None:
    lora = {"rank": 4, "alpha": 8}
    config = rl_config(
        "ppo", tiny_model_dir, rl_data, tmp_path / "run", "math_answer",
        **{**ROLLOUT, "per_device_train_batch_size": 4, "max_steps": 3, "save_steps": 2,
           "lora": lora},
    )  # fmt: skip
    run = helpers.run_to_completion(config, tmp_path)
    assert "saved final adapter" in run.result.stdout
    assert "rewards/math_answer/mean" in run.records[1]["values"]
    checkpoints = [r for r in run.records if r["type"] == "checkpoint"]
    assert [(r["step"], r["path"], r["adapter"]) for r in checkpoints] == [
        (2, "checkpoints/checkpoint-2", True),
        (3, "checkpoints/checkpoint-3", True),
        (3, "model", True),
    ]
    adapter = json.loads((run.run_dir / "model" / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    assert not (run.run_dir / "model" / "model.safetensors").exists()
    helpers.generates(run.run_dir / "model")


@pytest.mark.slow
def test_an_unknown_reward_function_exits_2(
    tiny_model_dir: Path, rl_data: Path, tmp_path: Path
) -> None:
    config = rl_config("ppo", tiny_model_dir, rl_data, tmp_path / "run", "no_such_reward")
    result = helpers.train(config, tmp_path / "c.json")
    assert result.returncode == 2
    assert "reward.function" in result.stderr and "'no_such_reward'" in result.stderr
