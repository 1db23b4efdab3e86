"""The same spine on PostgreSQL: `tp up` with TP_DATABASE_URL, a real job, a clean `tp down`."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_a_job_runs_end_to_end_on_postgresql(start_platform_on, pg_database) -> None:  # type: ignore[no-untyped-def]
    platform = start_platform_on(redis_db=14, TP_DATABASE_URL=pg_database)
    with platform.client() as client:
        job = client.post(
            "/api/v1/jobs",
            json={
                "name": "on postgres",
                "algorithm": "sft",
                "model": "tiny-qwen2",
                "dataset": "tiny-sft",
                "hyperparameters": {"max_steps": 10, "learning_rate": 1e-3},
            },
        ).json()
    finished = platform.wait_status(job["id"], {"succeeded", "failed", "cancelled"})
    assert finished["status"] == "succeeded", finished["error"]
    with platform.client() as client:
        metrics = client.get(f"/api/v1/jobs/{job['id']}/metrics", params={"key": "loss"}).json()
    assert [p["step"] for p in metrics["points"]] == list(range(1, 11))
    assert not (platform.home / "platform.db").exists()  # everything went to PostgreSQL
    platform.tp("down", "--jobs", check=True)
    deadline = time.monotonic() + 15
    while platform.processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert platform.processes() == []
