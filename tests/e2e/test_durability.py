"""Nothing lost, nothing run twice: the whole platform under real faults.

A platform of its own, on a redis-server of its own (so that FLUSHALL loses only its messages),
trains the tiny model while its processes are killed and restarted: kill -9 of the training
worker, FLUSHALL, restart of the API, restart of the supervisor (beat and general worker), kill
-9 of a training process. Then every job must end in the right state, every attempt must have
been launched exactly once, and the stored metrics and logs must equal what the trainers wrote.
Pause and resume, hang detection and the retry policy are exercised for real here too.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.slow

SFT: dict[str, Any] = {"algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def durable(start_module_platform, private_redis: str):  # type: ignore[no-untyped-def]
    return start_module_platform(
        redis_db=0,
        redis_url=private_redis,
        TP_TRAINING_SLOTS="2",
        TP_DISPATCH_GRACE_S="2",
    )


# --- helpers -------------------------------------------------------------------------------


def _submit(platform, body: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _job(platform, job_id: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        return client.get(f"/api/v1/jobs/{job_id}").json()


def _wait(platform, job_id: int, check, what: str, timeout: float = 180) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            job = _job(platform, job_id)
        except Exception:  # the API may be restarting
            time.sleep(0.5)
            continue
        if check(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id}: {what} did not happen; it is {job}")


def _step(job: dict[str, Any]) -> int:
    return int(job["progress"]["step"] or 0)


def _attempt_dir(platform, job_id: int, attempt: int) -> Path:  # type: ignore[no-untyped-def]
    return platform.home / "runs" / str(job_id) / f"attempt-{attempt}"


def _trainer_pid(platform, job_id: int, attempt: int) -> int:  # type: ignore[no-untyped-def]
    return int((_attempt_dir(platform, job_id, attempt) / "child.pid").read_text())


def _launches(platform, job_id: int) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """How many times each attempt's launcher started a trainer, from the run logs."""
    counts = {}
    for directory in sorted((platform.home / "runs" / str(job_id)).glob("attempt-*")):
        text = (directory / "output.log").read_text(errors="replace")
        attempt = int(directory.name.split("-")[1])
        counts[attempt] = sum(
            1
            for line in text.splitlines()
            if line.startswith("[launcher ") and "] starting [" in line
        )
    return counts


def _assert_stored_equals_written(platform, job: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """Every metric value and log byte the trainers wrote is stored once, nothing else is."""
    job_id = job["id"]
    expected: dict[tuple[int, str], float | None] = {}
    for attempt in range(1, job["attempt"] + 1):
        lines = (_attempt_dir(platform, job_id, attempt) / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        steps = [r["step"] for r in records if r["type"] == "metrics"]
        if attempt > 1 and steps:
            # A resumed attempt reruns everything after its checkpoint.
            expected = {k: v for k, v in expected.items() if k[0] < steps[0]}
        for record in records:
            if record["type"] == "metrics":
                for key, value in record["values"].items():
                    expected[(record["step"], key)] = value
    with platform.client() as client:
        stored = client.get(f"/api/v1/jobs/{job_id}/metrics", params={"limit": 100_000}).json()[
            "points"
        ]
        assert len(stored) < 100_000
        got = {(p["step"], p["key"]): p["value"] for p in stored}
        assert len(got) == len(stored)  # one row per (step, key)
        assert got == expected
        for attempt in range(1, job["attempt"] + 1):
            log = client.get(
                f"/api/v1/jobs/{job_id}/logs",
                params={"attempt": attempt, "limit": 4 * 1024 * 1024},
            ).json()
            written = (_attempt_dir(platform, job_id, attempt) / "output.log").read_text(
                errors="replace"
            )
            assert log["complete"] and log["text"] == written, f"attempt {attempt} log differs"


def _events(platform, job_id: int) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        return client.get(f"/api/v1/jobs/{job_id}/events").json()


# --- the fault matrix ----------------------------------------------------------------------


def test_trainings_survive_every_platform_fault_and_each_attempt_runs_once(durable) -> None:  # type: ignore[no-untyped-def]
    platform = durable
    long_run = _submit(
        platform,
        {
            **SFT,
            "name": "survives everything",
            "hyperparameters": {
                "max_steps": 100_000,
                "per_device_train_batch_size": 2,
                "logging_steps": 1,
                "save_steps": 40,
            },
            "policy": {"max_attempts": 2, "retry_backoff_s": 0},
        },
    )
    job_id = long_run["id"]
    _wait(platform, job_id, lambda j: j["status"] == "running" and _step(j) > 0, "training")
    trainer = _trainer_pid(platform, job_id, 1)

    # 1. kill -9 the training worker: the training goes on without it.
    platform.kill_service("worker-training")
    assert psutil.pid_exists(trainer)
    # A job submitted meanwhile gets the second CPU slot; its start message waits in Redis...
    short = _submit(
        platform,
        {**SFT, "name": "sent while the worker was dead", "hyperparameters": {"max_steps": 40}},
    )
    _wait(platform, short["id"], lambda j: j["status"] == "queued" and j["devices"], "placement")
    time.sleep(1)
    # 2. ...and Redis loses every message.
    import redis

    redis.Redis.from_url(platform.env["TP_REDIS_URL"]).flushall()
    platform.tp("up", "--timeout", "120", check=True)  # a new training worker
    done = _wait(platform, short["id"], lambda j: j["status"] in FINAL, "the short job", 240)
    assert done["status"] == "succeeded", done["error"]
    before = _step(_job(platform, job_id))

    # 3. restart the API; 4. restart the supervisor (beat and the general worker).
    platform.kill_service("api")
    platform.tp("up", "--timeout", "120", check=True)
    platform.kill_service("beat")
    platform.kill_service("worker-general")
    platform.tp("up", "--timeout", "120", check=True)
    running = _wait(platform, job_id, lambda j: _step(j) > before + 20, "progress after restarts")
    assert running["status"] == "running" and running["attempt"] == 1
    assert _trainer_pid(platform, job_id, 1) == trainer and psutil.pid_exists(trainer)

    # 5. kill -9 the training process: attempt 2 starts from the last checkpoint by policy.
    with platform.client() as client:
        saved = [
            c for c in client.get(f"/api/v1/jobs/{job_id}/checkpoints").json() if not c["final"]
        ]
    assert saved, "no checkpoint yet"
    os.kill(trainer, signal.SIGKILL)
    second = _wait(
        platform,
        job_id,
        lambda j: j["attempt"] == 2 and j["status"] == "running" and _step(j) > 0,
        "the automatic retry",
    )
    resumed_at = second["inputs"]["resume_from"]["step"]
    assert resumed_at >= max(c["step"] for c in saved)
    _wait(platform, job_id, lambda j: _step(j) > resumed_at + 10, "progress of attempt 2")
    with platform.client() as client:
        client.post(f"/api/v1/jobs/{job_id}/cancel")
    ended = _wait(platform, job_id, lambda j: j["status"] in FINAL, "cancel", 60)
    assert ended["status"] == "cancelled" and ended["attempt"] == 2

    events = _events(platform, job_id)
    failed = next(e for e in events if e["to_status"] == "failed")
    assert failed["actor"] == "supervisor" and "SIGKILL" in failed["reason"]
    assert "the retry policy starts attempt 2" in failed["reason"]
    retry = events[events.index(failed) + 1]
    assert (retry["actor"], retry["to_status"]) == ("policy", "pending")
    assert [e["to_status"] for e in events].count("running") == 2  # no run was adopted twice

    assert _launches(platform, job_id) == {1: 1, 2: 1}  # each attempt launched exactly once
    assert _launches(platform, short["id"]) == {1: 1}
    _assert_stored_equals_written(platform, _job(platform, job_id))
    _assert_stored_equals_written(platform, _job(platform, short["id"]))


def test_a_killed_job_with_two_attempts_succeeds_on_the_second_from_its_checkpoint(durable) -> None:  # type: ignore[no-untyped-def]
    platform = durable
    job = _submit(
        platform,
        {
            **SFT,
            "name": "killed once",
            "hyperparameters": {"max_steps": 300, "save_steps": 25, "logging_steps": 1},
            "policy": {"max_attempts": 2, "retry_backoff_s": 1},
        },
    )
    with platform.client() as client:
        deadline = time.monotonic() + 120
        saved: list[dict[str, Any]] = []
        while not saved and time.monotonic() < deadline:
            saved = [
                c
                for c in client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json()
                if not c["final"]
            ]
            time.sleep(0.2)
    assert saved
    os.kill(_trainer_pid(platform, job["id"], 1), signal.SIGKILL)
    done = _wait(
        platform, job["id"], lambda j: j["status"] in FINAL and j["attempt"] == 2, "retry", 240
    )
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == {"step": 300, "total": 300}
    resumed_at = done["inputs"]["resume_from"]["step"]
    assert resumed_at >= saved[-1]["step"] and resumed_at % 25 == 0
    with platform.client() as client:
        log = client.get(
            f"/api/v1/jobs/{job['id']}/logs", params={"attempt": 2, "limit": 4 * 1024 * 1024}
        ).json()
    steps = [line.split()[1] for line in log["text"].splitlines() if line.startswith("step ")]
    assert steps[0] == f"{resumed_at + 1}/300" and steps[-1] == "300/300"
    assert _launches(platform, job["id"]) == {1: 1, 2: 1}
    _assert_stored_equals_written(platform, done)


# --- pause and resume ----------------------------------------------------------------------


def test_pause_checkpoints_and_resume_continues_at_the_paused_step(durable) -> None:  # type: ignore[no-untyped-def]
    platform = durable
    job = _submit(
        platform,
        {
            **SFT,
            "name": "paused and resumed",
            "hyperparameters": {"max_steps": 400, "save_steps": 10_000, "logging_steps": 1},
        },
    )
    _wait(platform, job["id"], lambda j: j["status"] == "running" and _step(j) > 20, "progress")
    paused = platform.tp("jobs", "pause", str(job["id"]), check=True)
    assert "pausing" in paused.stdout or "paused" in paused.stdout
    stopped = _wait(platform, job["id"], lambda j: j["status"] in {"paused", *FINAL}, "pause", 120)
    assert stopped["status"] == "paused" and stopped["devices"] == []
    assert not psutil.pid_exists(_trainer_pid(platform, job["id"], 1))
    with platform.client() as client:
        saved = client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json()
    assert len(saved) == 1 and not saved[0]["final"]
    paused_step = saved[0]["step"]
    assert paused_step == _step(stopped) and 20 < paused_step < 400

    resumed = platform.tp("jobs", "resume", str(job["id"]), check=True)
    assert f"from step {paused_step}" in resumed.stdout
    done = _wait(platform, job["id"], lambda j: j["status"] in FINAL, "the resumed run", 240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2 and done["progress"] == {"step": 400, "total": 400}
    with platform.client() as client:
        log = client.get(
            f"/api/v1/jobs/{job['id']}/logs", params={"attempt": 2, "limit": 4 * 1024 * 1024}
        ).json()
        loss = client.get(
            f"/api/v1/jobs/{job['id']}/metrics", params={"key": "loss", "limit": 100_000}
        ).json()
    steps = [line.split()[1] for line in log["text"].splitlines() if line.startswith("step ")]
    assert steps[0] == f"{paused_step + 1}/400" and steps[-1] == "400/400"
    assert [p["step"] for p in loss["points"]] == list(range(1, 401))
    statuses = [e["to_status"] for e in _events(platform, job["id"])]
    assert statuses[-6:] == ["pausing", "paused", "resuming", "starting", "running", "succeeded"]


def test_suspend_freezes_the_process_group_and_resume_continues_it(durable) -> None:  # type: ignore[no-untyped-def]
    platform = durable
    job = _submit(
        platform,
        {**SFT, "name": "suspended", "hyperparameters": {"max_steps": 100_000, "logging_steps": 1}},
    )
    _wait(platform, job["id"], lambda j: j["status"] == "running" and _step(j) > 0, "progress")
    trainer = psutil.Process(_trainer_pid(platform, job["id"], 1))
    with platform.client() as client:
        response = client.post(f"/api/v1/jobs/{job['id']}/pause", json={"mode": "suspend"})
    assert response.status_code == 200, response.text
    held = _wait(platform, job["id"], lambda j: j["status"] == "paused", "suspension", 60)
    assert held["pause_mode"] == "suspend" and held["devices"]  # it keeps its slot
    assert trainer.status() == psutil.STATUS_STOPPED
    # The last step the trainer wrote before SIGSTOP; ingestion may still be catching up to it.
    written = _attempt_dir(platform, job["id"], 1) / "metrics.jsonl"
    frozen = max(
        json.loads(line).get("step", 0) for line in written.read_text().splitlines() if line
    )
    _wait(platform, job["id"], lambda j: _step(j) == frozen, "ingestion of the last step", 30)
    time.sleep(2)
    assert _step(_job(platform, job["id"])) == frozen
    platform.tp("jobs", "resume", str(job["id"]), check=True)
    _wait(
        platform, job["id"], lambda j: j["status"] == "running" and _step(j) > frozen, "continuing"
    )
    assert trainer.status() != psutil.STATUS_STOPPED and _job(platform, job["id"])["attempt"] == 1
    with platform.client() as client:
        client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert (
        _wait(platform, job["id"], lambda j: j["status"] in FINAL, "cancel", 60)["status"]
        == "cancelled"
    )


# --- hangs and time limits -----------------------------------------------------------------

HANGING_REWARD = b'''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """Never returns: the training hangs at its first reward."""
    while True:
        pass
'''


def test_a_hanging_training_is_flagged_stalled_with_its_stack_and_failed_by_policy(durable) -> None:  # type: ignore[no-untyped-def]
    platform = durable
    with platform.client() as client:
        uploaded = client.post("/api/v1/rewards", params={"name": "hangs"}, content=HANGING_REWARD)
    assert uploaded.status_code == 201, uploaded.text
    job = _submit(
        platform,
        {
            **SFT,
            "name": "hangs forever",
            "algorithm": "grpo",
            "dataset": "tiny-math",
            "hyperparameters": {
                "max_steps": 5,
                "per_device_train_batch_size": 4,
                "num_generations": 4,
                "max_completion_length": 8,
                "reward": "file:hangs",
            },
            # Longer than the trainer's silent start (its imports take ~8 s idle, 3x that on
            # a loaded machine), so that the stall found is the hang in the reward.
            "policy": {"stall_timeout_s": 40, "on_stall": "fail"},
        },
    )
    done = _wait(platform, job["id"], lambda j: j["status"] in FINAL, "the stall policy", 180)
    assert (done["status"], done["end_cause"]) == ("failed", "stalled")
    events = _events(platform, job["id"])
    stalled = next(e for e in events if e["to_status"] == "stalled")
    # Flagged by whichever watcher saw it first: the worker that started it, or the supervisor.
    assert stalled["actor"] == "supervisor" or stalled["actor"].startswith("worker:")
    assert "no log or metrics output" in stalled["reason"]
    assert "compute_score" in stalled["detail"]  # py-spy shows where it hangs
    stopping = next(e for e in events if e["to_status"] == "stopping")
    assert stopping["actor"] == "policy" and "on_stall is fail" in stopping["reason"]
    assert done["retry_at"] is None
    assert not psutil.pid_exists(_trainer_pid(platform, job["id"], 1))


def test_a_time_limit_checkpoints_stops_and_fails_with_that_cause(durable) -> None:  # type: ignore[no-untyped-def]
    platform = durable
    job = _submit(
        platform,
        {
            **SFT,
            "name": "too slow",
            "hyperparameters": {"max_steps": 100_000, "save_steps": 100_000, "logging_steps": 1},
            "policy": {"max_runtime_s": 8},
        },
    )
    done = _wait(platform, job["id"], lambda j: j["status"] in FINAL, "the time limit", 180)
    assert (done["status"], done["end_cause"]) == ("failed", "time_limit")
    assert "time limit reached" in done["error"]
    with platform.client() as client:
        saved = client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json()
    assert [c["step"] for c in saved] == [_step(done)]  # checkpointed where it stopped
    retried = platform.tp("jobs", "retry", str(job["id"]), "--from-checkpoint", check=True)
    assert f"resuming from step {_step(done)}" in retried.stdout
    with platform.client() as client:
        client.post(f"/api/v1/jobs/{job['id']}/cancel")
    _wait(platform, job["id"], lambda j: j["status"] in FINAL, "cancel", 120)
