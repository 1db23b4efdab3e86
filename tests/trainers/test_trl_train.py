"""The TRL training program, run for real in a subprocess on the tiny model."""

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

from training_platform.assets.tiny import BUNDLED_DATASETS, TINY_MODEL_NAME, build_tiny_model
from training_platform.trainers.trl_train import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINER_MODULE = "training_platform.trainers.trl_train"
# Two OpenMP threads on a busy two-core box made the 30 steps 20x slower (0.6 s -> 11 s); one
# thread is as fast as two on an idle box for a model this small.
TRAIN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SUMMARY_KEYS = {"train_runtime", "train_loss", "total_flos", "train_samples_per_second"}


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    run_dir: Path
    records: list[dict[str, Any]]
    wall_s: float


def _write_config(path: Path, **overrides: Any) -> Path:
    path.write_text(json.dumps(overrides), encoding="utf-8")
    return path


def _config(model_dir: Path, run_dir: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "algorithm": "sft",
        "model_path": str(model_dir),
        "dataset_path": str(BUNDLED_DATASETS["tiny-sft"].path),
        "dataset_format": "messages",
        "output_dir": str(run_dir),
        "metrics_path": str(run_dir / "metrics.jsonl"),
        "hyperparameters": {"max_steps": 30},
        **overrides,
    }


def _train(config: dict[str, Any], config_path: Path) -> subprocess.CompletedProcess[str]:
    _write_config(config_path, **config)
    return subprocess.run(
        [sys.executable, "-m", TRAINER_MODULE, "--config", str(config_path)],
        cwd=REPO_ROOT,
        env=TRAIN_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / TINY_MODEL_NAME)


@pytest.fixture(scope="module")
def sft_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("sft")
    run_dir = base / "run"
    start = time.monotonic()
    result = _train(_config(model_dir, run_dir), base / "train_config.json")
    wall_s = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    return Run(result, run_dir, _records(run_dir / "metrics.jsonl"), wall_s)


def _assert_time(record: dict[str, Any]) -> None:
    assert datetime.fromisoformat(record["time"]).utcoffset() == timedelta(0)


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
        assert set(record) == {"type", "time", "step", "path", "final", "adapter"}
        assert record["adapter"] is False
    # save_total_limit=2 rotated the oldest checkpoint away; its record stays.
    assert not (sft_run.run_dir / "checkpoints/checkpoint-10").exists()
    assert (sft_run.run_dir / "checkpoints/checkpoint-30/model.safetensors").is_file()

    (summary,) = [r for r in records if r["type"] == "summary"]
    assert set(summary) == {"type", "time", "step", "values"}
    assert summary["step"] == 30
    assert set(summary["values"]) >= SUMMARY_KEYS
    assert records[-1]["path"] == "model"


@pytest.mark.slow
def test_loss_falls(sft_run: Run) -> None:
    losses = [r["values"]["loss"] for r in sft_run.records if r["type"] == "metrics"]
    assert all(math.isfinite(loss) for loss in losses)
    last_five = sum(losses[-5:]) / 5
    print(f"first loss {losses[0]:.3f}, mean of last five {last_five:.3f}")
    assert last_five < losses[0] - 1.0


@pytest.mark.slow
def test_final_model_reloads_and_generates(sft_run: Run) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = sft_run.run_dir / "model"
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


@pytest.mark.slow
def test_lora_on_prompt_response_saves_an_adapter(model_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"What is {i} + 1?", "response": f"{i} + 1 = {i + 1}."} for i in range(16)]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    run_dir = tmp_path / "run"
    config = _config(
        model_dir,
        run_dir,
        dataset_path=str(dataset),
        dataset_format="prompt_response",
        hyperparameters={"max_steps": 3, "save_steps": 2, "lora_r": 4, "learning_rate": 5e-3},
    )
    result = _train(config, tmp_path / "train_config.json")
    assert result.returncode == 0, result.stderr
    assert "saved final adapter" in result.stdout

    checkpoints = [r for r in _records(run_dir / "metrics.jsonl") if r["type"] == "checkpoint"]
    assert [(r["step"], r["path"], r["final"], r["adapter"]) for r in checkpoints] == [
        (2, "checkpoints/checkpoint-2", False, True),
        (3, "checkpoints/checkpoint-3", False, True),
        (3, "model", True, True),
    ]
    adapter_config = json.loads((run_dir / "model/adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    assert adapter_config["base_model_name_or_path"] == str(model_dir)
    assert not (run_dir / "model/model.safetensors").exists()


def test_bad_config_exits_2_with_one_line(model_dir: Path, tmp_path: Path) -> None:
    config = _config(model_dir, tmp_path / "run", hyperparameters={"max_steps": 0})
    result = _train(config, tmp_path / "train_config.json")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "config error: hyperparameters.max_steps: Value error, must be -1 (train for "
        "num_train_epochs) or a positive step count"
    )
    assert not (tmp_path / "run").exists()


def test_missing_dataset_exits_nonzero_with_reason(model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jsonl"
    result = _train(_config(model_dir, tmp_path / "run", dataset_path=str(missing)), tmp_path / "c")
    assert result.returncode != 0
    assert f"dataset_path: no such file: {missing}" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algorithm": "ppo"}, "algorithm: Input should be 'sft'"),
        ({"model_path": "relative/model"}, "model_path: Value error, must be an absolute path"),
        ({"dataset_path": "/data/rows.csv"}, "dataset_path: Value error, must end with one of"),
        ({"dataset_format": "text"}, "dataset_format: Input should be 'messages' or"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"hyperparameters": {"lr": 0.1}}, "hyperparameters.lr: Extra inputs are not permitted"),
        ({"hyperparameters": {"max_steps": "30"}}, "hyperparameters.max_steps: Input should be"),
        ({"hyperparameters": {"lora_dropout": 1.0}}, "hyperparameters.lora_dropout: Input should"),
    ],
)
def test_invalid_configs_are_rejected(
    model_dir: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = _write_config(tmp_path / "c.json", **_config(model_dir, tmp_path / "run", **change))
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


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


def test_defaults_fill_in_hyperparameters(model_dir: Path, tmp_path: Path) -> None:
    config = _config(model_dir, tmp_path / "run")
    del config["hyperparameters"]
    hp = load_config(_write_config(tmp_path / "c.json", **config)).hyperparameters
    assert (hp.max_steps, hp.learning_rate, hp.per_device_train_batch_size) == (30, 1e-3, 8)
    assert (hp.save_steps, hp.save_total_limit, hp.lora_r, hp.assistant_only_loss) == (
        10,
        2,
        0,
        False,
    )
