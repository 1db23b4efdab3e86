"""The bundled datasets: committed files match the generator, rows have the documented shapes."""

from __future__ import annotations

import json
from pathlib import Path

from training_platform.assets.generate_datasets import write_datasets
from training_platform.assets.tiny import BUNDLED_DATASETS


def _rows(name: str) -> list[dict]:
    lines = BUNDLED_DATASETS[name].path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_generator_reproduces_committed_files(tmp_path: Path) -> None:
    for path in write_datasets(tmp_path):
        committed = BUNDLED_DATASETS[path.stem].path
        assert path.read_bytes() == committed.read_bytes(), f"{committed} is stale"


def test_files_stay_small() -> None:
    for dataset in BUNDLED_DATASETS.values():
        assert dataset.path.stat().st_size < 100_000


def test_sft_rows_are_openai_chat() -> None:
    rows = _rows("tiny-sft")
    assert len(rows) == 400
    for row in rows:
        assert list(row) == ["messages"]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])
    assert len({row["messages"][0]["content"] for row in rows}) == 400


def test_preference_rows_prefer_the_correct_answer() -> None:
    rows = _rows("tiny-prefs")
    assert len(rows) == 200
    for row in rows:
        assert list(row) == ["prompt", "chosen", "rejected"]
        assert row["chosen"] != row["rejected"]
    sums = [row for row in rows if " + " in row["prompt"]]
    for row in sums:
        a, b = (int(x) for x in row["prompt"].removeprefix("What is ").rstrip("?").split(" + "))
        assert row["chosen"].endswith(f"= {a + b}.")
        assert not row["rejected"].endswith(f"= {a + b}.")


def test_math_answers_are_correct() -> None:
    rows = _rows("tiny-math")
    assert len(rows) == 200
    for row in rows:
        assert list(row) == ["prompt", "answer"]
        a, op, b = row["prompt"].removeprefix("What is ").rstrip("?").split(" ")
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert row["answer"] == str(expected)


def test_math_eval_rows_are_held_out_and_correct() -> None:
    rows = _rows("tiny-math-eval")
    assert len(rows) == 50
    for row in rows:
        assert list(row) == ["prompt", "answer", "op"]  # op: a label to break results down by
        a, op, b = row["prompt"].removeprefix("What is ").rstrip("?").split(" ")
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert row["answer"] == str(expected)
        assert row["op"] == {"+": "addition", "-": "subtraction"}[op]
    prompts = {row["prompt"] for row in rows}
    assert len(prompts) == 50
    assert prompts.isdisjoint(row["prompt"] for row in _rows("tiny-math"))


def test_only_held_out_sets_stay_out_of_the_tokenizer_corpus() -> None:
    left_out = {d.name for d in BUNDLED_DATASETS.values() if not d.tokenizer_corpus}
    assert left_out == {"tiny-math-eval"}
