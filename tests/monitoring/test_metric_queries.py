"""Metric queries for long runs: a step range, and a curve thinned to a drawable size."""

from __future__ import annotations

import itertools

from training_platform.jobs.supervisor import reconcile_job


def test_a_long_run_is_thinned_evenly_keeping_its_first_and_last_step(
    api, engine, settings, runner, running_job, metrics_line
) -> None:  # type: ignore[no-untyped-def]
    job, run_dir = running_job()
    runner.write(
        run_dir,
        "metrics",
        b"".join(metrics_line(s, loss=1 / s, reward=float(s)) for s in range(1, 2001)),
    )
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    url = f"/api/v1/jobs/{job.id}/metrics"
    thin = api.get(url, params={"key": "loss", "max_steps": 100, "limit": 100000}).json()
    steps = [p["step"] for p in thin["points"]]
    assert steps[0] == 1 and steps[-1] == 2000 and 95 <= len(steps) <= 101
    assert len({b - a for a, b in itertools.pairwise(steps[:-1])}) == 1  # evenly spaced
    window = api.get(url, params={"since_step": 99, "until_step": 110, "key": "reward"}).json()
    assert [p["step"] for p in window["points"]] == list(range(100, 111))
    whole = api.get(url, params={"key": "loss", "limit": 100000}).json()
    assert len(whole["points"]) == 2000


def test_the_queue_view_counts_waiting_jobs_and_broker_messages_by_priority(api) -> None:  # type: ignore[no-untyped-def]
    body = {"name": "waits", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
    for priority in (2, 7, 7):
        assert api.post("/api/v1/jobs", json={**body, "priority": priority}).status_code == 201
    view = api.get("/api/v1/queues").json()
    assert {(w["priority"], w["status"], w["jobs"]) for w in view["waiting"]} == {
        (7, "pending", 2),
        (2, "pending", 1),
    }
    # No worker runs here: the prepare messages wait in Redis, in their priority buckets.
    assert view["broker"]["preprocessing"]["7"] == 2 and view["broker"]["preprocessing"]["2"] == 1
