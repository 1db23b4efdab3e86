"""Metrics ingestion benchmark: the platform's ingestion against one bare bulk insert, and the
API while four jobs ingest flat out.

    python benchmarks/ingest.py [--steps 10000] [--keys 10] [--rounds 3] [--no-postgres]

1. Throughput, on SQLite and on a throwaway PostgreSQL database (created on the local server
   and dropped after): a run directory's metrics.jsonl of STEPS x KEYS points, as a trainer
   writes it, is ingested by the platform's own `jobs.ingest.ingest` (read by offset, parsed,
   stored round by round with the offset compare-and-set, published to Redis). Two baselines
   insert the same rows, built beforehand, into the same table in one transaction: a bulk
   insert as an application on SQLAlchemy writes it (`session.execute(insert(JobMetric),
   rows)`, the target's baseline), and the floor, one `executemany` of the bare DB-API driver
   with nothing around it. Rounds alternate baselines and platform; medians are reported.
2. Contention (SQLite, where writers queue for one lock): an API process (uvicorn) answers
   GET /api/v1/jobs and POST /api/v1/jobs from a client, first idle, then while 4 processes
   each ingest a job's metrics file as fast as they can, each from a thread lowered as the
   platform's workers lower the thread that watches a run (`processes.at_low_priority`).
   Reports failed requests and GET p50/p99 idle and under load.

A private redis-server and TP_HOME are used and removed; tables first, then one RESULT line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

PG_ADMIN = os.environ.get("TP_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def write_metrics(path: Path, steps: int, keys: int) -> int:
    """A trainer's metrics.jsonl: one line per step with `keys` values; returns its size."""
    stamp = datetime.now(UTC).isoformat()
    with path.open("w") as out:
        out.write(json.dumps({"type": "started", "time": stamp, "max_steps": steps}) + "\n")
        for step in range(1, steps + 1):
            values = {f"train/key_{i}": step * 0.001 + i for i in range(keys)}
            out.write(
                json.dumps({"type": "metrics", "time": stamp, "step": step, "values": values})
                + "\n"
            )
    return path.stat().st_size


def running_job(engine: Any, name: str) -> Any:
    """A job moved to RUNNING through the state machine, as a worker would."""
    from sqlmodel import Session

    from training_platform.jobs import service
    from training_platform.jobs.schemas import JobCreate
    from training_platform.jobs.state import JobStatus, transition

    request = JobCreate.model_validate(
        {"name": name, "algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
    )
    with Session(engine, expire_on_commit=False) as session:
        job, _ = service.submit(session=session, request=request, actor="benchmark")
        session.commit()
        for target in (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING):
            transition(session, job, target, actor="benchmark", reason="benchmark")
            session.commit()
            session.refresh(job)
    return job


def ingest_all(engine: Any, settings: Any, job_id: int, run_dir: Path) -> tuple[float, int]:
    """The platform's ingestion of the whole file, from offset 0; (seconds, values stored)."""
    from sqlalchemy import update
    from sqlmodel import Session

    from training_platform.jobs import ingest
    from training_platform.jobs.models import Job
    from training_platform.monitoring.live import publisher
    from training_platform.runners.local import LocalRunner

    with Session(engine, expire_on_commit=False) as session:
        session.execute(update(Job).where(Job.id == job_id).values(metrics_offset=0, log_offset=0))  # type: ignore[arg-type]
        session.commit()
        job = session.get(Job, job_id)
        handle = {"runner": "local", "run_dir": str(run_dir)}
        started = time.perf_counter()
        result = ingest.ingest(
            session,
            job,
            LocalRunner(node="benchmark"),
            handle,
            final=True,
            publish=publisher(settings.broker_url),
        )
        return time.perf_counter() - started, result.metric_values


def bare_insert(url: str, rows: list[tuple[Any, ...]]) -> float:
    """One executemany of the rows through the bare DB-API driver, in one transaction."""
    columns = "(job_id, attempt, step, key, value, recorded_at)"
    if url.startswith("sqlite"):
        import sqlite3

        connection = sqlite3.connect(url.removeprefix("sqlite:///"))
        sql = f"INSERT INTO job_metrics {columns} VALUES (?, ?, ?, ?, ?, ?)"
    else:
        import psycopg

        connection = psycopg.connect(url)  # type: ignore[assignment]
        sql = f"INSERT INTO job_metrics {columns} VALUES (%s, %s, %s, %s, %s, %s)"
    try:
        started = time.perf_counter()
        connection.cursor().executemany(sql, rows)
        connection.commit()
        return time.perf_counter() - started
    finally:
        connection.close()


def bulk_insert(engine: Any, rows: list[dict[str, Any]]) -> float:
    """One SQLAlchemy bulk insert of the rows (Core insert with a list), in one transaction."""
    from sqlalchemy import insert
    from sqlmodel import Session

    from training_platform.jobs.models import JobMetric

    with Session(engine) as session:
        started = time.perf_counter()
        session.execute(insert(JobMetric), rows)
        session.commit()
        return time.perf_counter() - started


def clear(engine: Any, job_id: int) -> None:
    from sqlalchemy import delete
    from sqlmodel import Session

    from training_platform.jobs.models import JobMetric

    with Session(engine) as session:
        session.execute(delete(JobMetric).where(JobMetric.job_id == job_id))  # type: ignore[arg-type]
        session.commit()


def throughput(database_url: str | None, scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Platform vs bare bulk insert on one database."""
    from training_platform.bootstrap import bootstrap
    from training_platform.core.settings import load_settings

    home = scratch / f"home-{uuid.uuid4().hex[:6]}"
    settings = load_settings(home=home, database_url=database_url)
    engine = bootstrap(settings, build_model=True)
    job = running_job(engine, "ingest")
    run_dir = scratch / f"run-{job.id}-{home.name}"
    run_dir.mkdir()
    size = write_metrics(run_dir / "metrics.jsonl", args.steps, args.keys)
    points = args.steps * args.keys
    stamp = datetime.now(UTC)
    url = settings.resolved_database_url.replace("postgresql+psycopg://", "postgresql://")
    if url.startswith("sqlite"):
        stamp_value: Any = stamp.isoformat(sep=" ")
    else:
        stamp_value = stamp
    rows = [
        (job.id, 1, step, f"train/key_{i}", step * 0.001 + i, stamp_value)
        for step in range(1, args.steps + 1)
        for i in range(args.keys)
    ]
    columns = ("job_id", "attempt", "step", "key", "value", "recorded_at")
    records = [dict(zip(columns, (*row[:5], stamp), strict=True)) for row in rows]
    platform_s, bare_s, bulk_s = [], [], []
    for _ in range(args.rounds):
        clear(engine, job.id)
        bulk_s.append(bulk_insert(engine, records))
        clear(engine, job.id)
        bare_s.append(bare_insert(url, rows))
        clear(engine, job.id)
        seconds, stored = ingest_all(engine, settings, job.id, run_dir)
        if stored != points:
            raise RuntimeError(f"ingestion stored {stored} of {points} values")
        platform_s.append(seconds)
    engine.dispose()
    platform, bare = statistics.median(platform_s), statistics.median(bare_s)
    bulk = statistics.median(bulk_s)
    return {
        "database": engine.dialect.name,
        "points": points,
        "file_bytes": size,
        "platform_points_per_s": round(points / platform),
        "bulk_insert_points_per_s": round(points / bulk),
        "ratio": round(bulk / platform, 2),
        "driver_points_per_s": round(points / bare),
        "ratio_to_driver": round(bare / platform, 2),
    }


def _ingest_worker(home: str, redis_url: str, job_id: int, run_dir: str, seconds: float) -> None:
    """Ingest one job's file from the start again and again until `seconds` have passed."""
    os.environ.update(TP_HOME=home, TP_REDIS_URL=redis_url)
    from training_platform.core import processes
    from training_platform.core.db import get_engine
    from training_platform.core.settings import load_settings

    settings = load_settings()
    engine = get_engine(settings)
    deadline = time.monotonic() + seconds

    def flat_out() -> None:
        while time.monotonic() < deadline:
            clear(engine, job_id)
            ingest_all(engine, settings, job_id, Path(run_dir))

    # As in the platform: a worker ingests in its watch thread, at the lower priority
    # `processes.at_low_priority` gives bookkeeping.
    processes.at_low_priority(flat_out)


def _client_load(base: str, token: str, seconds: float, post_every: int) -> dict[str, Any]:
    """GET /jobs in a loop (and a POST every `post_every` requests); latencies and failures."""
    latencies: list[float] = []
    failures: list[str] = []
    body = {"name": "load", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            count += 1
            started = time.perf_counter()
            response = client.get("/api/v1/jobs", params={"limit": 50}, timeout=60)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                failures.append(f"GET {response.status_code}: {response.text[:200]}")
            if count % post_every == 0:
                response = client.post("/api/v1/jobs", json=body, timeout=60)
                if response.status_code != 201:
                    failures.append(f"POST {response.status_code}: {response.text[:200]}")
    return {"latencies": latencies, "failures": failures, "requests": count + count // post_every}


def contention(scratch: Path, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The API's answers while 4 jobs ingest flat out, against the same API idle (SQLite)."""
    from training_platform.bootstrap import bootstrap
    from training_platform.core.settings import load_settings

    home = scratch / "home-contention"
    settings = load_settings(home=home, redis_url=redis_url)
    engine = bootstrap(settings, build_model=True)
    jobs = []
    for index in range(args.jobs):
        job = running_job(engine, f"flat-out-{index}")
        run_dir = scratch / f"contention-{job.id}"
        run_dir.mkdir()
        write_metrics(run_dir / "metrics.jsonl", args.steps, args.keys)
        jobs.append((job.id, run_dir))
    engine.dispose()
    port = _free_port()
    env = {**os.environ, "TP_HOME": str(home), "TP_REDIS_URL": redis_url, "TP_PORT": str(port)}
    env["TP_LOG_LEVEL"] = "WARNING"
    api = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--factory"),
            "training_platform.api.server:create_app",
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base)
        token = settings.admin_token_file.read_text().strip()
        idle = _client_load(base, token, args.seconds, post_every=10)
        context = multiprocessing.get_context("spawn")
        workers = [
            context.Process(
                target=_ingest_worker,
                args=(str(home), redis_url, job_id, str(run_dir), args.seconds + 2),
            )
            for job_id, run_dir in jobs
        ]
        for worker in workers:
            worker.start()
        time.sleep(2)  # the ingesters are importing and starting
        loaded = _client_load(base, token, args.seconds, post_every=10)
        for worker in workers:
            worker.join(timeout=120)
    finally:
        api.terminate()
        api.wait(timeout=30)
    idle_p99 = _percentile(idle["latencies"], 0.99)
    loaded_p99 = _percentile(loaded["latencies"], 0.99)
    return {
        "ingesting_jobs": args.jobs,
        "requests_idle": idle["requests"],
        "requests_loaded": loaded["requests"],
        "failed_requests": len(idle["failures"]) + len(loaded["failures"]),
        "failures": (idle["failures"] + loaded["failures"])[:5],
        "get_jobs_p50_ms_idle": round(_percentile(idle["latencies"], 0.5) * 1000, 1),
        "get_jobs_p99_ms_idle": round(idle_p99 * 1000, 1),
        "get_jobs_p50_ms_loaded": round(_percentile(loaded["latencies"], 0.5) * 1000, 1),
        "get_jobs_p99_ms_loaded": round(loaded_p99 * 1000, 1),
        "p99_ratio": round(loaded_p99 / idle_p99, 2),
    }


def _wait_ready(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the API did not become ready")


def _with_pg_database(work: Callable[[str], dict[str, Any]]) -> dict[str, Any] | None:
    import psycopg

    name = f"tp_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        print(f"PostgreSQL skipped: {error}")
        return None
    try:
        return work(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")
    finally:
        from training_platform.core.db import engine_for

        engine_for(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}").dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4, help="jobs ingesting at once")
    parser.add_argument("--seconds", type=float, default=15.0, help="per contention phase")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="tp-ingest-bench-"))
    redis_port = _free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    redis_process = subprocess.Popen(
        [
            *(shutil.which("redis-server") or "redis-server", "--port", str(redis_port)),
            *("--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        cwd=scratch,
    )
    os.environ.update(TP_HOME=str(scratch / "home"), TP_REDIS_URL=redis_url)
    os.environ["TP_LOG_LEVEL"] = "WARNING"
    report: dict[str, Any] = {}
    try:
        report["sqlite"] = throughput(None, scratch, args)
        if not args.no_postgres:
            pg = _with_pg_database(lambda url: throughput(url, scratch, args))
            if pg is not None:
                report["postgresql"] = pg
        report["contention"] = contention(scratch, redis_url, args)
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)

    for name in ("sqlite", "postgresql"):
        if name in report:
            row = report[name]
            print(
                f"ingestion {name:<10} platform {row['platform_points_per_s']:>8,} points/s   "
                f"bulk insert {row['bulk_insert_points_per_s']:>8,} points/s   "
                f"ratio {row['ratio']:.2f} (target >= 0.5)   "
                f"bare driver executemany {row['driver_points_per_s']:>8,} points/s   "
                f"ratio {row['ratio_to_driver']:.2f}"
            )
    load = report["contention"]
    print(
        f"contention ({load['ingesting_jobs']} jobs ingesting): "
        f"{load['failed_requests']} failed of {load['requests_idle'] + load['requests_loaded']} "
        f"requests; GET /jobs p99 idle {load['get_jobs_p99_ms_idle']} ms, loaded "
        f"{load['get_jobs_p99_ms_loaded']} ms, ratio {load['p99_ratio']} (target < 3, 0 failed)"
    )
    print("RESULT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
