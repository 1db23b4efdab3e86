"""The training program: its config, and SFT and DPO runs for real in a subprocess.

RL runs (GRPO, GSPO, PPO) are in test_trl_rl.py. Each run trains the tiny model on prepared
data built here from the bundled JSONL files, in the layouts of backends/base.py.

Runs that must succeed start as the platform starts them: through a LocalRunner with warm
starts, so that after the first (cold) one they are forked from a server that imported the
trainer's libraries once (runners/warm.py; the imports were ~2/3 of a 30-step run's CPU).
Runs whose stderr is checked on its own start cold, as a plain subprocess.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from training_platform.assets.tiny import BUNDLED_DATASETS
from training_platform.backends.base import LaunchPlan
from training_platform.runners.launcher import LOG_FILE
from training_platform.runners.local import LocalRunner
from training_platform.trainers.progress import directory_size
from training_platform.trainers.trl_train import (
    ConfigError,
    DpoConfig,
    GspoConfig,
    RewardSettings,
    SftConfig,
    load_config,
    load_reward_function,
    parse_config,
    trl_reward,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINER_MODULE = "training_platform.trainers.trl_train"
BUILTIN_REWARDS = REPO_ROOT / "training_platform" / "rewards" / "builtin.py"
# Two OpenMP threads on a busy two-core box made the 30 steps 20x slower (0.6 s -> 11 s); one
# thread is as fast as two on an idle box for a model this small.
TRAIN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SUMMARY_KEYS = {"train_runtime", "train_loss", "total_flos", "train_samples_per_second"}
CHECKPOINT_KEYS = {"type", "time", "step", "path", "final", "adapter", "size_bytes"}


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    run_dir: Path
    records: list[dict[str, Any]]
    wall_s: float

    def metrics(self, key: str) -> list[float]:
        """The values of `key` in step order, where the trainer logged it."""
        return [
            r["values"][key] for r in self.records if r["type"] == "metrics" and key in r["values"]
        ]


def bundled_rows(name: str) -> list[dict[str, Any]]:
    """The rows of a bundled JSONL dataset."""
    lines = BUNDLED_DATASETS[name].path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    """Rows as a parquet file, as the platform's preparation writes them."""
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))
    return path


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def train(config: dict[str, Any], config_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the trainer program on `config` in a subprocess."""
    write_config(config_path, config)
    return subprocess.run(
        [sys.executable, "-m", TRAINER_MODULE, "--config", str(config_path)],
        cwd=REPO_ROOT,
        env=TRAIN_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# The warm server's key includes the environment: a fixed one, so that every run shares it.
WARM_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def train_warm(
    config: dict[str, Any], base: Path, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run the trainer program on `config` as the platform does (warm once a server listens;
    conftest sets the worker's TP_WARM_DIR and stops its servers). Its output is one stream:
    stdout and stderr both hold it."""
    config_path = write_config(base / "train_config.json", config)
    argv = (sys.executable, "-m", TRAINER_MODULE, "--config", str(config_path))
    plan = LaunchPlan(backend="trl", algorithm=config["algorithm"], argv=argv, env=WARM_ENV)
    runner = LocalRunner(node="tests", warm_dir=Path(os.environ["TP_WARM_DIR"]))
    handle = runner.submit(plan, str(base / "launch"))
    deadline = time.monotonic() + timeout
    while (state := runner.poll(handle)).status == "running":
        if time.monotonic() > deadline:
            raise AssertionError(f"the run in {base} outlived {timeout} s")
        time.sleep(0.2)
    output = (base / "launch" / LOG_FILE).read_text()
    code = state.exit_code if state.exit_code is not None else -(state.signal or 1)
    return subprocess.CompletedProcess(list(argv), code, output, output)


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_to_completion(config: dict[str, Any], base: Path) -> Run:
    """Train, assert exit 0, and collect the records."""
    run_dir = Path(config["output_dir"])
    start = time.monotonic()
    result = train_warm(config, base)
    wall_s = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-4000:]
    return Run(result, run_dir, records_of(run_dir / "metrics.jsonl"), wall_s)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _config(
    model_dir: Path, run_dir: Path, dataset: Path, algorithm: str = "sft", **overrides: Any
) -> dict[str, Any]:
    formats = {"sft": "sft", "dpo": "preference"}
    return {
        "algorithm": algorithm,
        "model_path": str(model_dir),
        "dataset_path": str(dataset),
        "dataset_format": formats.get(algorithm, "rl"),
        "output_dir": str(run_dir),
        "metrics_path": str(run_dir / "metrics.jsonl"),
        "hyperparameters": {"max_steps": 30},
        **overrides,
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared sft and preference parquet files from the bundled datasets."""
    base = tmp_path_factory.mktemp("prepared")
    write_parquet(
        [{"messages": row["messages"]} for row in bundled_rows("tiny-sft")], base / "sft.parquet"
    )
    write_parquet(bundled_rows("tiny-prefs"), base / "preference.parquet")
    return base


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("sft")
    config = _config(tiny_model_dir, base / "run", data_dir / "sft.parquet")
    return run_to_completion(config, base)


DPO_HYPERPARAMETERS = {
    "max_steps": 40,
    "learning_rate": 1e-2,
    "per_device_train_batch_size": 16,
    "save_steps": 20,
}


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("dpo")
    config = _config(
        tiny_model_dir,
        base / "run",
        data_dir / "preference.parquet",
        "dpo",
        hyperparameters=DPO_HYPERPARAMETERS,
    )
    return run_to_completion(config, base)


def _assert_time(record: dict[str, Any]) -> None:
    assert datetime.fromisoformat(record["time"]).utcoffset() == timedelta(0)


# --- SFT ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_run_succeeds_with_progress_on_stdout(sft_run: Run) -> None:
    assert sft_run.result.returncode == 0
    assert "step 30/30 loss=" in sft_run.result.stdout
    assert "checkpoint saved: checkpoints/checkpoint-10" in sft_run.result.stdout
    assert (sft_run.run_dir / "heartbeat").is_file()
    print(f"30-step SFT run: {sft_run.wall_s:.1f} s wall")


@pytest.mark.slow
def test_records_have_the_contract_shapes(sft_run: Run) -> None:
    records = sft_run.records
    for record in records:
        _assert_time(record)

    assert records[0] == {"type": "started", "time": records[0]["time"], "max_steps": 30}

    metrics = [r for r in records if r["type"] == "metrics"]
    assert [r["step"] for r in metrics] == list(range(1, 31))
    for record in metrics:
        assert set(record) == {"type", "time", "step", "values"}
        values = record["values"]
        assert {"loss", "learning_rate", "grad_norm", "epoch", "mean_token_accuracy"} <= set(values)
        assert not SUMMARY_KEYS & set(values)
        assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values())

    checkpoints = [r for r in records if r["type"] == "checkpoint"]
    assert [(r["step"], r["path"], r["final"]) for r in checkpoints] == [
        (10, "checkpoints/checkpoint-10", False),
        (20, "checkpoints/checkpoint-20", False),
        (30, "checkpoints/checkpoint-30", False),
        (30, "model", True),
    ]
    for record in checkpoints:
        assert set(record) == CHECKPOINT_KEYS
        assert record["adapter"] is False
    # save_total_limit=2 rotated the oldest checkpoint away; its record stays.
    assert not (sft_run.run_dir / "checkpoints/checkpoint-10").exists()
    assert (sft_run.run_dir / "checkpoints/checkpoint-30/model.safetensors").is_file()
    # Sizes as written: the weights (180k float32 parameters) plus optimizer state and the rest.
    assert checkpoints[2]["size_bytes"] == directory_size(
        sft_run.run_dir / "checkpoints/checkpoint-30"
    )
    assert checkpoints[3]["size_bytes"] == directory_size(sft_run.run_dir / "model")
    assert checkpoints[2]["size_bytes"] > checkpoints[3]["size_bytes"] > 180_000 * 4

    (summary,) = [r for r in records if r["type"] == "summary"]
    assert set(summary) == {"type", "time", "step", "values"}
    assert summary["step"] == 30
    assert set(summary["values"]) >= SUMMARY_KEYS
    assert records[-1]["path"] == "model"


@pytest.mark.slow
def test_sft_loss_falls(sft_run: Run) -> None:
    losses = sft_run.metrics("loss")
    assert all(math.isfinite(loss) for loss in losses)
    last_five = mean(losses[-5:])
    print(f"SFT: first loss {losses[0]:.3f}, mean of last five {last_five:.3f}")
    assert last_five < losses[0] - 1.0


def generates(model_dir: Path) -> str:
    """Load a saved model (or adapter) as a user would, and let it answer one prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (model_dir / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.use_cache
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert output.shape[1] > prompt_length
    return str(tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sft_run", "dpo_run"])
def test_the_final_model_reloads_and_generates(name: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(name)
    print(f"{name}: {generates(run.run_dir / 'model')!r}")


@pytest.mark.slow
def test_lora_saves_an_adapter(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    lora = {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    config = _config(
        tiny_model_dir,
        run_dir,
        data_dir / "sft.parquet",
        hyperparameters={"max_steps": 3, "save_steps": 2, "lora": lora, "learning_rate": 5e-3},
    )
    run = run_to_completion(config, tmp_path)
    assert "saved final adapter" in run.result.stdout

    checkpoints = [r for r in run.records if r["type"] == "checkpoint"]
    assert [(r["step"], r["path"], r["final"], r["adapter"]) for r in checkpoints] == [
        (2, "checkpoints/checkpoint-2", False, True),
        (3, "checkpoints/checkpoint-3", False, True),
        (3, "model", True, True),
    ]
    adapter_config = json.loads((run_dir / "model/adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)
    assert not (run_dir / "model/model.safetensors").exists()
    generates(run_dir / "model")


# --- DPO ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_dpo_loss_falls_and_margins_rise(dpo_run: Run) -> None:
    losses, margins = dpo_run.metrics("loss"), dpo_run.metrics("rewards/margins")
    assert len(losses) == len(margins) == 40
    first, last = mean(losses[:10]), mean(losses[-10:])
    first_margin, last_margin = mean(margins[:10]), mean(margins[-10:])
    print(
        f"DPO ({dpo_run.wall_s:.1f} s wall): loss {first:.3f} -> {last:.3f}, "
        f"margin {first_margin:.3f} -> {last_margin:.3f}, "
        f"accuracy {mean(dpo_run.metrics('rewards/accuracies')[-10:]):.2f} at the end"
    )
    assert last < first - 0.05
    assert last_margin > first_margin + 0.2


# --- resume -------------------------------------------------------------------------------


@pytest.mark.slow
# One algorithm: trl_train resumes every algorithm on one path (Trainer.train with
# resume_from_checkpoint); the RL trainers' resume is tests/trainers/test_trl_rl.py's.
@pytest.mark.parametrize(("name", "checkpoint"), [("sft_run", 20)])
def test_a_resumed_run_continues_the_global_step(
    name: str, checkpoint: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    earlier: Run = request.getfixturevalue(name)
    config = json.loads((earlier.run_dir.parent / "train_config.json").read_text())
    resume_from = earlier.run_dir / "checkpoints" / f"checkpoint-{checkpoint}"
    config |= {
        "output_dir": str(tmp_path / "run"),
        "metrics_path": str(tmp_path / "run" / "metrics.jsonl"),
        "resume_from": str(resume_from),
    }
    run = run_to_completion(config, tmp_path)
    max_steps = config["hyperparameters"]["max_steps"]

    steps = [r["step"] for r in run.records if r["type"] == "metrics"]
    assert steps[0] == checkpoint + 1
    assert steps[-1] == max_steps
    final = [r for r in run.records if r["type"] == "checkpoint" and r["final"]]
    assert [r["step"] for r in final] == [max_steps]
    assert f"resuming from {resume_from}" in run.result.stdout
    print(f"{name} resumed at {checkpoint}: {run.wall_s:.1f} s wall")


@pytest.mark.slow
def test_resuming_from_a_checkpoint_at_max_steps_only_exports_the_model(
    sft_run: Run, tmp_path: Path
) -> None:
    # Defect: a trainer killed after its checkpoint at max_steps, retried from it, trained
    # step max_steps + 1 at learning rate 0 and reported progress 31/30.
    config = json.loads((sft_run.run_dir.parent / "train_config.json").read_text())
    max_steps = config["hyperparameters"]["max_steps"]
    resume_from = sft_run.run_dir / "checkpoints" / f"checkpoint-{max_steps}"
    config |= {
        "output_dir": str(tmp_path / "run"),
        "metrics_path": str(tmp_path / "run" / "metrics.jsonl"),
        "resume_from": str(resume_from),
    }
    run = run_to_completion(config, tmp_path)
    assert run.result.returncode == 0, run.result.stderr
    assert [r for r in run.records if r["type"] == "metrics"] == []
    assert [r["max_steps"] for r in run.records if r["type"] == "started"] == [max_steps]
    final = [r for r in run.records if r["type"] == "checkpoint" and r["final"]]
    assert [(r["step"], r["path"]) for r in final] == [(max_steps, "model")]
    exported = load_file(tmp_path / "run" / "model" / "model.safetensors")
    trained = load_file(resume_from / "model.safetensors")
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[name], trained[name]) for name in trained)
    generates(tmp_path / "run" / "model")


@pytest.mark.slow
def test_a_stop_request_saves_a_checkpoint_and_exits_75(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    """The platform's pause and time limit: the file appears, the trainer checkpoints, exits."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stop-request").write_text("now\n")  # there before step 1 ends
    config = _config(
        tiny_model_dir,
        run_dir,
        data_dir / "sft.parquet",
        hyperparameters={"max_steps": 30, "save_steps": 10},
    )
    result = train(config, tmp_path / "train_config.json")
    assert result.returncode == 75, result.stderr[-3000:]
    records = records_of(run_dir / "metrics.jsonl")
    # The Trainer still logs its end-of-training figures; no final model is saved.
    assert [r["type"] for r in records if r["type"] != "metrics"] == [
        "started",
        "checkpoint",
        "summary",
        "stopped",
    ]
    checkpoint = next(r for r in records if r["type"] == "checkpoint")
    assert (checkpoint["step"], checkpoint["final"]) == (1, False)
    assert (run_dir / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()
    assert records[-1]["step"] == 1 and not (run_dir / "model").exists()
    assert "stopped on request at step 1" in result.stdout


# --- config -------------------------------------------------------------------------------


def test_bad_config_exits_2_with_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "sft.parquet"
    dataset.write_bytes(b"")
    config = _config(tiny_model_dir, tmp_path / "run", dataset, hyperparameters={"max_steps": 0})
    result = train(config, tmp_path / "train_config.json")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "config error: hyperparameters.max_steps: Value error, must be -1 (train for "
        "num_train_epochs) or a positive step count"
    )
    assert not (tmp_path / "run").exists()


def test_missing_dataset_exits_2_with_reason(tiny_model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.parquet"
    result = train(_config(tiny_model_dir, tmp_path / "run", missing), tmp_path / "c.json")
    assert result.returncode == 2
    assert f"dataset_path: no such file: {missing}" in result.stderr


@pytest.mark.slow
def test_a_dataset_without_its_columns_exits_2(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    # Preference rows handed to SFT: the columns are checked once the file is opened.
    config = _config(tiny_model_dir, tmp_path / "run", data_dir / "preference.parquet")
    result = train(config, tmp_path / "c.json")
    assert result.returncode == 2
    assert "config error: dataset_path: sft data needs column(s) messages" in result.stderr


def test_assistant_only_sft_without_markers_in_the_template_is_a_config_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    plain = tmp_path / "plain-template"
    shutil.copytree(tiny_model_dir, plain)
    template = (plain / "chat_template.jinja").read_text(encoding="utf-8")
    for marker in ("{%- generation %}", "{%- endgeneration %}"):
        assert marker in template
        template = template.replace(marker, "")
    (plain / "chat_template.jinja").write_text(template, encoding="utf-8")
    from transformers import AutoTokenizer

    from training_platform.trainers.trl_train import ConfigError, check_assistant_masks

    # The check a run makes before it trains (a ConfigError is exit 2, as tested above).
    with pytest.raises(ConfigError, match=r"chat template has no \{% generation %\}"):
        check_assistant_masks(AutoTokenizer.from_pretrained(plain))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algorithm": "sac"}, "algorithm: Input should be one of sft, dpo, grpo, gspo, ppo"),
        ({"model_path": "relative/model"}, "model_path: Value error, must be an absolute path"),
        ({"dataset_path": "/data/rows.csv"}, "dataset_path: Value error, must end with one of"),
        ({"dataset_format": "messages"}, "dataset_format: Input should be 'sft'"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"resume_from": "checkpoints/x"}, "resume_from: Value error, must be an absolute path"),
        ({"hyperparameters": {"lr": 0.1}}, "hyperparameters.lr: Extra inputs are not permitted"),
        ({"hyperparameters": {"max_steps": "30"}}, "hyperparameters.max_steps: Input should be"),
        ({"hyperparameters": {"lora_r": 8}}, "hyperparameters.lora_r: Extra inputs"),
        ({"hyperparameters": {"lora": {"rank": 0}}}, "hyperparameters.lora.rank: Input should"),
        ({"hyperparameters": {"lora": {"dropout": 1.0}}}, "hyperparameters.lora.dropout: Input"),
    ],
)
def test_invalid_configs_are_rejected(
    tiny_model_dir: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    config = _config(tiny_model_dir, tmp_path / "run", tmp_path / "d.parquet", **change)
    path = write_config(tmp_path / "c.json", config)
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("algorithm", "change", "message"),
    [
        ("grpo", {}, "reward: Field required"),
        ("dpo", {"hyperparameters": {"num_generations": 4}}, "hyperparameters.num_generations"),
        ("grpo", {"hyperparameters": {"num_generations": 1}}, "num_generations: Value error"),
        ("gspo", {"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta: Extra inputs"),
        ("ppo", {"dataset_format": "sft"}, "dataset_format: Input should be 'rl'"),
        (
            "ppo",
            {"reward": {"path": "/r.py", "function": "not a name"}},
            "reward.function: String should match",
        ),
    ],
)
def test_each_algorithm_has_its_own_rules(
    tiny_model_dir: Path, tmp_path: Path, algorithm: str, change: dict[str, Any], message: str
) -> None:
    config = _config(tiny_model_dir, tmp_path / "run", tmp_path / "d.parquet", algorithm, **change)
    with pytest.raises(ConfigError, match=message):
        parse_config(json.dumps(config))


def test_missing_keys_and_bad_json_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"algorithm": "sft"}')
    with pytest.raises(ConfigError, match="model_path: Field required"):
        load_config(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="Invalid JSON"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.json")


def test_inputs_that_do_not_exist_are_config_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "rl.parquet"
    dataset.write_bytes(b"")
    reward = {"path": str(tmp_path / "none.py"), "function": "compute_score"}
    config = _config(tiny_model_dir, tmp_path / "run", dataset, "ppo", reward=reward)
    with pytest.raises(ConfigError, match=r"reward\.path: no such file"):
        load_config(write_config(tmp_path / "c.json", config))
    config = _config(tiny_model_dir, tmp_path / "run", dataset, resume_from=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="resume_from: no such directory"):
        load_config(write_config(tmp_path / "c.json", config))


def test_defaults_fill_in_hyperparameters(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _config(tiny_model_dir, tmp_path / "run", tmp_path / "d.parquet")
    del config["hyperparameters"]
    parsed = parse_config(json.dumps(config))
    assert isinstance(parsed, SftConfig)
    hp = parsed.hyperparameters
    assert (hp.max_steps, hp.learning_rate, hp.per_device_train_batch_size) == (30, 1e-3, 8)
    assert (hp.save_steps, hp.save_total_limit, hp.lora, hp.assistant_only_loss) == (
        10,
        2,
        None,
        True,  # the assistant turns, as verl SFT learns them
    )
    dpo = parse_config(json.dumps(_config(tiny_model_dir, tmp_path, tmp_path / "d.parquet", "dpo")))
    assert isinstance(dpo, DpoConfig) and dpo.hyperparameters.beta == 0.1
    reward = {"path": str(BUILTIN_REWARDS), "function": "format"}
    gspo = _config(tiny_model_dir, tmp_path, tmp_path / "d.parquet", "gspo", reward=reward)
    parsed_gspo = parse_config(json.dumps(gspo))
    assert isinstance(parsed_gspo, GspoConfig)
    assert (parsed_gspo.hyperparameters.epsilon, parsed_gspo.hyperparameters.epsilon_high) == (
        3e-4,
        4e-4,
    )


# --- rewards ------------------------------------------------------------------------------


def test_a_reward_file_without_the_function_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_reward_function(RewardSettings(path=BUILTIN_REWARDS, function="nope"))


def test_the_trl_wrapper_scores_chat_completions_against_the_ground_truth() -> None:
    function = load_reward_function(RewardSettings(path=BUILTIN_REWARDS, function="math_answer"))
    reward = trl_reward(function, "math_answer")
    assert reward.__name__ == "math_answer"  # TRL logs rewards/math_answer/mean
    scores = reward(
        prompts=[[{"role": "user", "content": "What is 2 + 2?"}]] * 3,
        completions=[
            [{"role": "assistant", "content": "2 + 2 = 4."}],
            [{"role": "assistant", "content": "2 + 2 = 5."}],
            "plain text 4",
        ],
        data_source=["training_platform"] * 3,
        reward_model=[{"style": "rule", "ground_truth": "4"}] * 3,
        extra_info=[{"index": i, "split": "train"} for i in range(3)],
        trainer_state=None,
    )
    assert scores == [1.0, 0.0, 1.0]


def test_a_reward_that_returns_a_dict_gives_its_score(tmp_path: Path) -> None:
    path = tmp_path / "reward.py"
    path.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return {'score': 0.25, 'acc': False}\n"
    )
    reward = trl_reward(
        load_reward_function(RewardSettings(path=path, function="compute_score")), "x"
    )
    assert reward(completions=["a"], data_source=["d"], reward_model=[{"ground_truth": 1}]) == [
        0.25
    ]
