"""Datasets end to end on the session's platform: files in the formats users bring (alpaca,
ShareGPT, a multi-turn preference set) upload, train through the queue and evaluate; the DPO
trainer sees a multi-turn prompt as its turns."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

pytestmark = pytest.mark.slow

GENERATION = {"max_new_tokens": 8, "max_samples": 6, "batch_size": 6, "engine": "transformers"}


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _upload(client: Any, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    answer = client.post(
        "/api/v1/datasets", params={"name": name, "filename": f"{name}.jsonl"}, content=_jsonl(rows)
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def _wait_evaluation(client: Any, evaluation_id: int, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/evaluations/{evaluation_id}").json()
        if body["status"] != "pending":
            return body
        time.sleep(0.5)
    raise AssertionError(f"evaluation {evaluation_id} stayed pending: {body}")


def test_alpaca_sharegpt_and_multi_turn_preference_files_train_and_evaluate(platform) -> None:  # type: ignore[no-untyped-def]
    sums = [(a, b) for a in range(6) for b in range(5)]
    alpaca = [
        {
            "instruction": "Add the numbers.",
            "input": f"{a} + {b}",
            "output": f"{a} + {b} = {a + b}.",
        }
        for a, b in sums
    ]
    sharegpt = [
        {
            "system": "You add numbers.",
            "conversations": [
                {"from": "human", "value": f"What is {a} + {b}?"},
                {"from": "gpt", "value": f"{a} + {b} = {a + b}."},
            ],
            "split": "validation" if a == 0 else "train",
        }
        for a, b in sums
    ]
    preference = [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"What is {a} + {b}?"},
                {"role": "assistant", "content": f"{a + b}."},
                {"role": "user", "content": "And doubled?"},
            ],
            "chosen": f"{2 * (a + b)}.",
            "rejected": f"{2 * (a + b) + 1}.",
        }
        for a, b in sums[:16]
    ]
    with platform.client() as client:
        assert _upload(client, "e2e-alpaca", alpaca)["format"] == "alpaca"
        assert _upload(client, "e2e-sharegpt", sharegpt)["format"] == "sharegpt"
        assert _upload(client, "e2e-turns", preference)["format"] == "preference"
        jobs = {}
        for name, algorithm, dataset in (
            ("alpaca", "sft", "e2e-alpaca"),
            ("sharegpt", "sft", "e2e-sharegpt"),
            ("turns", "dpo", "e2e-turns"),
        ):
            answer = client.post(
                "/api/v1/jobs",
                json={
                    "name": f"datasets e2e {name}",
                    "algorithm": algorithm,
                    "model": "tiny-qwen2",
                    "dataset": dataset,
                    "hyperparameters": {
                        "max_steps": 3,
                        "per_device_train_batch_size": 4,
                        "save_steps": 3,
                    },
                    # the alpaca SFT holds a fifth of its rows out and validates on them
                    **({"validation": {"fraction": 0.2, "seed": 1}} if name == "alpaca" else {}),
                },
            )
            assert answer.status_code == 201, answer.text
            assert answer.json()["dataset_version"] == 1
            jobs[name] = answer.json()["id"]
        for job_id in jobs.values():
            finished = platform.wait_status(job_id, {"succeeded", "failed"}, timeout=300)
            assert finished["status"] == "succeeded", finished
        points = client.get(
            f"/api/v1/jobs/{jobs['alpaca']}/metrics", params={"key": "eval_loss"}
        ).json()["points"]
        assert [p["step"] for p in points] == [3], points  # validated on the held-out rows
        events = client.get(f"/api/v1/jobs/{jobs['alpaca']}/events").json()
        assert any(
            "24 rows of sft data" in e["reason"] and "6 held out" in e["reason"] for e in events
        )
        # each SFT model is evaluated on the other format's file (its last turn the reference);
        # the alpaca model only on the ShareGPT rows marked for validation
        evaluations = []
        for job, dataset in (("alpaca", "e2e-sharegpt"), ("sharegpt", "e2e-alpaca")):
            answer = client.post(
                "/api/v1/evaluations",
                json={
                    "name": f"datasets e2e {job}",
                    "job": jobs[job],
                    "dataset": dataset,
                    "scorer": "numeric",
                    "generation": {**GENERATION, "max_samples": None if job == "alpaca" else 6},
                    **(
                        {"validation": {"field": "split", "value": "validation"}}
                        if job == "alpaca"
                        else {}
                    ),
                },
            )
            assert answer.status_code == 201, answer.text
            evaluations.append(answer.json()["id"])
        for evaluation_id, rows in zip(evaluations, (5, 6), strict=True):
            result = _wait_evaluation(client, evaluation_id)
            assert result["status"] == "succeeded" and result["samples"] == rows, result
            assert result["dataset_version"] == 1
        samples = client.get(f"/api/v1/evaluations/{evaluations[1]}/samples").json()["items"]
        assert samples[0]["reference"] == "0 + 0 = 0."
        # statistics of the multi-turn set, computed by a worker on the preprocessing queue
        started = client.post(
            "/api/v1/datasets/e2e-turns/analyses", json={"model": "tiny-qwen2", "max_length": 64}
        )
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + 120
        while (analysis := started.json())["status"] in ("pending", "running"):
            assert time.monotonic() < deadline, analysis
            time.sleep(0.5)
            started = client.get(f"/api/v1/datasets/e2e-turns/analyses/{analysis['id']}")
        assert analysis["status"] == "succeeded", analysis
        bias = analysis["result"]["preference_bias"]
        assert bias["chosen_minus_rejected"]["n"] == 16
        assert sorted(analysis["result"]["lengths"]["roles"]) == ["assistant", "system", "user"]
        log = client.get(f"/api/v1/jobs/{jobs['turns']}/logs").json()
    assert "preference prompts: 4-4 turns, kept as chat turns" in log["text"]
