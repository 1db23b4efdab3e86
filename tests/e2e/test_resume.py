"""A training killed mid-run and resumed goes on from its checkpoint: the step never restarts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_killed_job_resumes_from_its_checkpoint(platform) -> None:  # type: ignore[no-untyped-def]
    body = {
        "name": "killed and resumed",
        "algorithm": "sft",
        "model": "tiny-qwen2",
        "dataset": "tiny-sft",
        "hyperparameters": {
            "max_steps": 300,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "save_steps": 25,
        },
    }
    with platform.client() as client:
        job = client.post("/api/v1/jobs", json=body).json()
        deadline = time.monotonic() + 120
        checkpoints: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline and not checkpoints:
            checkpoints = [
                c
                for c in client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json()
                if not c["final"]
            ]
            time.sleep(0.3)
        assert checkpoints, "no checkpoint was recorded"
        run_dir = Path(client.get(f"/api/v1/jobs/{job['id']}/plan").json()["run_dir"])
    os.kill(int((run_dir / "child.pid").read_text()), signal.SIGKILL)  # the trainer dies
    failed = platform.wait_status(job["id"], {"failed", "succeeded", "cancelled"}, timeout=60)
    assert failed["status"] == "failed" and "SIGKILL" in failed["error"]

    with platform.client() as client:
        saved = [
            c for c in client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json() if not c["final"]
        ]
        newest = max(c["step"] for c in saved)
        assert all(c["size_bytes"] and c["metrics"].get("loss") is not None for c in saved)
        resumed = client.post(f"/api/v1/jobs/{job['id']}/retry", params={"from_checkpoint": True})
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["inputs"]["resume_from"]["step"] == newest
    finished = platform.wait_status(job["id"], {"failed", "succeeded", "cancelled"}, timeout=300)
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["attempt"] == 2 and finished["progress"] == {"step": 300, "total": 300}
    with platform.client() as client:
        log = client.get(
            f"/api/v1/jobs/{job['id']}/logs", params={"attempt": 2, "limit": 4 * 1024 * 1024}
        ).json()
        metrics = client.get(
            f"/api/v1/jobs/{job['id']}/metrics", params={"key": "loss", "limit": 100000}
        ).json()
    steps = [line.split()[1] for line in log["text"].splitlines() if line.startswith("step ")]
    assert steps[0] == f"{newest + 1}/300" and steps[-1] == "300/300"  # the counter went on
    assert [p["step"] for p in metrics["points"]] == list(range(1, 301))
