"""GPU scheduling on whole platforms with simulated inventories: leases, order, serial mode.

The GPUs here are simulated (TP_SIMULATED_GPUS): every lease says so, and the trainings run on
CPU with CUDA_VISIBLE_DEVICES set from their lease, which the launcher logs.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

pytestmark = pytest.mark.slow

TINY = {"algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}


def _submit(
    platform: Any, name: str, gpus: int, priority: int, steps: int = 1, **extra: Any
) -> dict[str, Any]:
    with platform.client() as client:
        response = client.post(
            "/api/v1/jobs",
            json={
                **TINY,
                "name": name,
                "priority": priority,
                "resources": {"gpus": gpus},
                "hyperparameters": {
                    "max_steps": steps,
                    "per_device_train_batch_size": 2,
                    "logging_steps": 1,
                },
                **extra,
            },
        )
    assert response.status_code == 201, response.text
    return response.json()


def _lease_history(platform: Any) -> list[Any]:
    from training_platform.core.db import make_engine
    from training_platform.scheduling.models import DeviceLease

    engine = make_engine(f"sqlite:///{platform.home / 'platform.db'}")
    try:
        with Session(engine) as session:
            return list(session.exec(select(DeviceLease).order_by(col(DeviceLease.id))).all())
    finally:
        engine.dispose()


def _wait_running(platform: Any, job_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with platform.client() as client:
        while time.monotonic() < deadline:
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] == "running" and (job["progress"]["step"] or 0) > 0:
                return job
            time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not start")


def _free_for(history: list[Any], job_id: int, moment: Any, total: int, pass_s: float = 2.0) -> int:
    """GPUs surely free for `job_id` when it was placed at `moment`.

    A scheduling pass decides from the free devices it read when it began, up to `pass_s`
    before it leases: a device released in that window may still have looked held, so it
    does not count as free here (on a loaded machine the test saw exactly that).
    """
    earliest = moment - timedelta(seconds=pass_s)
    held = sum(
        1
        for lease in history
        if lease.job_id != job_id
        and lease.acquired_at <= moment
        and (lease.released_at is None or lease.released_at > earliest)
    )
    return total - held


@pytest.fixture(scope="module")
def four_gpus(start_module_platform):  # type: ignore[no-untyped-def]
    return start_module_platform(redis_db=12, TP_SIMULATED_GPUS="4")


@pytest.fixture(autouse=True)
def _leave_no_job_running(four_gpus):  # type: ignore[no-untyped-def]
    """A test that fails midway leaves its blocker holding every device: cancel what is still
    active, so that the next test does not fail for it."""
    yield
    with four_gpus.client() as client:
        for job in client.get("/api/v1/jobs", params={"limit": 200}).json()["items"]:
            if job["status"] not in ("succeeded", "failed", "cancelled"):
                client.post(f"/api/v1/jobs/{job['id']}/cancel")


def _wait_queued(platform: Any, job_id: int, timeout: float = 60) -> dict[str, Any]:
    """The job once its dataset is prepared (a preprocessing task, not part of the submit)
    and, if it waits, once a scheduler pass has given it its place in the queue."""
    deadline = time.monotonic() + timeout
    with platform.client() as client:
        while True:
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            placed = job["status"] != "queued" or job["queue_position"] is not None
            if (job["status"] != "pending" and placed) or time.monotonic() > deadline:
                return dict(job)
            time.sleep(0.2)


def test_gpus_endpoint_labels_the_simulated_inventory(four_gpus) -> None:  # type: ignore[no-untyped-def]
    done = four_gpus.tp("gpus")
    assert done.returncode == 0 and "(simulated)" in done.stdout
    with four_gpus.client() as client:
        found = client.get("/api/v1/gpus").json()
    assert found["simulated"] is True and found["gpus"] == 4
    host = found["hosts"][0]
    assert host["gpu_source"] == "simulated"
    assert all(g["simulated"] and g["state"] == "free" for g in host["gpus"])
    # What fits them is the compute configurator's advice, for the catalog's models.
    advised = four_gpus.tp("compute", "advise", "--output", "json")
    assert advised.returncode == 0, advised.stderr
    kinds = json.loads(advised.stdout)
    assert [(k["count"], k["memory_mb"]) for k in kinds] == [
        (4, host["gpus"][0]["memory_total_mb"])
    ]
    tiny = next(m for m in kinds[0]["models"] if m["model"] == "tiny-qwen2")
    assert all(tiny[use]["fits"] for use in ("inference", "lora", "full", "full_sharded"))


def test_mixed_jobs_never_share_a_device_and_go_by_priority(four_gpus) -> None:  # type: ignore[no-untyped-def]
    blocker = _submit(four_gpus, "blocker", gpus=4, priority=9, steps=100_000)
    _wait_running(four_gpus, blocker["id"])
    # (GPUs, priority): single jobs that fit beside others, pairs, and whole-host jobs that must
    # wait for all four devices while lower jobs that fit may go first
    plan = [
        (1, 3),
        (2, 7),
        (4, 5),
        (1, 9),
        (2, 1),
        (4, 8),
    ]
    jobs = [
        _submit(four_gpus, f"g{gpus}-p{priority}-{i}", gpus, priority)
        for i, (gpus, priority) in enumerate(plan)
    ]
    waiting = _wait_queued(four_gpus, jobs[0]["id"])
    with four_gpus.client() as client:
        assert waiting["status"] == "queued" and waiting["queue_position"] >= 1
        assert waiting["wait_reason"].startswith("waiting for 1 GPU(s)")
        client.post(f"/api/v1/jobs/{blocker['id']}/cancel")
    finished = [
        four_gpus.wait_status(j["id"], {"succeeded", "failed", "cancelled"}, timeout=600)
        for j in jobs
    ]
    assert all(j["status"] == "succeeded" for j in finished), [j["error"] for j in finished]

    history = [lease for lease in _lease_history(four_gpus) if lease.kind == "gpu"]
    # No device ever held by two jobs at once.
    for device in range(4):
        held = sorted(
            (lease for lease in history if lease.device_index == device),
            key=lambda lease: lease.acquired_at,
        )
        for before, after in itertools.pairwise(held):
            assert before.released_at is not None and before.released_at <= after.acquired_at
    # Each job got exactly the devices it asked for, all simulated.
    by_job: dict[int, list[Any]] = {}
    for lease in history:
        by_job.setdefault(lease.job_id, []).append(lease)
    for job, (gpus, _) in zip(jobs, plan, strict=True):
        assert len(by_job[job["id"]]) == gpus and all(
            lease.simulated for lease in by_job[job["id"]]
        )
    # Higher priority first: a lower job only started ahead of a higher one that could not fit.
    start = {
        job_id: min(lease.acquired_at for lease in leases) for job_id, leases in by_job.items()
    }
    queued_at = {j["id"]: j["queued_at"] for j in finished}
    meta = {job["id"]: (gpus, priority) for job, (gpus, priority) in zip(jobs, plan, strict=True)}
    from datetime import datetime

    for low, (_, low_priority) in meta.items():
        for high, (high_gpus, high_priority) in meta.items():
            waiting = datetime.fromisoformat(queued_at[high]) <= start[low]
            if high_priority > low_priority and start[low] < start[high] and waiting:
                # The lower job may only have gone first because the higher one did not fit.
                assert high_gpus > _free_for(history, low, start[low], 4), (low, high)
    # The trainer saw exactly its leased devices.
    for job in jobs:
        with four_gpus.client() as client:
            log = client.get(f"/api/v1/jobs/{job['id']}/logs").json()["text"]
        seen = re.search(r"CUDA_VISIBLE_DEVICES=([0-9,]+)", log)
        assert seen, log[:500]
        leased = sorted(lease.device_index for lease in by_job[job["id"]])
        assert [int(d) for d in seen.group(1).split(",")] == leased


# Whole-host jobs (all four devices) can only run one at a time: the same platform serves as a
# host with a single device.
WHOLE = 4


def test_whole_host_jobs_run_strictly_one_after_another_by_priority(four_gpus) -> None:  # type: ignore[no-untyped-def]
    blocker = _submit(four_gpus, "blocker", gpus=WHOLE, priority=9, steps=100_000)
    _wait_running(four_gpus, blocker["id"])
    # a tie (8) starts in submission order
    jobs = [_submit(four_gpus, f"serial p{p}", WHOLE, p) for p in (2, 8, 5, 8)]
    # All four wait their turn: a job whose dataset is still being prepared is not a
    # candidate yet (under load, the second p8 was prepared before the first and went first).
    assert all(_wait_queued(four_gpus, j["id"])["status"] == "queued" for j in jobs)
    with four_gpus.client() as client:
        client.post(f"/api/v1/jobs/{blocker['id']}/cancel")
    finished = [
        four_gpus.wait_status(j["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
        for j in jobs
    ]
    assert all(j["status"] == "succeeded" for j in finished)
    ordered = sorted(finished, key=lambda j: j["started_at"])
    assert [(j["priority"], j["id"]) for j in ordered] == [
        (8, jobs[1]["id"]),
        (8, jobs[3]["id"]),
        (5, jobs[2]["id"]),
        (2, jobs[0]["id"]),
    ]
    for before, after in itertools.pairwise(ordered):
        assert before["finished_at"] <= after["started_at"]  # strictly one after another


def test_a_killed_training_frees_its_devices_within_a_supervisor_period(four_gpus) -> None:  # type: ignore[no-untyped-def]
    victim = _submit(four_gpus, "victim", gpus=WHOLE, priority=5, steps=100_000)
    running = _wait_running(four_gpus, victim["id"])
    assert running["devices"] == [f"{_node(four_gpus)}:gpu{i} (simulated)" for i in range(WHOLE)]
    follower = _submit(four_gpus, "follower", gpus=WHOLE, priority=5)
    cancelled = _submit(four_gpus, "cancelled while queued", gpus=WHOLE, priority=9)
    with four_gpus.client() as client:
        assert client.post(f"/api/v1/jobs/{cancelled['id']}/cancel").json()["status"] == "cancelled"
        run_dir = Path(client.get(f"/api/v1/jobs/{victim['id']}/plan").json()["run_dir"])
    from datetime import UTC, datetime

    killed_at = datetime.now(UTC)
    os.kill(int((run_dir / "child.pid").read_text()), signal.SIGKILL)
    failed = four_gpus.wait_status(victim["id"], {"failed"}, timeout=30)
    leases = [lease for lease in _lease_history(four_gpus) if lease.job_id == victim["id"]]
    assert len(leases) == WHOLE
    # Freed within one supervisor period, with a margin for a loaded machine.
    period = float(four_gpus.env["TP_SUPERVISOR_INTERVAL_S"])
    for lease in leases:
        assert (lease.released_at - killed_at).total_seconds() < period + 2
    assert failed["devices"] == []
    done = four_gpus.wait_status(follower["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    assert done["status"] == "succeeded"
    with four_gpus.client() as client:
        events = client.get(f"/api/v1/jobs/{cancelled['id']}/events").json()
    assert "starting" not in [e["to_status"] for e in events]
    assert not [lease for lease in _lease_history(four_gpus) if lease.job_id == cancelled["id"]]


def _node(platform: Any) -> str:
    with platform.client() as client:
        return str(client.get("/api/v1/gpus").json()["hosts"][0]["name"])


def test_a_job_within_its_projects_guarantee_preempts_one_above_another_and_it_resumes_exactly(
    four_gpus,
) -> None:  # type: ignore[no-untyped-def]
    """Issue 22, acceptance 3: 4 GPUs, projects guaranteed 2 each. Project a takes all four;
    b's job within its guarantee has a's newer job paused at a checkpoint and requeued; it
    resumes where it stopped once GPUs are free; the GPU-hours add up to the leases."""
    with four_gpus.client() as client:
        for name in ("ga", "gb"):
            made = client.post("/api/v1/projects", json={"name": name, "guaranteed_gpus": 2})
            assert made.status_code == 201, made.text
    first = _submit(four_gpus, "a within", gpus=2, priority=5, steps=100_000, project="ga")
    _wait_running(four_gpus, first["id"])
    above = _submit(four_gpus, "a above", gpus=2, priority=5, steps=150, project="ga")
    _wait_running(four_gpus, above["id"])
    b = _submit(four_gpus, "b within", gpus=2, priority=5, steps=3, project="gb")
    _wait_running(four_gpus, b["id"])  # on the GPUs of a's job above a's guarantee
    with four_gpus.client() as client:
        within = client.get(f"/api/v1/jobs/{first['id']}").json()
        client.post(f"/api/v1/jobs/{first['id']}/cancel")  # done holding its GPUs
    done_b = four_gpus.wait_status(b["id"], {"succeeded", "failed", "cancelled"}, timeout=180)
    assert done_b["status"] == "succeeded", done_b["error"]
    done = four_gpus.wait_status(above["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    with four_gpus.client() as client:
        events = client.get(f"/api/v1/jobs/{above['id']}/events").json()
        loss = client.get(
            f"/api/v1/jobs/{above['id']}/metrics", params={"key": "loss", "limit": 100_000}
        ).json()
    pausing = next(e for e in events if e["to_status"] == "pausing")
    assert pausing["actor"] == "scheduler"
    statuses = [e["to_status"] for e in events]
    assert statuses[-6:] == ["pausing", "paused", "resuming", "starting", "running", "succeeded"]
    assert done["attempt"] == 2 and [p["step"] for p in loss["points"]] == list(range(1, 151))
    assert within["status"] == "running" and within["attempt"] == 1  # never preempted
    assert (within["project"], within["preemptible"]) == ("ga", False)
    # Whether the resumed job is preemptible again depends on whether the cancelled one still
    # held its GPUs when it was placed (b may finish first): its project is what holds.
    assert done["project"] == "ga"
    four_gpus.wait_status(first["id"], {"cancelled"}, timeout=60)
    # GPU-hours: what the API reports per project is what the leases held.
    history = _lease_history(four_gpus)
    with four_gpus.client() as client:
        usage = client.get("/api/v1/projects/usage", params={"days": 1}).json()
    for project, jobs in (("ga", (first["id"], above["id"])), ("gb", (b["id"],))):
        held = sum(
            (lease.released_at - lease.acquired_at).total_seconds() / 3600
            for lease in history
            if lease.job_id in jobs and lease.kind == "gpu"
        )
        assert usage["by_project"][project] == pytest.approx(held, rel=1e-3), project
