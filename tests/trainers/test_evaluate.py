"""The evaluation program: its scoring rules, its config, and real runs in a subprocess.

The runs evaluate the tiny model on tiny-math-eval prepared as the platform prepares a
prompt_answer dataset for the rl task (datasets/formats.py, written with pyarrow as
datasets/service.py writes it). A random model of 180k parameters answers nothing right, so the
runs check the records and files, and that every row's verdict is the metric's own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from training_platform.assets.tiny import BUNDLED_DATASETS
from training_platform.datasets.formats import convert_row
from training_platform.trainers.evaluate import (
    ConfigError,
    batches,
    choose_engine,
    exact_match,
    last_number,
    load_config,
    numeric_match,
    parse_config,
    vllm_available,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = "training_platform.trainers.evaluate"
RUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# --- scoring -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("35 + 31 = 66.", Decimal(66)),
        ("the answer is -12", Decimal(-12)),
        ("It costs 1,234 coins", Decimal(1234)),
        ("1,234,567.5 in all", Decimal("1234567.5")),
        ("pi is about 3.14.", Decimal("3.14")),
        ("5-3", Decimal(3)),
        ("x = -0.5", Decimal("-0.5")),
        ("1,2,3", Decimal(3)),
        ("1,2345", Decimal(2345)),
        ("so \\boxed{7}, not 8", Decimal(7)),
        ("\\boxed{1,234} then \\boxed{-3.5} and 9", Decimal("-3.5")),
        ("\\boxed{x} is 4", Decimal(4)),
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text: str, number: Decimal | None) -> None:
    assert last_number(text) == number


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("35 + 31 = 66.", "66", True),
        ("66", "66", True),
        ("66.0", "66", True),
        ("The total is 1,234.", "1234", True),
        ("1234", "1,234", True),
        ("50 - 62 = -12", "-12", True),
        ("66 or maybe 67", "66", False),
        ("35 + 31 = 67.", "66", False),
        ("", "66", False),
        ("sixty-six", "66", False),
        ("66", "no number", False),
    ],
)
def test_numeric_match(completion: str, answer: str, expected: bool) -> None:
    assert numeric_match(completion, answer) is expected


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("Quellport", "Quellport", True),
        ("  quellport.\n", "Quellport", True),
        ("Ostrava   Nova", "ostrava nova.", True),
        ("OSTRAVA\nNOVA", "Ostrava Nova", True),
        ("Quellport!", "Quellport", False),
        ("The capital is Quellport", "Quellport", False),
        ("66", "66.0", False),
    ],
)
def test_exact_match(completion: str, answer: str, expected: bool) -> None:
    assert exact_match(completion, answer) is expected


def test_batches_cover_every_row_once() -> None:
    assert batches(8, 3) == [range(0, 3), range(3, 6), range(6, 8)]
    assert batches(4, 16) == [range(0, 4)]


@pytest.mark.parametrize(
    ("requested", "gpus", "cuda", "vllm", "adapter", "engine"),
    [
        ("auto", 0, False, True, False, "transformers"),
        ("auto", 1, False, True, False, "transformers"),  # the GPUs are not visible here
        ("auto", 1, True, False, False, "transformers"),
        ("auto", 2, True, True, False, "vllm"),
        ("auto", 2, True, True, True, "transformers"),
        ("transformers", 2, True, True, False, "transformers"),
        ("vllm", 0, False, True, False, "vllm"),
    ],
)
def test_choose_engine(
    requested: Any, gpus: int, cuda: bool, vllm: bool, adapter: bool, engine: str
) -> None:
    assert choose_engine(requested, gpus=gpus, cuda=cuda, vllm=vllm, adapter=adapter) == engine


def test_vllm_asked_for_but_missing_or_for_an_adapter_is_refused() -> None:
    with pytest.raises(ConfigError, match="vllm is not installed"):
        choose_engine("vllm", gpus=1, cuda=True, vllm=False, adapter=False)
    with pytest.raises(ConfigError, match="full models only"):
        choose_engine("vllm", gpus=1, cuda=True, vllm=True, adapter=True)


# --- config --------------------------------------------------------------------------------


def _config(model: Path, data: Path, run_dir: Path, **values: Any) -> dict[str, Any]:
    return {
        "model_path": str(model),
        "dataset_path": str(data),
        "output_dir": str(run_dir),
        "metrics_path": str(run_dir / "metrics.jsonl"),
        "gpus": 0,
        **values,
    }


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"dataset_path": "data.parquet"}, "dataset_path: Value error, must be an absolute"),
        ({"dataset_path": "/d/data.jsonl"}, "dataset_path: Value error, must be a .parquet"),
        ({"metric": "bleu"}, "metric:"),
        ({"batch_size": 0}, "batch_size:"),
        ({"temperature": -1.0}, "temperature:"),
        ({"beam_width": 4}, "beam_width: Extra inputs"),
    ],
)
def test_a_bad_config_is_refused_in_one_line(change: dict[str, Any], where: str) -> None:
    config = {**_config(Path("/m"), Path("/d/data.parquet"), Path("/r")), **change}
    with pytest.raises(ConfigError) as caught:
        parse_config(json.dumps(config))
    assert where in str(caught.value)
    assert "\n" not in str(caught.value)


# --- real runs -----------------------------------------------------------------------------


def prepared_rows(name: str) -> list[dict[str, Any]]:
    """A bundled prompt_answer dataset as rl rows, converted the way the platform prepares it."""
    lines = BUNDLED_DATASETS[name].path.read_text(encoding="utf-8").splitlines()
    return [
        convert_row("prompt_answer", "rl", json.loads(line), number)
        for number, line in enumerate(lines, start=1)
    ]


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-math-eval prepared for the rl task."""
    base = tmp_path_factory.mktemp("prepared")
    return write_parquet(prepared_rows("tiny-math-eval"), base / "rl.parquet")


def evaluate(config: dict[str, Any], run_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run the program as a launch plan does: in the run directory, on eval_config.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval_config.json").write_text(json.dumps(config), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", MODULE, "--config", "eval_config.json"],
        cwd=run_dir,
        env={**RUN_ENV, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_a_run_on_the_tiny_model_records_accuracy(
    tiny_model_dir: Path, eval_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = _config(tiny_model_dir, eval_data, run_dir, max_samples=8, batch_size=3)
    result = evaluate(config, run_dir)
    assert result.returncode == 0, result.stderr[-4000:]

    records = _lines(run_dir / "metrics.jsonl")
    assert [r["type"] for r in records] == ["started", "metrics", "metrics", "metrics", "summary"]
    assert records[0]["max_steps"] == 3
    steps = [r for r in records if r["type"] == "metrics"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r["values"]["total"] for r in steps] == [3, 6, 8]
    for record in steps:
        values = record["values"]
        assert set(values) == {"accuracy", "correct", "total"}
        assert values["accuracy"] == values["correct"] / values["total"]
    summary = records[-1]
    assert summary["step"] == 3
    assert {k: summary["values"][k] for k in ("accuracy", "correct", "total")} == steps[-1][
        "values"
    ]

    predictions = _lines(run_dir / "predictions.jsonl")
    assert len(predictions) == 8
    expected = prepared_rows("tiny-math-eval")[:8]
    for index, (prediction, row) in enumerate(zip(predictions, expected, strict=True)):
        assert set(prediction) == {
            *("index", "seconds", "tokens", "prompt", "answer", "completion", "correct", "labels")
        }
        assert prediction["index"] == index and prediction["seconds"] > 0
        assert prediction["tokens"] is None  # batched generate reports no per-sample count
        assert prediction["labels"] == json.loads(row["extra_info"]["labels"])  # {"op": ...}
        assert prediction["labels"]["op"] in ("addition", "subtraction")
        assert prediction["prompt"] == row["prompt"][-1]["content"]
        assert prediction["answer"] == row["reward_model"]["ground_truth"]
        assert prediction["correct"] is numeric_match(
            prediction["completion"], prediction["answer"]
        )
    correct = sum(p["correct"] for p in predictions)

    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert results == {
        "metric": "numeric_match",
        "accuracy": correct / 8,
        "correct": correct,
        "total": 8,
        "model_path": tiny_model_dir.name,
        "engine": "transformers",
    }
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"accuracy \d\.\d{4} \(\d/8\), numeric_match", last), last


@pytest.mark.slow
def test_a_peft_adapter_is_evaluated_on_its_base_model(
    tiny_model_dir: Path, eval_data: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # What a LoRA run leaves in model/: adapter files whose config names the base model, and
    # no tokenizer (the base model's is used).
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    adapter_dir = tmp_path / "model"
    get_peft_model(base, lora).save_pretrained(adapter_dir)
    assert not (adapter_dir / "tokenizer_config.json").exists()

    run_dir = tmp_path / "run"
    config = _config(adapter_dir, eval_data, run_dir, max_samples=2, metric="exact_match")
    result = evaluate(config, run_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert (results["metric"], results["total"], results["model_path"]) == (
        "exact_match",
        2,
        "model",
    )
    assert len(_lines(run_dir / "predictions.jsonl")) == 2


@pytest.mark.slow
def test_n_sampled_completions_per_prompt_are_recorded_and_seeded(
    tiny_model_dir: Path, eval_data: Path, tmp_path: Path
) -> None:
    found = []
    for attempt in ("one", "two"):
        run_dir = tmp_path / attempt
        config = _config(
            tiny_model_dir, eval_data, run_dir, max_samples=3, batch_size=2, n=4,
            temperature=1.0, seed=7, max_new_tokens=8,
        )  # fmt: skip
        result = evaluate(config, run_dir)
        assert result.returncode == 0, result.stderr[-4000:]
        predictions = _lines(run_dir / "predictions.jsonl")
        assert [p["index"] for p in predictions] == [0, 1, 2]
        for prediction in predictions:
            assert len(prediction["completions"]) == 4
            assert prediction["completion"] == prediction["completions"][0]
        found.append([p["completions"] for p in predictions])
    assert found[0] == found[1]  # the same seed draws the same completions
    # Sampled: a random model's four draws of a prompt are not all one text.
    assert any(len(set(draws)) > 1 for draws in found[0])
    # Greedy decoding has one completion per prompt: asking for more is a config error.
    greedy = tmp_path / "greedy.json"
    greedy.write_text(json.dumps(_config(tiny_model_dir, eval_data, tmp_path / "g", n=2)))
    with pytest.raises(ConfigError, match="n: more than one completion"):
        load_config(greedy)


def test_a_missing_model_is_a_config_error(eval_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = evaluate(_config(tmp_path / "no-such-model", eval_data, run_dir), run_dir)
    assert result.returncode == 2
    assert "model_path: no such directory" in result.stderr
    assert not (run_dir / "metrics.jsonl").exists()


def test_an_empty_dataset_is_a_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = prepared_rows("tiny-math-eval")[:1]
    empty = pa.Table.from_pylist(rows).slice(0, 0)
    pq.write_table(empty, tmp_path / "empty.parquet")
    run_dir = tmp_path / "run"
    result = evaluate(_config(tiny_model_dir, tmp_path / "empty.parquet", run_dir), run_dir)
    assert result.returncode == 2
    assert "has no rows to evaluate" in result.stderr


def test_a_dataset_without_rl_columns_is_a_config_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = write_parquet(
        [{"messages": [{"role": "user", "content": "hi"}]}], tmp_path / "x.parquet"
    )
    run_dir = tmp_path / "run"
    result = evaluate(_config(tiny_model_dir, data, run_dir), run_dir)
    assert result.returncode == 2
    assert "rl data needs column(s) prompt, reward_model" in result.stderr


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_vllm_asked_for_where_it_is_missing_is_a_config_error(
    tiny_model_dir: Path, eval_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    result = evaluate(_config(tiny_model_dir, eval_data, run_dir, engine="vllm"), run_dir)
    assert result.returncode == 2
    assert "engine: vllm is not installed on this host" in result.stderr
