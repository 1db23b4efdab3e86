"""The whole platform for real: `tp up`, REST and CLI submissions, real Celery workers, real
TRL training of the tiny model, cancel, priorities, failure, restart and `tp down`.
"""

from __future__ import annotations

import json
import os
import pwd
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.slow

SFT: dict[str, Any] = {
    "name": "e2e sft",
    "algorithm": "sft",
    "model": "tiny-qwen2",
    "dataset": "tiny-sft",
    "hyperparameters": {"max_steps": 30, "learning_rate": 1e-3},
}


def _submit(platform, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        headers = {"Idempotency-Key": key} if key else {}
        response = client.post("/api/v1/jobs", json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


def _long(name: str, priority: int = 5) -> dict[str, Any]:
    return {
        **SFT,
        "name": name,
        "priority": priority,
        "hyperparameters": {"max_steps": 100_000, "per_device_train_batch_size": 2},
    }


def _run_dir(platform, job_id: int) -> Path:  # type: ignore[no-untyped-def]
    with platform.client() as client:
        return Path(client.get(f"/api/v1/jobs/{job_id}/plan").json()["run_dir"])


def _run_processes(run_dir: Path) -> list[int]:
    """Live processes of a run: its launcher (run dir in argv) and everything working in it."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if str(run_dir) in " ".join(process.info["cmdline"] or []) or (
                process.info["cwd"] or ""
            ).startswith(str(run_dir)):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def _wait_running_with_progress(platform, job_id: int, timeout: float = 120) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    with platform.client() as client:
        while time.monotonic() < deadline:
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] == "running" and (job["progress"]["step"] or 0) > 0:
                return job
            assert job["status"] in ("pending", "queued", "starting", "running"), job
            time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not start training")


def test_every_service_is_healthy(platform) -> None:  # type: ignore[no-untyped-def]
    done = platform.tp("status")
    assert done.returncode == 0, done.stdout + done.stderr
    for service in ("redis", "api", "worker-training", "worker-general", "beat", "flower"):
        assert service in done.stdout
    assert "stopped" not in done.stdout and "unhealthy" not in done.stdout


def test_sft_through_rest_succeeds_loss_falls_and_the_model_generates(platform) -> None:  # type: ignore[no-untyped-def]
    job = _submit(platform, SFT)
    finished = platform.wait_status(job["id"], {"succeeded", "failed", "cancelled"})
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["exit_code"] == 0 and finished["progress"] == {"step": 30, "total": 30}
    with platform.client() as client:
        metrics = client.get(f"/api/v1/jobs/{job['id']}/metrics", params={"key": "loss"}).json()
        events = client.get(f"/api/v1/jobs/{job['id']}/events").json()
        checkpoints = client.get(f"/api/v1/jobs/{job['id']}/checkpoints").json()
        log = client.get(f"/api/v1/jobs/{job['id']}/logs").json()
    losses = [p["value"] for p in metrics["points"]]
    assert [p["step"] for p in metrics["points"]] == list(range(1, 31))
    assert statistics.mean(losses[-5:]) < losses[0] - 0.5, losses
    assert [e["to_status"] for e in events] == [
        "pending",
        "queued",
        "starting",
        "running",
        "succeeded",
    ]
    assert any(c["final"] and c["path"] == "model" for c in checkpoints)
    assert log["complete"] and "trainer exited with code 0" in log["text"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = _run_dir(platform, job["id"]) / finished["outputs"]["model"]
    if os.geteuid() == 0:  # the trainer ran as the run user (core/confine.py), not root
        run_user = pwd.getpwnam(os.environ["TP_RUN_AS"])
        assert (model_dir / "config.json").stat().st_uid == run_user.pw_uid
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]


def test_sft_through_the_cli_with_watch(platform) -> None:  # type: ignore[no-untyped-def]
    done = platform.tp(
        "jobs",
        "submit",
        "--name",
        "cli sft",
        "--algorithm",
        "sft",
        "--model",
        "tiny-qwen2",
        "--dataset",
        "tiny-sft",
        "-p",
        "max_steps=10",
        "-p",
        "learning_rate=1e-3",
        "--watch",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    job_id = int(done.stdout.split()[1])
    shown = platform.tp("jobs", "show", str(job_id), "--output", "json", check=True)
    assert json.loads(shown.stdout)["job"]["status"] == "succeeded"


def test_a_training_that_exits_nonzero_fails_with_its_code_and_log_tail(platform) -> None:  # type: ignore[no-untyped-def]
    import shutil

    name = f"broken-{uuid.uuid4().hex[:8]}"
    target = platform.home / "models" / name
    shutil.copytree(platform.home / "models" / "builtin" / "tiny-qwen2", target)
    (target / "model.safetensors").write_bytes(b"these are not weights")
    with platform.client() as client:
        registered = client.post("/api/v1/models", json={"name": name, "path": str(target)})
        assert registered.status_code == 201, registered.text
    job = _submit(platform, {**SFT, "name": "doomed", "model": name})
    finished = platform.wait_status(job["id"], {"succeeded", "failed", "cancelled"})
    assert finished["status"] == "failed"
    assert finished["exit_code"] not in (0, None)
    assert finished["error"].startswith(
        f"training process exited with code {finished['exit_code']}"
    )
    tail = finished["error"].split("--- last lines of the log ---")[1]
    assert "Error" in tail and "trainer exited with code" in tail


def test_a_dataset_that_cannot_be_prepared_fails_the_job_before_it_queues(platform) -> None:  # type: ignore[no-untyped-def]
    from sqlmodel import Session

    from training_platform.catalog import service as catalog
    from training_platform.core.db import make_engine
    from training_platform.datasets import versions as dataset_versions

    broken = platform.home / "datasets" / "uploads" / "broken.jsonl"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n' * 3)
    engine = make_engine(f"sqlite:///{platform.home / 'platform.db'}")
    with Session(engine) as session:  # registered behind the upload check's back
        entry = catalog.upsert_dataset(
            session=session,
            home=platform.home,
            name="broken",
            path=broken,
            fmt="messages",
            description="rows without answers",
            source="upload",
        )
        dataset_versions.ensure_current(session=session, entry=entry, origin="upload")
        session.commit()
    engine.dispose()
    job = _submit(platform, {**SFT, "name": "unpreparable", "dataset": "broken"})
    finished = platform.wait_status(job["id"], {"succeeded", "failed", "cancelled"})
    assert finished["status"] == "failed" and finished["exit_code"] is None
    assert "row 1: 'messages' has no assistant turn" in finished["error"]
    with platform.client() as client:
        events = client.get(f"/api/v1/jobs/{job['id']}/events").json()
    assert [e["to_status"] for e in events] == ["pending", "failed"]


def test_cancel_a_running_job_stops_every_process_of_it(platform) -> None:  # type: ignore[no-untyped-def]
    job = _submit(platform, _long("to cancel"))
    _wait_running_with_progress(platform, job["id"])
    run_dir = _run_dir(platform, job["id"])
    assert _run_processes(run_dir), "the training should be running"
    cancelled = platform.tp("jobs", "cancel", str(job["id"]), check=True)
    assert "cancelling" in cancelled.stdout or "cancelled" in cancelled.stdout
    finished = platform.wait_status(job["id"], {"cancelled", "failed", "succeeded"}, timeout=60)
    assert finished["status"] == "cancelled"
    assert _run_processes(run_dir) == []
    with platform.client() as client:
        again = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409


def test_one_idempotency_key_makes_one_job_and_a_fresh_job_can_be_cancelled(platform) -> None:  # type: ignore[no-untyped-def]
    # The order in which queued jobs start is tested on one device (e2e/test_scheduling.py).
    body = {**SFT, "name": "once", "hyperparameters": {"max_steps": 1}}
    key = f"ten-{uuid.uuid4()}"
    first = _submit(platform, body, key)
    assert _submit(platform, body, key)["id"] == first["id"]  # the same key never makes two
    other = _submit(platform, body, f"ten-{uuid.uuid4()}")
    assert other["id"] != first["id"]
    with platform.client() as client:
        for job in (first, other):
            assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    for job in (first, other):
        assert platform.wait_status(job["id"], {"cancelled"}, timeout=60)["status"] == "cancelled"


def test_restart_keeps_a_training_running_and_readopts_it(platform) -> None:  # type: ignore[no-untyped-def]
    body = {
        **SFT,
        "name": "survives restarts",
        "hyperparameters": {
            "max_steps": 800,
            "per_device_train_batch_size": 2,
            "logging_steps": 1,
        },
    }
    job = _submit(platform, body)
    _wait_running_with_progress(platform, job["id"])
    run_dir = _run_dir(platform, job["id"])
    down = platform.tp("down", check=True)
    assert "keep running" in down.stdout
    assert _run_processes(run_dir), "the training must outlive the platform's services"
    time.sleep(2)
    platform.tp("up", "--timeout", "120", check=True)
    finished = platform.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    assert finished["status"] == "succeeded", finished["error"]
    with platform.client() as client:
        metrics = client.get(
            f"/api/v1/jobs/{job['id']}/metrics", params={"key": "loss", "limit": 100000}
        ).json()
        log = client.get(f"/api/v1/jobs/{job['id']}/logs", params={"limit": 4 * 1024 * 1024}).json()
    steps = [p["step"] for p in metrics["points"]]
    assert steps == list(range(1, 801))  # no gap and no duplicate across the restart
    step_lines = [line for line in log["text"].splitlines() if line.startswith("step ")]
    assert log["complete"] and len(step_lines) == len(set(step_lines)) == 800
    assert log["text"] == (run_dir / "output.log").read_text()


def _pipeline_with_a_running_stage(platform, name: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """A pipeline whose first stage trains on and whose second waits for it: (pipeline id,
    the first stage's job id) once that job reports steps."""
    train = {key: value for key, value in _long(name).items() if key not in ("name", "priority")}
    body = {
        "definition": {
            "name": name,
            "stages": {
                "long": {"job": train},
                "never": {"depends_on": ["long"], "job": {**train, "model": "tiny-qwen2"}},
            },
        }
    }
    with platform.client() as client:
        made = client.post("/api/v1/pipelines", json=body)
        assert made.status_code == 201, made.text
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stage = next(
                s
                for s in client.get(f"/api/v1/pipelines/{made.json()['id']}").json()["stages"]
                if s["name"] == "long"
            )
            if stage["job_id"] is not None:
                break
            time.sleep(0.5)
    _wait_running_with_progress(platform, stage["job_id"])
    return made.json()["id"], stage["job_id"]


def test_down_jobs_stops_everything_and_leaves_no_process(platform) -> None:  # type: ignore[no-untyped-def]
    """The training stopped is a pipeline's stage: `tp down --jobs` cancels it as its pipeline
    (defect: one stage failed and the next was skipped), which ends cancelled."""
    pipeline_id, job_id = _pipeline_with_a_running_stage(platform, "stopped by down --jobs")
    run_dir = _run_dir(platform, job_id)
    down = platform.tp("down", "--jobs", check=True)
    assert "worker-training" in down.stdout
    assert _run_processes(run_dir) == []
    deadline = time.monotonic() + 15
    while platform.processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert platform.processes() == []
    status = platform.tp("status")
    assert status.returncode == 1 and "stopped" in status.stdout
    # Bring it back for whatever runs after this test.
    platform.tp("up", "--timeout", "120", check=True)
    finished = platform.wait_status(job_id, {"cancelled", "failed", "succeeded"}, timeout=60)
    assert finished["status"] == "cancelled"
    with platform.client() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pipeline = client.get(f"/api/v1/pipelines/{pipeline_id}").json()
            if pipeline["status"] not in ("running", "cancelling"):
                break
            time.sleep(0.5)
    assert pipeline["status"] == "cancelled", pipeline
    assert [s["status"] for s in pipeline["stages"]] == ["cancelled", "cancelled"]
