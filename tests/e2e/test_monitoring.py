"""Live monitoring through the whole platform: a real training streamed over WebSocket with
an exact resume, a NaN loss stopped by its alert rule, Prometheus /metrics, Flower's auth and
what it lists."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def watched(start_module_platform):  # type: ignore[no-untyped-def]
    return start_module_platform(redis_db=9, TP_TRAINING_SLOTS="1", TP_FLOWER="true")


def sft(name: str, steps: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "algorithm": "sft",
        "model": "tiny-qwen2",
        "dataset": "tiny-sft",
        "hyperparameters": {"max_steps": steps, "learning_rate": 1e-3, "logging_steps": 1},
        **extra,
    }


@contextlib.contextmanager
def live_socket(platform, job_id: int, last_step: int | None = None):  # type: ignore[no-untyped-def]
    """A job's live socket, the token sent in its first message (never in the URL)."""
    url = f"{platform.base_url.replace('http', 'ws', 1)}/api/v1/ws/jobs/{job_id}"
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "hello", "token": platform.token, "last_step": last_step}))
        yield ws


def loss_steps(message: dict[str, Any]) -> list[int]:
    """The steps of `loss` in a message: a snapshot's series or a metrics message's points."""
    if message["type"] == "snapshot":
        return [step for step, _ in message["series"].get("loss", [])]
    return [p["step"] for p in message.get("points", []) if p["key"] == "loss"]


def test_a_running_job_streams_its_metrics_and_a_reconnect_misses_and_repeats_nothing(
    watched,
) -> None:  # type: ignore[no-untyped-def]
    with watched.client() as client:
        job = client.post("/api/v1/jobs", json=sft("streamed", 150)).json()
    received: list[int] = []
    with live_socket(watched, job["id"]) as ws:
        snapshot = json.loads(ws.recv(timeout=30))
        assert snapshot["type"] == "snapshot" and snapshot["v"] == 1
        received += loss_steps(snapshot)
        live, status = 0, snapshot["job"]["status"]
        # A few live messages while the job trains (fewer if it ends first: its end is a
        # status message, and the rest comes with the resume below).
        while live < 5 and status not in ("succeeded", "failed", "cancelled"):
            message = json.loads(ws.recv(timeout=120))
            if message["type"] == "metrics" and loss_steps(message):
                received += loss_steps(message)
                live += 1
            elif message["type"] == "status":
                status = message["job"]["status"]
    assert live >= 1, "no live message arrived while the job trained"
    time.sleep(2)  # disconnected while the job goes on
    with live_socket(watched, job["id"], last_step=max(received)) as ws:
        resumed = json.loads(ws.recv(timeout=30))
        assert resumed["type"] == "snapshot"
        missed = loss_steps(resumed)
        assert not missed or min(missed) == max(received) + 1
        received += missed
        status = resumed["job"]["status"]
        while status not in ("succeeded", "failed", "cancelled"):
            message = json.loads(ws.recv(timeout=180))
            received += loss_steps(message)
            if message["type"] == "status":
                status = message["job"]["status"]
    assert status == "succeeded"
    assert received == list(range(1, 151))  # every step once, in order


NAN_REWARD = b'''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """A broken reward: every score is NaN, so PPO's advantages and loss are NaN."""
    return float("nan")
'''


def test_a_nan_loss_raises_an_alert_and_the_stop_rule_stops_the_training(watched) -> None:  # type: ignore[no-untyped-def]
    body = {
        "name": "diverging",
        "algorithm": "ppo",
        "model": "tiny-qwen2",
        "dataset": "tiny-math",
        "hyperparameters": {
            "max_steps": 200,
            "per_device_train_batch_size": 4,
            "max_completion_length": 8,
            "reward": "file:nan-reward",
        },
        "alerts": [{"rule": "nan", "key": "loss", "action": "stop"}],
    }
    with watched.client() as client:
        uploaded = client.post("/api/v1/rewards", params={"name": "nan-reward"}, content=NAN_REWARD)
        assert uploaded.status_code == 201, uploaded.text
        job = client.post("/api/v1/jobs", json=body).json()
    ended = watched.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
    assert ended["status"] == "cancelled", ended.get("error")
    with watched.client() as client:
        [alert] = client.get("/api/v1/alerts", params={"job_id": job["id"]}).json()
        events = client.get(f"/api/v1/jobs/{job['id']}/events").json()
    assert alert["rule"] == "nan" and alert["key"] == "loss" and alert["value"] is None
    assert alert["action_result"] == "stop requested"
    assert (ended["progress"]["step"] or 0) < 200  # stopped, not finished
    assert any(e["reason"].startswith("alert: loss is nan") for e in events)


def test_prometheus_metrics_show_a_running_and_a_queued_job(watched) -> None:  # type: ignore[no-untyped-def]
    with watched.client() as client:
        running = client.post("/api/v1/jobs", json=sft("runs", 100000)).json()
        watched.wait_status(running["id"], {"running"}, timeout=120)
        queued = client.post("/api/v1/jobs", json=sft("waits", 10, priority=7)).json()
        watched.wait_status(queued["id"], {"queued"}, timeout=60)
        assert httpx.get(f"{watched.base_url}/metrics").status_code == 401
        text = client.get("/metrics").text
        client.post(f"/api/v1/jobs/{queued['id']}/cancel")
        client.post(f"/api/v1/jobs/{running['id']}/cancel")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("tp_jobs", (("status", "running"),))] >= 1
    assert samples[("tp_jobs", (("status", "queued"),))] >= 1
    assert samples[("tp_jobs_waiting", (("priority", "7"), ("queue", "training")))] == 1
    assert any(name == "tp_device_leases_active" for name, _ in samples)
    assert any(name == "tp_http_request_duration_seconds_count" for name, _ in samples)
    assert ("tp_websocket_clients", ()) in samples


def test_flower_wants_its_credentials_and_lists_the_workers_with_them(watched) -> None:  # type: ignore[no-untyped-def]
    base = f"http://127.0.0.1:{watched.env['TP_FLOWER_PORT']}"
    password = (watched.home / "flower-password").read_text().strip()
    for path in ("/api/workers", "/metrics", "/healthcheck"):  # Flower leaves the last two open
        assert httpx.get(f"{base}{path}", timeout=10).status_code == 401, path
    for path in ("/metrics", "/healthcheck"):
        assert httpx.get(f"{base}{path}", auth=("admin", password), timeout=10).status_code == 200
    deadline = time.monotonic() + 60
    workers: dict[str, Any] = {}
    while time.monotonic() < deadline and len(workers) < 2:
        # refresh: Flower asks the workers now (its startup inspection ran before they were up)
        answer = httpx.get(
            f"{base}/api/workers",
            params={"refresh": "1"},
            auth=("admin", password),
            timeout=30,
        )
        assert answer.status_code == 200
        workers = answer.json()
        time.sleep(1)
    assert any(name.startswith("training@") for name in workers), workers
    assert any(name.startswith("general@") for name in workers)


def test_flower_lists_jobs_tasks_by_job_name_with_their_end_and_no_housekeeping(watched) -> None:  # type: ignore[no-untyped-def]
    """The jobs of the tests above (run alone: a job of its own), as Flower's API lists them."""
    base = f"http://127.0.0.1:{watched.env['TP_FLOWER_PORT']}"
    auth = ("admin", (watched.home / "flower-password").read_text().strip())
    with watched.client() as client:
        jobs = {
            j["name"]: j for j in client.get("/api/v1/jobs", params={"limit": 100}).json()["items"]
        }
        if "runs" not in jobs:
            jobs["runs"] = client.post("/api/v1/jobs", json=sft("runs", 100000)).json()
            watched.wait_status(jobs["runs"]["id"], {"running"}, timeout=120)
            client.post(f"/api/v1/jobs/{jobs['runs']['id']}/cancel")
    deadline = time.monotonic() + 90
    while True:  # the cancelled training's task ends once its process has stopped
        answer = httpx.get(f"{base}/api/tasks", auth=auth, timeout=30)
        assert answer.status_code == 200
        tasks = list(answer.json().values())
        runs = [t for t in tasks if t["name"] == "runs (run)" and t["state"] == "CANCELLED"]
        if runs:
            break
        assert time.monotonic() < deadline, [(t["name"], t["state"]) for t in tasks]
        time.sleep(1)
    assert runs[0]["args"] == f"job {jobs['runs']['id']} 'runs', attempt 1"
    by_name = {task["name"]: task for task in tasks}
    assert by_name["runs (cancel)"]["args"] == f"job {jobs['runs']['id']} 'runs'"
    if "streamed" in jobs:
        assert by_name["streamed (run)"]["state"] == "SUCCESS"
    # beat's ticks (a maintenance tick every 2 s here) and what they run are not listed
    assert not [name for name in by_name if name.startswith(("tp.system.", "tp.monitoring."))]
    assert not [name for name in by_name if name.startswith(("tp.supervisor.", "tp.scheduling."))]


def test_a_token_in_a_url_is_refused_and_reaches_no_log(watched) -> None:  # type: ignore[no-untyped-def]
    """Clients that put the token in a URL: the socket is closed, and the access log and the
    socket's log line keep the path only."""
    base = watched.base_url.replace("http", "ws", 1)
    with connect(f"{base}/api/v1/ws/overview?token={watched.token}", open_timeout=30) as ws:
        assert "never in the URL" in json.loads(ws.recv(timeout=10))["message"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    answer = httpx.get(f"{watched.base_url}/api/v1/jobs", params={"token": watched.token})
    assert answer.status_code == 401
    with watched.client() as client:  # a webhook's URL (its token) stays out of the logs too
        client.post("/api/v1/webhooks", json={"name": "logs", "url": "http://127.0.0.1:9/t0ken"})
        client.post("/api/v1/webhooks/logs/test")
    time.sleep(1)  # the access lines are written
    logs = sorted((watched.home / "logs").glob("*.log"))
    assert any("/api/v1/ws/overview?<redacted>" in log.read_text() for log in logs)
    for log in logs:
        text = log.read_text(errors="replace")
        assert watched.token not in text, log.name
        assert "t0ken" not in text, log.name


def test_a_socket_without_a_token_is_refused(watched) -> None:  # type: ignore[no-untyped-def]
    url = f"{watched.base_url.replace('http', 'ws', 1)}/api/v1/ws/jobs/1"
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "hello"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
