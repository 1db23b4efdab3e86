"""Serving for real, on the session's platform: a serve job starts `transformers serve` for the
bundled model; the OpenAI SDK talks to it through the platform's API with a platform token;
an endpoint registered with another token as its encrypted API key is evaluated by the api
engine, and that key is found nowhere it must not be: not in the database, Redis, the run
directories, the logs, a process's command line or any answer."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

pytestmark = pytest.mark.slow


def _ready(client: Any, job_id: int, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    served: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = {s["job_id"]: s for s in client.get("/api/v1/serving").json()}
        served = found.get(job_id, {})
        if served.get("ready"):
            return served
        assert served.get("status") not in ("failed", "cancelled"), served
        time.sleep(0.5)
    raise AssertionError(f"serve job {job_id} never answered: {served}")


class _CommandLines:
    """Every process command line seen while it runs, sampled every 250 ms (a run that
    leaked the key lives seconds)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for process in psutil.process_iter(["cmdline"]):
                self.seen.add(" ".join(process.info["cmdline"] or []))
            time.sleep(0.25)  # a sweep of /proc under the suite costs ~50 ms of CPU

    def __enter__(self) -> _CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _files_holding(root: Path, secret: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and secret in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


def _redis_values(url: str) -> bytes:
    client = redis.Redis.from_url(url)
    parts = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        dumped = client.dump(key)
        if dumped:
            parts.append(dumped)
    return b"\n".join(parts)


def test_serve_chat_and_evaluate_an_endpoint_without_leaking_its_key(platform) -> None:  # type: ignore[no-untyped-def]
    from openai import AuthenticationError, OpenAI

    answers: list[str] = []
    with platform.client() as client:
        # A simulated GPU: the serve job runs on the CPU and leaves the CPU slot to the
        # evaluation below.
        started = client.post(
            "/api/v1/serving",
            json={"model": "tiny-qwen2", "engine": "transformers", "resources": {"gpus": 1}},
        )
        assert started.status_code == 201, started.text
        job_id = started.json()["id"]
        assert started.json()["dataset"] is None and started.json()["algorithm"] == "serve"
        served = _ready(client, job_id)
        assert served["url"] == f"/api/v1/serving/{job_id}/v1"
        assert served["engine"] == "transformers"

        # The OpenAI SDK, through the platform's API with the platform's token.
        sdk = OpenAI(base_url=platform.base_url + served["url"], api_key=platform.token)
        reply = sdk.chat.completions.create(
            model="tiny-qwen2", messages=[{"role": "user", "content": "2+3?"}], max_tokens=6
        )
        assert reply.model == "tiny-qwen2" and reply.usage and reply.usage.completion_tokens > 0
        assert isinstance(reply.choices[0].message.content, str)
        chunks = list(
            sdk.chat.completions.create(
                model="tiny-qwen2",
                messages=[{"role": "user", "content": "1+1?"}],
                max_tokens=4,
                stream=True,
            )
        )
        assert len(chunks) >= 2 and {c.model for c in chunks} == {"tiny-qwen2"}
        assert [m.id for m in sdk.models.list().data] == ["tiny-qwen2"]
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=platform.base_url + served["url"], api_key="wrong").models.list()
        # No server path in any answer.
        assert str(platform.home) not in reply.model_dump_json()
        # The same from the CLI.
        listed = platform.tp("serve", "list", check=True).stdout
        assert "serve-job" not in listed and str(job_id) in listed and "yes" in listed
        chat = platform.tp("serve", "chat", str(job_id), "2+3?", "--max-tokens", "4", check=True)
        assert chat.returncode == 0
        refused = platform.tp("endpoints", "add", "x", "--base-url", "ftp://h/v1", "--model", "m")
        assert refused.returncode == 2 and "base_url" in refused.stderr, refused.stderr

        # An endpoint whose key is a second platform token; the platform calls its own proxy.
        created = client.post("/api/v1/tokens", json={"name": "endpoint-key"})
        assert created.status_code == 201, created.text
        secret = created.json()["token"]
        endpoint = {
            "name": "served-tiny",
            "base_url": f"{platform.base_url}{served['url']}",
            "model": "tiny-qwen2",
            "api_key": secret,
            "concurrency": 4,
            "max_retries": 2,
            "rate_limit": 50,
        }
        for bad, field in (
            ({"base_url": "ftp://example.com/v1"}, "base_url"),
            ({"base_url": "http://u:p@example.com/v1"}, "base_url"),
            ({"name": "serve-job-1"}, "name"),
            ({"concurrency": 0}, "concurrency"),
        ):
            refused = client.post("/api/v1/endpoints", json={**endpoint, **bad})
            assert refused.status_code == 422, refused.text
            assert field in str(refused.json()["detail"][0]["loc"]), refused.text
            answers.append(refused.text)
        registered = client.post("/api/v1/endpoints", json=endpoint)
        assert registered.status_code == 201, registered.text
        assert registered.json()["has_api_key"] is True
        assert client.post("/api/v1/endpoints", json=endpoint).status_code == 409
        listed = client.get("/api/v1/endpoints")
        names = {e["name"]: e for e in listed.json()}
        assert names[f"serve-job-{job_id}"]["model"] == "tiny-qwen2"
        assert names[f"serve-job-{job_id}"]["base_url"] == served["url"]
        answers += [registered.text, listed.text]

        with _CommandLines() as lines:
            evaluation = client.post(
                "/api/v1/evaluations",
                json={
                    "name": "via api",
                    "endpoint": "served-tiny",
                    "dataset": "tiny-math-eval",
                    # Two sampled completions per prompt, each its own request.
                    "scorer": "pass@2:numeric",
                    "generation": {
                        "max_new_tokens": 6,
                        "max_samples": 6,
                        "n": 2,
                        "temperature": 0.8,
                    },
                },
            )
            assert evaluation.status_code == 201, evaluation.text
            evaluation_id = evaluation.json()["id"]
            deadline = time.monotonic() + 240
            result: dict[str, Any] = {}
            while time.monotonic() < deadline:
                result = client.get(f"/api/v1/evaluations/{evaluation_id}").json()
                if result["status"] != "pending":
                    break
                time.sleep(0.5)
        assert result["status"] == "succeeded", result
        assert result["engine_used"] == "api" and result["samples"] == 6
        assert result["endpoint"] == "served-tiny" and result["model_id"] is None
        assert result["model"] == "served-tiny"
        assert result["summary"]["pass@2:numeric"]["n"] == 6
        samples = client.get(f"/api/v1/evaluations/{evaluation_id}/samples").json()["items"]
        assert len(samples) == 6 and all(isinstance(s["output"], str) for s in samples)
        assert all(len(s["outputs"]) == 2 and s["outputs"][0] == s["output"] for s in samples)
        eval_job = result["job_id"]
        for path in (
            f"/api/v1/jobs/{eval_job}",
            f"/api/v1/jobs/{eval_job}/plan",
            f"/api/v1/jobs/{eval_job}/logs",
            f"/api/v1/jobs/{eval_job}/events",
            f"/api/v1/evaluations/{evaluation_id}",
            f"/api/v1/evaluations/{evaluation_id}/samples",
        ):
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text)
            answers.append(answer.text)

        # An LLM judge through the same endpoint, on a worker: a stored rubric, a reply kept
        # with each score.
        rubric = client.post(
            "/api/v1/evaluations/rubrics",
            json={"name": "plain", "text": "Q: {prompt}\nA: {output}\nScore 0-10:"},
        )
        assert rubric.status_code == 201, rubric.text
        no_output = client.post(
            "/api/v1/evaluations/rubrics", json={"name": "blind", "text": "Score {prompt}"}
        )
        assert no_output.status_code == 422 and "text" in no_output.text
        judge = "judge:served-tiny:plain"
        queued = client.post(f"/api/v1/evaluations/{evaluation_id}/rescore", json={"scorer": judge})
        assert queued.status_code == 200, queued.text
        assert [s["status"] for s in queued.json()["scorings"]] in (["queued"], ["running"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            judged = client.get(f"/api/v1/evaluations/{evaluation_id}").json()
            if judged["scorings"][0]["status"] not in ("queued", "running"):
                break
            time.sleep(0.5)
        assert judged["scorings"][0]["status"] == "succeeded", judged["scorings"]
        assert judged["summary"][judge]["n"] == 6
        samples = client.get(f"/api/v1/evaluations/{evaluation_id}/samples").json()["items"]
        assert all(0.0 <= s["scores"][judge] <= 1.0 and judge in s["details"] for s in samples)
        answers += [queued.text, json.dumps(judged), json.dumps(samples)]

        # The key: nowhere.
        assert not [a for a in answers if secret in a]
        assert not [line for line in lines.seen if secret in line]
        assert _files_holding(platform.home, secret.encode()) == []
        assert secret.encode() not in _redis_values(platform.env["TP_REDIS_URL"])
        # The run read its key file and removed it.
        plan = client.get(f"/api/v1/jobs/{eval_job}/plan").json()
        assert (
            "endpoint.key" not in plan["files"]
            and not (Path(plan["run_dir"]) / "endpoint.key").exists()
        )

        # A key from the environment, never on the command line.
        env = {**platform.env, "CLI_ENDPOINT_KEY": secret}
        added = subprocess.run(
            [sys.executable, "-m", "training_platform", "endpoints", "add", "cli-ep",
             "--base-url", endpoint["base_url"], "--model", "tiny-qwen2",
             "--api-key-env", "CLI_ENDPOINT_KEY"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert added.returncode == 0 and "stored encrypted" in added.stdout, added.stderr
        shown = platform.tp("endpoints", "list", check=True).stdout
        assert "cli-ep" in shown and secret not in shown
        platform.tp("endpoints", "rm", "cli-ep", check=True)

        # Stopping the job stops serving: its endpoint goes, the way in says why.
        platform.tp("serve", "stop", str(job_id), check=True)
        platform.wait_status(job_id, {"cancelled"}, timeout=60)
        gone = client.post(
            f"{served['url']}/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        assert gone.status_code == 409 and "cancelled" in gone.text, gone.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            endpoints = {e["name"] for e in client.get("/api/v1/endpoints").json()}
            if f"serve-job-{job_id}" not in endpoints:
                break
            time.sleep(0.5)
        assert endpoints == {"served-tiny"} or f"serve-job-{job_id}" not in endpoints
        assert client.delete("/api/v1/endpoints/served-tiny").status_code == 204
        # The platform is shared: leave no token behind for the tests that list them.
        assert client.post("/api/v1/tokens/endpoint-key/revoke").status_code == 200


@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python").is_file(),
    reason=".venv-vllm is missing: make vllm-env (make test builds it)",
)
def test_the_vllm_engine_evaluates_and_serves_on_the_cpu(platform) -> None:  # type: ignore[no-untyped-def]
    """vLLM's CPU build, in its own environment, for real: an evaluation and a serve job."""
    from openai import OpenAI

    from training_platform.assets.tiny import WIDE_HEADS, build_tiny_model

    # The tiny model with 32-dimensional heads (vLLM's CPU attention has no 16).
    build_tiny_model(platform.home / "models" / "tiny-qwen2-wide", overrides=WIDE_HEADS)
    with platform.client() as client:
        registered = client.post(
            "/api/v1/models",
            json={
                "name": "tiny-qwen2-wide",
                "path": str(platform.home / "models" / "tiny-qwen2-wide"),
            },
        )
        assert registered.status_code == 201, registered.text
        evaluation = client.post(
            "/api/v1/evaluations",
            json={
                "name": "vllm",
                "model": "tiny-qwen2-wide",
                "dataset": "tiny-math-eval",
                "generation": {
                    "engine": "vllm",
                    "max_samples": 16,
                    "max_new_tokens": 8,
                    "enforce_eager": True,
                },
            },
        )
        assert evaluation.status_code == 201, evaluation.text
        started = client.post(
            "/api/v1/serving",
            json={
                "model": "tiny-qwen2-wide",
                "engine": "vllm",
                "enforce_eager": True,
                "max_model_len": 256,
                "resources": {"gpus": 1},
            },
        )
        assert started.status_code == 201, started.text
        job_id = started.json()["id"]
        deadline = time.monotonic() + 300
        result: dict[str, Any] = {}
        while time.monotonic() < deadline:
            result = client.get(f"/api/v1/evaluations/{evaluation.json()['id']}").json()
            if result["status"] != "pending":
                break
            time.sleep(0.5)
        assert result["status"] == "succeeded", result
        assert result["engine_used"] == "vllm" and result["samples"] == 16
        plan = client.get(f"/api/v1/jobs/{result['job_id']}/plan").json()
        assert plan["argv"][0].endswith(".venv-vllm/bin/python")

        served = _ready(client, job_id, timeout=300)
        assert served["engine"] == "vllm"
        sdk = OpenAI(base_url=platform.base_url + served["url"], api_key=platform.token)
        reply = sdk.chat.completions.create(
            model="tiny-qwen2-wide", messages=[{"role": "user", "content": "2+3?"}], max_tokens=4
        )
        assert reply.model == "tiny-qwen2-wide" and reply.usage and reply.usage.completion_tokens
        platform.tp("serve", "stop", str(job_id), check=True)
        platform.wait_status(job_id, {"cancelled"}, timeout=60)
