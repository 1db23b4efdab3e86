"""Jobs on a remote host over SSH, through the whole platform (`tp up`) and a real sshd.

One platform and one host for the module: a tiny SFT run to SUCCEEDED with its metrics and
checkpoints, a cancel that leaves nothing on the server, a crash of the API, general worker and
beat mid-run that neither loses nor repeats the run, and no secret in clear text anywhere.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

pytestmark = pytest.mark.slow
HOST = "gpu-ssh"
KEY_HOST = "gpu-ssh-key"


def sft(name: str, steps: int, **hyper: Any) -> dict[str, Any]:
    return {
        "name": name,
        "algorithm": "sft",
        "model": "tiny-qwen2",
        "dataset": "tiny-sft",
        "hyperparameters": {"max_steps": steps, "learning_rate": 1e-3, **hyper},
        "resources": {"host": HOST},
    }


@pytest.fixture(scope="module")
def remote(sshd, start_module_platform, tmp_path_factory):  # type: ignore[no-untyped-def]
    platform = start_module_platform(redis_db=13)
    responses: list[str] = []
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training_platform",
            "hosts",
            "add",
            HOST,
            "--address",
            sshd.host,
            "--port",
            str(sshd.port),
            "--user",
            sshd.user,
            "--password-stdin",
            "--fingerprint",
            sshd.host_key_fingerprint,
            "--python",
            sys.executable,
            "--work-root",
            f"{sshd.home}/tp-e2e",
            "--cpu-slots",
            "1",
        ],
        input=sshd.password + "\n",
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    responses.append(done.stdout + done.stderr)
    assert f"registered host {HOST}" in done.stdout and "ready" in done.stdout
    key_file = tmp_path_factory.mktemp("key") / "id"
    key_file.write_text(sshd.private_key_text)
    keyed = platform.tp(
        "hosts",
        "add",
        KEY_HOST,
        "--address",
        sshd.host,
        "--port",
        str(sshd.port),
        "--user",
        sshd.user,
        "--key-file",
        str(key_file),
        "--fingerprint",
        sshd.host_key_fingerprint,
        "--python",
        sys.executable,
        "--work-root",
        f"{sshd.home}/tp-e2e-key",
        "--cpu-slots",
        "0",
    )
    assert keyed.returncode == 0, keyed.stdout + keyed.stderr
    key_file.unlink()
    platform.responses = responses  # type: ignore[attr-defined]
    return platform


def collect(platform, response) -> Any:  # type: ignore[no-untyped-def]
    platform.responses.append(response.text)
    return response.json()


def test_a_tiny_sft_job_runs_over_ssh_to_succeeded_with_metrics_and_checkpoints(
    remote, sshd
) -> None:  # type: ignore[no-untyped-def]
    with remote.client() as client:
        job = collect(remote, client.post("/api/v1/jobs", json=sft("over ssh", 30, save_steps=10)))
    finished = remote.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
    assert finished["status"] == "succeeded", finished.get("error")
    assert finished["runner"] == "ssh" and finished["node"] == HOST
    run_dir = sshd.home / "tp-e2e" / "runs" / str(job["id"]) / "attempt-1"
    assert (run_dir / "exit.json").is_file() and (run_dir / "output.log").is_file()
    assert run_dir.stat().st_uid == sshd.uid  # written by the remote user, not by the platform
    with remote.client() as client:
        plan = collect(remote, client.get(f"/api/v1/jobs/{job['id']}/plan"))
        metrics = collect(
            remote, client.get(f"/api/v1/jobs/{job['id']}/metrics", params={"key": "loss"})
        )
        checkpoints = collect(remote, client.get(f"/api/v1/jobs/{job['id']}/checkpoints"))
        logs = collect(remote, client.get(f"/api/v1/jobs/{job['id']}/logs"))
    assert plan["run_dir"] == str(run_dir) and plan["runner"] == "ssh"
    # The inputs were uploaded into the host's cache and the plan names them there.
    cached = str(sshd.home / "tp-e2e" / "cache")
    assert any(cached in arg for arg in plan["argv"] + list(plan["files"].values()))
    assert [p["step"] for p in metrics["points"]][-1] == 30
    assert {c["step"] for c in checkpoints if not c["final"]} >= {10, 20}
    assert "trainer exited with code 0" in logs["text"]
    newest = max((c for c in checkpoints if not c["final"]), key=lambda c: c["step"])
    assert (run_dir / newest["path"]).is_dir() and newest["size_bytes"] > 0


def test_cancel_over_ssh_leaves_no_process_of_the_job_on_the_server(remote, sshd) -> None:  # type: ignore[no-untyped-def]
    with remote.client() as client:
        job = collect(remote, client.post("/api/v1/jobs", json=sft("cancelled", 100000)))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            shown = client.get(f"/api/v1/jobs/{job['id']}").json()
            if shown["status"] == "running" and (shown["progress"] or {}).get("step"):
                break
            time.sleep(0.5)
        run_dir = collect(remote, client.get(f"/api/v1/jobs/{job['id']}/plan"))["run_dir"]
        assert _processes_of(sshd, run_dir), "the training should be running on the server"
        assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    ended = remote.wait_status(job["id"], {"cancelled", "failed", "succeeded"}, timeout=90)
    assert ended["status"] == "cancelled"
    # The job's processes (those in its run directory), not the platform's short probes of
    # the host, which run as the same user.
    deadline = time.monotonic() + 30
    left = _processes_of(sshd, run_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _processes_of(sshd, run_dir)
    assert left == []


def _processes_of(sshd, run_dir: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The server user's live processes that run in (or name) a job's run directory."""
    import psutil

    found = []
    for pid in sshd.user_processes():
        try:
            process = psutil.Process(pid)
            command = " ".join(process.cmdline())
            where = process.cwd()
        except psutil.Error:
            continue  # gone meanwhile
        if where.startswith(run_dir) or run_dir in command:
            found.append(f"{pid} {command[:200]}")
    return found


def test_a_crash_of_the_api_and_workers_mid_run_re_adopts_the_remote_run(remote, sshd) -> None:  # type: ignore[no-untyped-def]
    with remote.client() as client:
        job = collect(remote, client.post("/api/v1/jobs", json=sft("re-adopted", 400)))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (client.get(f"/api/v1/jobs/{job['id']}").json()["progress"] or {}).get("step"):
                break
            time.sleep(0.3)
    for service in ("api", "worker-general", "beat", "worker-training"):
        remote.kill_service(service)
    time.sleep(3)  # the run goes on alone on the server
    remote.tp("up", "--timeout", "120", check=True)
    finished = remote.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    assert finished["status"] == "succeeded", finished.get("error")
    assert finished["attempt"] == 1
    with remote.client() as client:
        logs = collect(
            remote, client.get(f"/api/v1/jobs/{job['id']}/logs", params={"limit": 1 << 22})
        )
        metrics = collect(
            remote,
            client.get(
                f"/api/v1/jobs/{job['id']}/metrics", params={"key": "loss", "limit": 100000}
            ),
        )
    assert logs["text"].count("[launcher") and logs["text"].count("starting [") == 1
    remote_log = sshd.home / "tp-e2e" / "runs" / str(job["id"]) / "attempt-1" / "output.log"
    assert logs["text"] == remote_log.read_text()  # every byte once, none twice
    assert [p["step"] for p in metrics["points"]] == list(range(1, 401))


def test_bootstrap_copies_the_source_and_reports_the_environment(remote, sshd) -> None:  # type: ignore[no-untyped-def]
    done = remote.tp("hosts", "bootstrap", HOST, "--check", "--timeout", "120")
    remote.responses.append(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"platform": "0.1.0"' in done.stdout and '"gpus": 0' in done.stdout
    assert f"{HOST} is ready" in done.stdout
    sources = list((sshd.home / "tp-e2e" / "src").iterdir())
    assert len(sources) == 1 and (sources[0] / "scripts" / "setup_remote_env.sh").is_file()
    assert (sources[0] / "environments" / "gpu-verl.txt").is_file()
    bad = remote.tp("hosts", "bootstrap", HOST, "--set", "everything")
    assert bad.returncode == 2 and "environment_set" in bad.stderr


def test_a_job_through_the_ray_runner_on_a_local_ray_head_succeeds(remote) -> None:  # type: ignore[no-untyped-def]
    from training_platform.runners.ray_head import head_token

    up = remote.tp("up", "--ray", "--timeout", "120")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "host ray-local" in up.stdout
    remote.ray_token = head_token(Path(remote.home) / "ray")
    body = {**sft("through ray", 20), "resources": {"host": "ray-local"}}
    with remote.client() as client:
        job = collect(remote, client.post("/api/v1/jobs", json=body))
    finished = remote.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
    assert finished["status"] == "succeeded", finished.get("error")
    assert finished["runner"] == "ray" and finished["node"] == "ray-local"
    from ray.job_submission import JobSubmissionClient

    address = next(line for line in up.stdout.splitlines() if "host ray-local" in line).split()[1]
    ray_jobs = JobSubmissionClient(
        address, headers={"Authorization": f"Bearer {remote.ray_token}"}
    ).list_jobs()
    assert [(j.submission_id[:3], str(j.status)) for j in ray_jobs] == [("tp-", "SUCCEEDED")]
    with remote.client() as client:
        metrics = collect(
            remote, client.get(f"/api/v1/jobs/{job['id']}/metrics", params={"key": "loss"})
        )
        hosts = collect(remote, client.get("/api/v1/hosts"))
    assert [p["step"] for p in metrics["points"]][-1] == 20
    assert {h["name"]: h["runner"] for h in hosts["hosts"]}["ray-local"] == "ray"


def test_no_secret_is_stored_logged_or_answered_in_clear_text(remote, sshd) -> None:  # type: ignore[no-untyped-def]
    with remote.client() as client:
        for path in ("/api/v1/hosts", f"/api/v1/hosts/{HOST}", f"/api/v1/hosts/{KEY_HOST}"):
            collect(remote, client.get(path))
        for job in client.get("/api/v1/jobs").json()["items"]:
            collect(remote, client.get(f"/api/v1/jobs/{job['id']}"))
            collect(remote, client.get(f"/api/v1/jobs/{job['id']}/events"))
    key_lines = [line for line in sshd.private_key_text.splitlines() if "PRIVATE KEY" not in line]
    needles = [sshd.password.encode(), *(line.encode() for line in key_lines if len(line) > 20)]
    needles.append(remote.ray_token.encode())
    home = Path(remote.home)
    haystacks: dict[str, bytes] = {}
    for path in [*home.rglob("*"), *Path(sshd.home).rglob("*")]:
        # The keys themselves: the secret key, and the Ray head's own token file (0600).
        if (
            path.is_file()
            and not path.is_symlink()
            and path.name not in ("secret.key", "auth_token")
        ):
            haystacks[str(path)] = path.read_bytes()
    client = redis.Redis.from_url(remote.env["TP_REDIS_URL"])
    for key in client.scan_iter(count=1000):
        haystacks[f"redis:{key!r}"] = client.dump(key) or b""
    haystacks["api responses"] = "\n".join(remote.responses).encode()
    assert any(p.endswith("platform.db") for p in haystacks), "the database was not searched"
    assert any("/logs/" in p for p in haystacks), "the service logs were not searched"
    found = [
        (where, needle[:6])
        for where, data in haystacks.items()
        for needle in needles
        if needle in data
    ]
    assert found == []
