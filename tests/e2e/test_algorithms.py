"""Every TRL algorithm trains the tiny model to completion through the queue, in the expected
direction, and leaves a model that reloads and generates.

RL needs a policy that sometimes produces something a rule can reward; a random tiny model
does not. So an SFT job runs first (through the queue like the rest), its final model is
registered as a model, and DPO, GRPO, GSPO and PPO start from it. The `format` reward scores
the answer shape the warm-up taught ("a + b = c."), so its mean can rise within a few dozen
steps on two CPU cores.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from statistics import mean
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROLLOUT = {"learning_rate": 2e-3, "per_device_train_batch_size": 16, "max_completion_length": 16}
JOBS: dict[str, dict[str, Any]] = {
    "dpo": {
        "dataset": "tiny-prefs",
        "hyperparameters": {
            "max_steps": 60,
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 16,
            "save_steps": 20,
        },
    },
    "grpo": {
        "dataset": "tiny-math",
        "hyperparameters": {
            **ROLLOUT,
            "max_steps": 30,
            "save_steps": 10,
            "num_generations": 8,
            "beta": 0.04,
            "reward": "format",
        },
    },
    "gspo": {
        "dataset": "tiny-math",
        "hyperparameters": {
            **ROLLOUT,
            "max_steps": 32,
            "save_steps": 8,
            "num_generations": 8,
            "reward": "format",
        },
    },
    "ppo": {
        "dataset": "tiny-math",
        "hyperparameters": {**ROLLOUT, "max_steps": 30, "save_steps": 10, "reward": "format"},
    },
}
# (metric, direction, window): a mean over the first and the last `window` values.
EXPECTED = {
    "sft": ("loss", "falls", 5),
    "dpo": ("loss", "falls", 10),
    "grpo": ("reward", "rises", 5),
    "gspo": ("reward", "rises", 2),
    "ppo": ("reward/mean", "rises", 5),
}


def _values(client: Any, job_id: int, key: str) -> list[float]:
    points = client.get(f"/api/v1/jobs/{job_id}/metrics", params={"key": key, "limit": 100000})
    return [p["value"] for p in points.json()["points"] if p["value"] is not None]


def _check_direction(client: Any, algorithm: str, job_id: int) -> str:
    key, direction, window = EXPECTED[algorithm]
    values = _values(client, job_id, key)
    assert len(values) >= 2 * window, (algorithm, key, values)
    first, last = mean(values[:window]), mean(values[-window:])
    moved = last < first if direction == "falls" else last > first
    assert moved, f"{algorithm}: {key} {first:.4f} -> {last:.4f}, expected it to {direction[:-1]}"
    return f"{algorithm}: {key} {first:.3f} -> {last:.3f}"


def _reloads_and_generates(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]


def test_all_five_trl_algorithms_train_through_the_queue(platform) -> None:  # type: ignore[no-untyped-def]
    report = []
    with platform.client() as client:
        warm = client.post(
            "/api/v1/jobs",
            json={
                "name": "warm-up",
                "algorithm": "sft",
                "model": "tiny-qwen2",
                "dataset": "tiny-sft",
                "hyperparameters": {"max_steps": 60, "learning_rate": 5e-3, "save_steps": 1000},
            },
        ).json()
    finished = platform.wait_status(warm["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    assert finished["status"] == "succeeded", finished["error"]
    name = f"warm-{uuid.uuid4().hex[:8]}"
    with platform.client() as client:
        report.append(_check_direction(client, "sft", warm["id"]))
        registered = client.post("/api/v1/models", json={"name": name, "job_id": warm["id"]})
        assert registered.status_code == 201, registered.text
        assert registered.json()["source"] == "job"
        submitted = {}
        for algorithm, spec in JOBS.items():
            response = client.post(
                "/api/v1/jobs",
                json={"name": f"e2e {algorithm}", "algorithm": algorithm, "model": name, **spec},
            )
            assert response.status_code == 201, response.text
            submitted[algorithm] = response.json()
    for algorithm, job in submitted.items():
        done = platform.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=600)
        assert done["status"] == "succeeded", (algorithm, done["error"])
        assert done["inputs"]["dataset"]["task"] == {"dpo": "preference"}.get(algorithm, "rl")
        with platform.client() as client:
            report.append(_check_direction(client, algorithm, job["id"]))
            checkpoints = client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json()
            run_dir = Path(client.get(f"/api/v1/jobs/{job['id']}/plan").json()["run_dir"])
        assert any(c["final"] for c in checkpoints) and any(not c["final"] for c in checkpoints)
        _reloads_and_generates(run_dir / done["outputs"]["model"])
    print("\n".join(report))
