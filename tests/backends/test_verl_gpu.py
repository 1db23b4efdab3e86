"""verl SFT really trains on an NVIDIA GPU through the platform's own plan.

The GPU counterpart of tests/trainers/test_verl_cpu_sft.py: the tiny model, the bundled
tiny-sft rows prepared as the platform prepares an SFT dataset, the plan from the verl SFT
backend for one GPU (torchrun -m verl.trainer.sft_trainer under the verl_run wrapper), started
by the real LocalRunner. verl must train for STEPS steps on the GPU with a falling loss, the
wrapper must turn verl's metrics file into metrics.jsonl records, and the checkpoints and the
converted final model must be where the platform looks for them.

Needs no fixture of tests/conftest.py, so that a GPU host with only the training environment
can run it on its own:

    python -m pytest --noconftest -o addopts= -p no:asyncio tests/backends/test_verl_gpu.py
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu

if shutil.which("nvidia-smi") is None:
    pytest.skip("no NVIDIA GPU (nvidia-smi) on this machine", allow_module_level=True)
pytest.importorskip("verl", reason="verl's environment (environments/gpu-verl.txt)")
pa = pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402

from training_platform.assets import build_tiny_model  # noqa: E402
from training_platform.assets.tiny import BUNDLED_DATASETS  # noqa: E402
from training_platform.backends.base import (  # noqa: E402
    LaunchContext,
    get_backend,
    validate_parameters,
)
from training_platform.datasets import formats, reader  # noqa: E402
from training_platform.runners.base import RunState  # noqa: E402
from training_platform.runners.local import LocalRunner  # noqa: E402

STEPS = 30
SAVE_FREQ = 15
TIMEOUT_S = 600
VALUES: dict[str, Any] = {
    "total_steps": STEPS,
    "train_batch_size": 8,
    "micro_batch_size_per_gpu": 4,  # two micro-batches per step: gradient accumulation too
    "max_length": 128,
    "learning_rate": 1e-3,  # high, so that a random tiny model visibly learns in a few steps
    "save_freq": SAVE_FREQ,
}


def prepared_sft_parquet(target: Path) -> Path:
    """The bundled tiny-sft rows converted as datasets.service.prepare does for `sft`."""
    source = BUNDLED_DATASETS["tiny-sft"]
    rows = [
        formats.convert_row(source.format, "sft", row, number)
        for number, row in reader.rows(source.path)
    ]
    pq.write_table(pa.Table.from_pylist(rows), target)
    return target


def _log_tail(run_dir: Path) -> str:
    log = run_dir / "output.log"
    return log.read_text()[-6000:] if log.exists() else "(no output.log)"


def train(
    run_dir: Path, model_dir: Path, dataset: Path, *, gpus: int = 1, **values: Any
) -> RunState:
    """Plan verl SFT with the platform's backend and run it to its end with the LocalRunner."""
    context = LaunchContext(
        run_dir=str(run_dir),
        python=sys.executable,
        model_path=str(model_dir),
        dataset_path=str(dataset),
        dataset_format="sft",
        devices=tuple(range(gpus)),
        gpus=gpus,
        cpu_threads=4,
    )
    backend = get_backend("verl", "sft")
    plan = backend.plan(validate_parameters(backend, {**VALUES, **values}, gpus=gpus), context)
    runner = LocalRunner(node="gpu-test")
    handle = runner.submit(plan, str(run_dir))
    deadline = time.monotonic() + TIMEOUT_S
    while (state := runner.poll(handle)).status == "running":
        if time.monotonic() > deadline:
            runner.cancel(handle, force=True)
            pytest.fail(f"still running after {TIMEOUT_S} s:\n{_log_tail(run_dir)}")
        time.sleep(0.5)
    return state


def records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl records, as the platform ingests them."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of verl SFT on one GPU through the platform's plan; returns its run dir."""
    base = tmp_path_factory.mktemp("verl-gpu")
    model_dir = build_tiny_model(base / "tiny-qwen2")
    dataset = prepared_sft_parquet(base / "tiny-sft.parquet")
    run_dir = base / "run"
    started = time.monotonic()
    state = train(run_dir, model_dir, dataset)
    print(f"\nverl SFT on the GPU: {state}, {time.monotonic() - started:.1f} s, in {run_dir}")
    assert (state.status, state.exit_code) == ("exited", 0), _log_tail(run_dir)
    return run_dir


def test_verl_sft_trains_on_the_gpu_with_a_falling_loss(trained: Path) -> None:
    found = records(trained)
    assert found[0] == {**found[0], "type": "started", "max_steps": STEPS}
    metrics = {r["step"]: r["values"] for r in found if r["type"] == "metrics"}
    assert sorted(metrics) == list(range(1, STEPS + 1))
    loss = [metrics[step]["train/loss"] for step in sorted(metrics)]
    print("train/loss by step:", [round(value, 4) for value in loss])
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.5, loss
    # The weights lived on the GPU: verl reports the device's peak memory (0 on CPU).
    assert all(values["perf/max_memory_allocated_gb"] > 0 for values in metrics.values())
    # verl's own file logger wrote the same steps the wrapper turned into records.
    verl_lines = (trained / "verl_metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in verl_lines] == list(range(1, STEPS + 1))
    assert found[-1]["type"] == "summary"
    assert found[-1]["step"] == STEPS


def test_the_checkpoints_and_the_final_model_are_where_the_platform_looks(
    trained: Path,
) -> None:
    checkpoints = [r for r in records(trained) if r["type"] == "checkpoint"]
    assert [(c["step"], c["path"], c["final"]) for c in checkpoints] == [
        (SAVE_FREQ, f"checkpoints/global_step_{SAVE_FREQ}", False),
        (STEPS, f"checkpoints/global_step_{STEPS}", False),
        (STEPS, "model", True),  # the last checkpoint, converted after verl exited
    ]
    assert all(c["size_bytes"] > 0 and (trained / c["path"]).is_dir() for c in checkpoints)
    tracker = trained / "checkpoints" / "latest_checkpointed_iteration.txt"
    assert tracker.read_text().strip() == str(STEPS)
    shards = trained / "checkpoints" / f"global_step_{STEPS}"
    assert list(shards.glob("model_world_size_1_rank_0.pt")), sorted(
        p.name for p in shards.iterdir()
    )
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        assert (trained / "model" / name).is_file(), name


def test_the_final_model_loads_and_differs_from_the_initial_one(trained: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained / "model")
    initial = AutoModelForCausalLM.from_pretrained(trained.parent / "tiny-qwen2")
    changed = [
        name
        for name, weight in model.state_dict().items()
        if not torch.equal(weight.float(), initial.state_dict()[name].float())
    ]
    assert changed, "the final model has the initial weights"
    tokenizer = AutoTokenizer.from_pretrained(trained / "model")
    with torch.no_grad():
        logits = model(**tokenizer("2+2=", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
