"""The merge program on hand-made tensors: TIES elects each entry's sign by the weighted sum
of the task vectors and averages only the models that agree with it (a disjoint mean). The
models are the tiny model with one tensor overwritten by chosen values. (That a soup is the
arithmetic mean of its checkpoints: tests/e2e/test_surgery.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow
TENSOR = "model.norm.weight"


def _with_values(directory: Path, values: list[float]) -> Path:
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    tensor = torch.ones_like(tensors[TENSOR])
    tensor[: len(values)] = torch.tensor(values)
    tensors[TENSOR] = tensor
    save_file(tensors, str(path), metadata={"format": "pt"})
    return directory


def _merge(tmp_path: Path, spec: dict[str, object]) -> dict[str, torch.Tensor]:
    run = tmp_path / "run"
    run.mkdir()
    config = {
        "mergekit": spec,
        "output_dir": str(run),
        "model_dir": "model",
        "metrics_path": str(run / "metrics.jsonl"),
        "card": {"name": "hand-made", "parents": [{"name": "a", "role": "base"}]},
    }
    (run / "merge_config.json").write_text(json.dumps(config))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training_platform.trainers.merge",
            "--config",
            str(run / "merge_config.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "started" and records[-1]["type"] == "checkpoint"
    assert records[-1]["final"] and records[-1]["path"] == "model"
    assert records[-1]["step"] == records[0]["max_steps"]
    return load_file(str(run / "model" / "model.safetensors"))


def _copy(source: Path, destination: Path, values: list[float]) -> Path:
    shutil.copytree(source, destination)
    return _with_values(destination, values)


def test_ties_elects_signs_and_takes_the_disjoint_mean(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Copies of one model, so every other tensor's task vector is 0. Base 1 everywhere; task
    # vectors (m - base) of the chosen tensor: model b (+2, -1, +3), model c (-1, -2, +1).
    base = _copy(tiny_model_dir, tmp_path / "a", [1.0, 1.0, 1.0])
    b = _copy(tiny_model_dir, tmp_path / "b", [3.0, 0.0, 4.0])
    c = _copy(tiny_model_dir, tmp_path / "c", [0.0, -1.0, 2.0])
    merged = _merge(
        tmp_path,
        {
            "merge_method": "ties",
            "base_model": str(base),
            "models": [
                {"model": str(b), "parameters": {"weight": 1.0, "density": 1.0}},
                {"model": str(c), "parameters": {"weight": 1.0, "density": 1.0}},
            ],
            "dtype": "float32",
        },
    )
    # Entry 0: sum +1 elects +, only b agrees: 1 + 2. Entry 1: both negative: 1 + (-1 - 2) / 2.
    # Entry 2: both positive: 1 + (3 + 1) / 2. Elsewhere no change: 1.
    expected = torch.ones_like(merged[TENSOR])
    expected[:3] = torch.tensor([3.0, -0.5, 3.0])
    assert torch.allclose(merged[TENSOR], expected, atol=1e-6), merged[TENSOR][:4]
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    for name, tensor in merged.items():
        if name != TENSOR:
            assert torch.equal(tensor, original[name]), name
