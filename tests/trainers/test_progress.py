"""Progress records: value filtering, append-only writing, routing of trainer events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

from transformers import TrainerControl, TrainerState

from training_platform.trainers.progress import (
    ProgressWriter,
    RunProgressCallback,
    console_line,
    directory_size,
    numeric_values,
)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_numeric_values_keep_numbers_only() -> None:
    logs = {"loss": 1.5, "num_tokens": 12, "grad_norm": float("nan"), "lr": float("inf")}
    logs |= {"flag": True, "note": "text", "list": [1]}
    values = numeric_values(logs)
    assert values["loss"] == 1.5 and values["num_tokens"] == 12 and values["lr"] == float("inf")
    assert math.isnan(values["grad_norm"])  # type: ignore[arg-type]


def test_non_finite_values_are_written_as_null_and_named(tmp_path: Path) -> None:
    writer = ProgressWriter(tmp_path / "metrics.jsonl")
    writer.metrics(step=3, values={"loss": float("nan"), "kl": float("-inf"), "lr": 0.1})
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["values"] == {"loss": None, "kl": None, "lr": 0.1}
    assert record["non_finite"] == {"loss": "nan", "kl": "-inf"}


def test_writer_appends_strict_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text('{"type": "earlier"}\n')
    writer = ProgressWriter(path)
    writer.started(max_steps=3)
    writer.metrics(step=1, values={"loss": None})
    lines = path.read_text().splitlines()
    assert lines[0] == '{"type": "earlier"}'
    assert json.loads(lines[2])["values"] == {"loss": None}
    assert "NaN" not in path.read_text()


def test_callback_routes_trainer_events(tmp_path: Path) -> None:
    writer = ProgressWriter(tmp_path / "metrics.jsonl")
    callback = RunProgressCallback(writer, run_dir=tmp_path, adapter=True)
    args = SimpleNamespace(output_dir=str(tmp_path / "checkpoints"))
    state = TrainerState(max_steps=5)
    control = TrainerControl()

    callback.on_train_begin(args, state, control)
    state.global_step = 5
    callback.on_step_end(args, state, control)
    callback.on_log(args, state, control, logs={"loss": 2.0, "train_tokens_per_second": 9.0})
    checkpoint = tmp_path / "checkpoints" / "checkpoint-5"
    (checkpoint / "sub").mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"x" * 100)
    (checkpoint / "sub" / "state.json").write_bytes(b"{}")
    callback.on_save(args, state, control)
    callback.on_log(args, state, control, logs={"train_runtime": 1.0, "train_loss": 2.0})

    records = _lines(tmp_path / "metrics.jsonl")
    assert [r["type"] for r in records] == ["started", "metrics", "checkpoint", "summary"]
    assert records[0]["max_steps"] == 5
    assert records[1]["values"] == {"loss": 2.0}
    assert records[2]["path"] == "checkpoints/checkpoint-5"
    assert (records[2]["final"], records[2]["adapter"]) == (False, True)
    assert records[2]["size_bytes"] == 102
    assert records[3]["values"] == {"train_runtime": 1.0, "train_loss": 2.0}
    assert (tmp_path / "heartbeat").is_file()


def test_directory_size_counts_files_recursively(tmp_path: Path) -> None:
    assert directory_size(tmp_path / "absent") == 0
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"1234")
    (tmp_path / "top.json").write_bytes(b"{}")
    (tmp_path / "link").symlink_to(tmp_path / "top.json")
    assert directory_size(tmp_path) == 6


def test_console_lines_are_short_and_readable() -> None:
    line = console_line(3, 10, {"loss": 1.23456789, "num_tokens": 12, "kl": None})
    assert line == "step 3/10 loss=1.235 num_tokens=12 kl=None"
