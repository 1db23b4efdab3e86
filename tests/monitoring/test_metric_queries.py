"""Metric queries for long runs: a step range, and a curve thinned to a drawable size."""

from __future__ import annotations

import itertools

from sqlmodel import Session

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


def test_the_whole_series_downloads_as_a_stream_of_csv_or_ndjson(
    api, engine, settings, runner, running_job, metrics_line
) -> None:  # type: ignore[no-untyped-def]
    import csv
    import io
    import json

    from training_platform.jobs import service

    job, run_dir = running_job()
    steps = 2 * service.EXPORT_BATCH // 3 + 7  # three keys: the series spans several batches
    data = b"".join(
        metrics_line(s, loss=1 / s, reward=float(s), bad=float("nan")) for s in range(1, steps + 1)
    )
    runner.write(run_dir, "metrics", data)
    # a live pass stores for at most ingest.ROUNDS_BUDGET_S; the next goes on (a loaded machine)
    for _ in range(30):
        reconcile_job(engine, settings, job.id, {runner.kind: runner})
        with Session(engine) as session:
            if service.get_job(session=session, job_id=job.id).metrics_offset >= len(data):
                break
    url = f"/api/v1/jobs/{job.id}/metrics/export"
    with api.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert f"job-{job.id}-metrics.csv" in response.headers["content-disposition"]
        chunks = list(response.iter_bytes())
    assert len(chunks) >= 3  # written batch by batch, not built whole
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert rows[0] == ["step", "attempt", "key", "value"]
    assert len(rows) == 1 + 3 * steps
    assert rows[1:4] == [
        ["1", "1", "bad", ""],
        ["1", "1", "loss", "1.0"],
        ["1", "1", "reward", "1.0"],
    ]
    with api.stream("GET", url, params={"format": "ndjson", "key": "reward"}) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["step"] for line in lines] == list(range(1, steps + 1))
    assert lines[-1] == {"step": steps, "attempt": 1, "key": "reward", "value": float(steps)}
    assert api.get(url, params={"format": "xml"}).status_code == 422
    assert api.get("/api/v1/jobs/999999/metrics/export").status_code == 404
