"""Start-up and memory benchmark: API start against a bare FastAPI app on the same database,
each service's idle memory against a bare Celery worker, and the workers' memory over many jobs.

    python benchmarks/startup.py [--starts 3] [--jobs 100] [--api-only]

1. API start: from spawning `uvicorn --factory training_platform.api.server:create_app` to the
   first 200 from /readyz, against a bare app (FastAPI + SQLModel, one /readyz route that runs
   SELECT 1 on the same SQLite file) started the same way. They alternate; medians count.
   The contexts' routes load right after /readyz answers (api/contexts.py): the time to the
   first GET /api/v1/jobs answered is printed beside it.
2. Idle memory: `tp up` on a private TP_HOME and redis-server; after 10 s of idling, the
   resident memory of each service's process group (main process and its pool), and of a
   bare Celery worker (benchmarks/bare_spawn.py, `-c 1`) for comparison.
3. Memory over jobs: JOBS jobs, one after another, each submitted, seen running (its trainer
   started by the training worker, its dataset prepared by the general worker) and
   cancelled; the workers' memory after every fifth of them. The pools are recycled after
   TP_WORKER_MAX_TASKS_PER_CHILD tasks (1000) or past TP_WORKER_MAX_MEMORY_PER_CHILD_MB
   (512), so their memory must stay flat.

Tables first, then one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from dispatch import Platform, free_port

MIB = 2**20


def time_start(
    target: str, env: dict[str, str], then: str | None = None, token: str = ""
) -> tuple[float, float | None]:
    """Seconds from spawning uvicorn with `target` to the first 200 from /readyz, and, with
    `then`, to the first 200 from that path (with the token) after it."""
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--factory", target),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        ready = None
        headers = {"Authorization": f"Bearer {token}"}
        while time.monotonic() < deadline:
            try:
                if ready is None:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        ready = time.perf_counter() - started
                        if then is None:
                            return ready, None
                        continue
                elif httpx.get(f"http://127.0.0.1:{port}{then}", headers=headers).is_success:
                    return ready, time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"{target} did not become ready")
    finally:
        server.terminate()
        server.wait(timeout=30)


def group_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def services(home: Path) -> dict[str, int]:
    """Each recorded service's main pid."""
    found = {}
    for state_file in sorted((home / "run").glob("*.json")):
        try:
            found[state_file.stem] = int(json.loads(state_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
    return found


def bare_worker_rss(redis_url: str) -> int:
    """Idle resident memory of benchmarks/bare_spawn.py's Celery worker (-c 1)."""
    here = str(Path(__file__).resolve().parent)
    env = dict(os.environ, BENCH_REDIS_URL=redis_url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "bare_spawn", "worker", "-c", "1"),
            *("-Q", "bench-bare-spawn", "--without-mingle", "--without-gossip", "-l", "WARNING"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(10)
        return group_rss(worker.pid)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def churn(client: httpx.Client, jobs: int, home: Path) -> list[dict[str, Any]]:
    """Submit, see running and cancel `jobs` jobs; the workers' memory every fifth."""
    body = {"algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
    checkpoints = []
    pids = services(home)
    for index in range(1, jobs + 1):
        job = client.post("/api/v1/jobs", json={**body, "name": f"churn-{index}"}).json()
        deadline = time.monotonic() + 120
        while client.get(f"/api/v1/jobs/{job['id']}").json()["status"] not in (
            "running",
            "failed",
            "succeeded",
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job['id']} did not start")
            time.sleep(0.05)
        client.post(f"/api/v1/jobs/{job['id']}/cancel")
        while client.get(f"/api/v1/jobs/{job['id']}").json()["status"] not in (
            "cancelled",
            "failed",
            "succeeded",
        ):
            time.sleep(0.05)
        if index % max(jobs // 5, 1) == 0 or index == 1:
            checkpoints.append(
                {
                    "jobs": index,
                    **{
                        f"{name}_mb": round(group_rss(pid) / MIB, 1)
                        for name, pid in pids.items()
                        if name.startswith("worker")
                    },
                }
            )
    return checkpoints


def main() -> int:
    """Run the three parts and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--api-only", action="store_true", help="part 1 only")
    args = parser.parse_args()
    report: dict[str, Any] = {}

    # 1. API start against the bare app, on the same (bootstrapped) SQLite database.
    scratch = Path(tempfile.mkdtemp(prefix="tp-start-bench-"))
    from training_platform.bootstrap import bootstrap
    from training_platform.core.settings import load_settings

    home = scratch / "home"
    redis_port = free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", ""],
        stdout=subprocess.DEVNULL,
        cwd=scratch,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    env.update(
        TP_HOME=str(home),
        TP_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        TP_LOG_LEVEL="WARNING",
        BENCH_DATABASE_URL=f"sqlite:///{home / 'platform.db'}",
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")])
        ),
    )
    try:
        bootstrap(load_settings(home=home), build_model=True).dispose()
        token = (home / "admin-token").read_text().strip()
        platform_s, bare_s, first_s = [], [], []
        for _ in range(args.starts):
            bare_s.append(time_start("bare_api:bare_app", env)[0])
            ready, first = time_start(
                "training_platform.api.server:create_app", env, "/api/v1/jobs", token
            )
            platform_s.append(ready)
            first_s.append(first)
    finally:
        redis_server.terminate()
        redis_server.wait(timeout=30)
    report["api_start"] = {
        "platform_s": round(statistics.median(platform_s), 2),
        "bare_s": round(statistics.median(bare_s), 2),
        "ratio": round(statistics.median(platform_s) / statistics.median(bare_s), 2),
        "first_jobs_request_s": round(statistics.median(first_s), 2),
    }
    if args.api_only:
        print(json.dumps(report["api_start"]))
        return 0

    # 2. and 3. A whole platform.
    platform = Platform(keep_home=False, up_timeout_s=180)
    try:
        platform.start()
        time.sleep(10)
        report["idle_mb"] = {
            name: round(group_rss(pid) / MIB, 1) for name, pid in services(platform.home).items()
        }
        report["idle_mb"]["bare_celery_worker"] = round(
            bare_worker_rss(platform.redis_url) / MIB, 1
        )
        headers = {"Authorization": f"Bearer {platform.token}"}
        with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as client:
            report["memory_over_jobs"] = churn(client, args.jobs, platform.home)
    finally:
        platform.stop()

    start = report["api_start"]
    print(
        f"API start -> /readyz: platform {start['platform_s']} s, bare FastAPI app "
        f"{start['bare_s']} s, ratio {start['ratio']} (target <= 1.5); "
        f"-> first GET /api/v1/jobs answered: {start['first_jobs_request_s']} s"
    )
    print(
        "idle resident memory (MiB, process and pool): "
        + ", ".join(f"{name} {mb}" for name, mb in report["idle_mb"].items())
    )
    for row in report["memory_over_jobs"]:
        print(
            f"after {row['jobs']:>4} jobs: "
            + ", ".join(f"{k.removesuffix('_mb')} {v} MiB" for k, v in row.items() if k != "jobs")
        )
    print("RESULT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
