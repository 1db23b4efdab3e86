"""verl SFT really runs on CPU through the platform's own plan: backend -> LocalRunner -> wrapper.

The CPU smoke mode (`device: "cpu"`) trains the tiny model for 20 steps with verl's FSDP2
engine over gloo, and the wrapper converts the last checkpoint into a Hugging Face model in
`<run dir>/model`, the final checkpoint record; a second run resumes from the step-10 checkpoint,
with the conversion turned off.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("verl", reason="verl's environment (environments/gpu-verl.txt)")
pa = pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402

from training_platform.assets.tiny import DATASETS_DIR  # noqa: E402
from training_platform.backends.base import (  # noqa: E402
    LaunchContext,
    LaunchPlan,
    get_backend,
    validate_parameters,
)
from training_platform.runners.base import RunState  # noqa: E402
from training_platform.runners.local import LocalRunner  # noqa: E402

STEPS = 20
VALUES: dict[str, Any] = {
    "device": "cpu",
    "total_steps": STEPS,
    "train_batch_size": 8,
    "max_length": 128,
    "learning_rate": 1e-3,  # high, so that 20 steps of a random tiny model visibly learn
    "save_freq": 10,
}


def sft_parquet(target: Path) -> Path:
    """The bundled tiny-sft.jsonl as verl's SFT data: one `messages` column."""
    rows = [json.loads(line) for line in (DATASETS_DIR / "tiny-sft.jsonl").read_text().splitlines()]
    pq.write_table(pa.table({"messages": [row["messages"] for row in rows]}), target)
    return target


def run_to_the_end(plan: LaunchPlan, run_dir: Path, timeout: float = 120) -> RunState:
    """Submit with the real local runner and poll until the process group has ended."""
    runner = LocalRunner(node="test")
    handle = runner.submit(plan, str(run_dir))
    deadline = time.monotonic() + timeout
    while (state := runner.poll(handle)).status == "running":
        if time.monotonic() > deadline:
            runner.cancel(handle, force=True)
            pytest.fail(f"still running after {timeout} s:\n{_log_tail(run_dir)}")
        time.sleep(0.5)
    return state


def _log_tail(run_dir: Path) -> str:
    log = run_dir / "output.log"
    return log.read_text()[-4000:] if log.exists() else "(no output.log)"


def train(
    directory: Path,
    model_dir: Path,
    dataset: Path,
    resume_from: str | None = None,
    **values: Any,
) -> Path:
    """Plan verl SFT on CPU with the backend and run it to its end; returns the run dir."""
    context = LaunchContext(
        run_dir=str(directory),
        python=sys.executable,
        model_path=str(model_dir),
        dataset_path=str(dataset),
        dataset_format="sft",
        cpu_threads=1,
        resume_from=resume_from,
    )
    backend = get_backend("verl", "sft")
    plan = backend.plan(validate_parameters(backend, {**VALUES, **values}, gpus=0), context)
    state = run_to_the_end(plan, directory)
    assert (state.status, state.exit_code) == ("exited", 0), _log_tail(directory)
    return directory


def records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl records."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def losses(run_dir: Path) -> dict[int, float]:
    """train/loss by step."""
    return {
        r["step"]: r["values"]["train/loss"] for r in records(run_dir) if r["type"] == "metrics"
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SFT parquet, made once for the module."""
    return sft_parquet(tmp_path_factory.mktemp("data") / "tiny-sft.parquet")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, dataset: Path) -> Path:
    """One 20-step CPU run of verl SFT through the platform's plan, with its final model."""
    return train(tmp_path_factory.mktemp("sft") / "run", tiny_model_dir, dataset)


@pytest.mark.slow
def test_verl_sft_trains_the_tiny_model_on_cpu(trained: Path) -> None:
    found = records(trained)
    assert found[0] == {**found[0], "type": "started", "max_steps": STEPS}
    loss = list(losses(trained).values())
    assert len(loss) == STEPS
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.5, loss
    checkpoints = [r for r in found if r["type"] == "checkpoint"]
    assert [(c["step"], c["path"], c["final"]) for c in checkpoints] == [
        (10, "checkpoints/global_step_10", False),
        (20, "checkpoints/global_step_20", False),
        (20, "model", True),  # the last checkpoint, converted after verl exited
    ]
    assert all(c["size_bytes"] > 0 and (trained / c["path"]).is_dir() for c in checkpoints)
    assert checkpoints[-1]["adapter"] is False
    # The final record comes last but for the summary, as with the TRL trainers.
    assert [r["type"] for r in found[-2:]] == ["checkpoint", "summary"]


@pytest.mark.slow
def test_a_resumed_run_continues_from_its_checkpoint(
    trained: Path, tiny_model_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    checkpoint = str(trained / "checkpoints" / "global_step_10")
    resumed = train(
        tmp_path / "run", tiny_model_dir, dataset, resume_from=checkpoint, export_final_model=False
    )
    # Same weights, optimizer, data order and random state: steps 11-20 repeat exactly.
    expected = {step: loss for step, loss in losses(trained).items() if step > 10}
    assert losses(resumed) == expected
    paths = [r["path"] for r in records(resumed) if r["type"] == "checkpoint"]
    assert paths == ["checkpoints/global_step_20"]
    # export_final_model false: the shards only, and the run still ends with its summary.
    assert not (resumed / "model").exists()
    assert records(resumed)[-1]["type"] == "summary"


@pytest.mark.slow
def test_the_run_leaves_a_hugging_face_model_with_its_tokenizer(
    trained: Path, tiny_model_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained / "model")
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == initial.config.vocab_size
    changed = [
        name
        for name, weight in model.state_dict().items()
        if not torch.equal(weight.float(), initial.state_dict()[name].float())
    ]
    assert changed, "the final model has the initial weights"
    tokenizer = AutoTokenizer.from_pretrained(trained / "model")
    original = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert tokenizer("hello world")["input_ids"] == original("hello world")["input_ids"]
    assert tokenizer.apply_chat_template(messages) == original.apply_chat_template(messages)
    with torch.no_grad():
        logits = model(**tokenizer("hello world", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
