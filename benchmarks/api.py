"""API read benchmark: GET /jobs/{id} and GET /jobs against a bare FastAPI + SQLModel handler,
and a 100k-point metrics curve, thinned and downloaded whole.

    python benchmarks/api.py [--jobs 10000] [--seconds 8] [--clients 8] [--points 100000]

A private TP_HOME (SQLite) is filled with JOBS jobs (rows written in bulk, as the service would
store them) and one job with POINTS metric values (10 keys). Two uvicorn processes serve the
same database file: the platform's API, and a bare FastAPI app whose handlers run the same
queries (`session.get(Job, id)`; a page of 50 jobs by id descending with the total count) and
return the rows as SQLModel serializes them, without auth. CLIENTS concurrent clients (asyncio,
a process of their own) request for SECONDS; platform and bare alternate, twice each, and the
better round of each counts. Then the curve: GET /metrics thinned to 2,000 steps, and the
whole series as CSV and NDJSON streams (time and peak memory of the API process).
Prints a table and one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bare_app() -> Any:
    """FastAPI + SQLModel handlers running the platform's queries, without auth or extras."""
    from fastapi import FastAPI
    from sqlalchemy import func
    from sqlmodel import Session, col, select

    from training_platform.core.db import engine_for
    from training_platform.jobs.models import Job

    engine = engine_for(os.environ["BENCH_DATABASE_URL"])
    app = FastAPI()

    @app.get("/jobs/{job_id}", response_model=Job)
    def one(job_id: int) -> Any:
        with Session(engine) as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    @app.get("/jobs")
    def page(limit: int = 50, offset: int = 0) -> dict[str, Any]:
        with Session(engine) as session:
            total = session.exec(select(func.count()).select_from(Job)).one()
            jobs = session.exec(
                select(Job).order_by(col(Job.id).desc()).offset(offset).limit(limit)
            ).all()
            return {"items": [job.model_dump(mode="json") for job in jobs], "total": total}

    return app


def fill(engine: Any, count: int, points: int) -> tuple[int, int]:
    """`count` jobs like submitted ones, and a finished job with `points` metric values."""
    from sqlalchemy import insert
    from sqlmodel import Session

    from training_platform.jobs import service
    from training_platform.jobs.models import Job, JobMetric
    from training_platform.jobs.schemas import JobCreate
    from training_platform.jobs.state import JobStatus, transition

    request = JobCreate.model_validate(
        {"name": "bench", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
    )
    with Session(engine, expire_on_commit=False) as session:
        first, _ = service.submit(session=session, request=request, actor="benchmark")
        session.commit()
        row = {c: getattr(first, c) for c in Job.model_fields if c not in ("id",)}
        statuses = ("succeeded", "failed")
        rows = [
            {**row, "name": f"bench-{index}", "status": statuses[index % 2]}
            for index in range(count - 1)
        ]
        session.execute(insert(Job), rows)
        session.commit()
        curve, _ = service.submit(session=session, request=request, actor="benchmark")
        session.commit()
        for target in (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING):
            transition(session, curve, target, actor="benchmark", reason="benchmark")
            session.commit()
        keys = 10
        steps = points // keys
        from training_platform.core.types import utcnow

        now = utcnow()
        metrics = [
            {
                "job_id": curve.id,
                "attempt": 1,
                "step": s,
                "key": f"k{k}",
                "value": s * 0.5 + k,
                "recorded_at": now,
            }
            for s in range(1, steps + 1)
            for k in range(keys)
        ]
        session.execute(insert(JobMetric), metrics)
        session.commit()
        assert first.id is not None and curve.id is not None
        return first.id, curve.id


def _load(
    base: str, paths: list[str], headers: dict[str, str], seconds: float, clients: int, out: Any
) -> None:
    async def client(done: list[int], errors: list[int]) -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            index = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                response = await http.get(paths[index % len(paths)])
                index += 1
                if response.status_code == 200:
                    done[0] += 1
                else:
                    errors[0] += 1

    async def main() -> None:
        done, errors = [0], [0]
        started = time.monotonic()
        await asyncio.gather(*(client(done, errors) for _ in range(clients)))
        out.put({"rps": done[0] / (time.monotonic() - started), "errors": errors[0]})

    asyncio.run(main())


def throughput(base: str, paths: list[str], headers: dict[str, str], args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    process = context.Process(
        target=_load, args=(base, paths, headers, args.seconds, args.clients, out)
    )
    process.start()
    result = out.get(timeout=args.seconds + 120)
    process.join(timeout=30)
    return result  # type: ignore[no-any-return]


def _serve(target: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--factory", target),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        env=env,
    )


def _wait(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="tp-api-bench-"))
    redis_port = _free_port()
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--save", ""],
        stdout=subprocess.DEVNULL,
        cwd=scratch,
    )
    home = scratch / "home"
    env = {
        **os.environ,
        "TP_HOME": str(home),
        "TP_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TP_LOG_LEVEL": "WARNING",
        "BENCH_DATABASE_URL": f"sqlite:///{home / 'platform.db'}",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    os.environ.update(env)
    servers: list[subprocess.Popen[bytes]] = []
    report: dict[str, Any] = {"jobs": args.jobs, "clients": args.clients}
    try:
        from training_platform.bootstrap import bootstrap
        from training_platform.core.settings import load_settings

        settings = load_settings()
        engine = bootstrap(settings, build_model=True)
        job_id, curve_id = fill(engine, args.jobs, args.points)
        engine.dispose()
        token = settings.admin_token_file.read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        platform_port, bare_port = _free_port(), _free_port()
        servers.append(_serve("training_platform.api.server:create_app", platform_port, env))
        servers.append(_serve("api:bare_app", bare_port, env))
        platform, bare = f"http://127.0.0.1:{platform_port}", f"http://127.0.0.1:{bare_port}"
        _wait(f"{platform}/readyz")
        _wait(f"{bare}/docs")
        ids = [job_id + i * 97 % args.jobs for i in range(50)]
        cases = {
            "GET /jobs/{id}": ([f"/api/v1/jobs/{i}" for i in ids], [f"/jobs/{i}" for i in ids]),
            "GET /jobs": (["/api/v1/jobs?limit=50"], ["/jobs?limit=50"]),
        }
        for name, (ours, theirs) in cases.items():
            rounds: dict[str, list[float]] = {"platform": [], "bare": []}
            errors = 0
            for _ in range(2):
                for who, base, paths, headers in (
                    ("bare", bare, theirs, {}),
                    ("platform", platform, ours, auth),
                ):
                    result = throughput(base, paths, headers, args)
                    rounds[who].append(result["rps"])
                    errors += result["errors"]
            best = {who: max(values) for who, values in rounds.items()}
            report[name] = {
                "platform_rps": round(best["platform"], 1),
                "bare_rps": round(best["bare"], 1),
                "ratio": round(best["platform"] / best["bare"], 2),
                "errors": errors,
            }
        api_process = psutil.Process(servers[0].pid)
        with httpx.Client(base_url=platform, headers=auth, timeout=300) as client:
            started = time.perf_counter()
            thinned = client.get(f"/api/v1/jobs/{curve_id}/metrics", params={"max_steps": 2000})
            thinned_s = time.perf_counter() - started
            assert thinned.status_code == 200, thinned.text
            downloads = {}
            for fmt in ("csv", "ndjson"):
                rss_before = api_process.memory_info().rss
                peak = rss_before
                started = time.perf_counter()
                size = lines = 0
                with client.stream(
                    "GET", f"/api/v1/jobs/{curve_id}/metrics/export", params={"format": fmt}
                ) as response:
                    assert response.status_code == 200, response.read()
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        lines += chunk.count(b"\n")
                        peak = max(peak, api_process.memory_info().rss)
                downloads[fmt] = {
                    "seconds": round(time.perf_counter() - started, 2),
                    "bytes": size,
                    "lines": lines,
                    "api_rss_growth_mb": round((peak - rss_before) / 2**20, 1),
                }
        report["curve"] = {
            "points": args.points,
            "thinned_seconds": round(thinned_s, 3),
            "thinned_points": len(thinned.json()["points"]),
            "download": downloads,
        }
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        redis.terminate()
        redis.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)

    for name in ("GET /jobs/{id}", "GET /jobs"):
        row = report[name]
        print(
            f"{name:<15} platform {row['platform_rps']:>7} req/s   bare {row['bare_rps']:>7} req/s"
            f"   ratio {row['ratio']} (target >= 0.6)   errors {row['errors']}"
        )
    curve = report["curve"]
    print(
        f"curve of {curve['points']:,} points thinned to {curve['thinned_points']:,} in "
        f"{curve['thinned_seconds']} s (target < 1 s)"
    )
    for fmt, row in curve["download"].items():
        print(
            f"  whole series as {fmt}: {row['lines']:,} lines, {row['bytes']:,} bytes in "
            f"{row['seconds']} s, API memory +{row['api_rss_growth_mb']} MB"
        )
    print("RESULT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
