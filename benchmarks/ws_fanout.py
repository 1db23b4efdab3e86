"""Live fan-out benchmark: metric points from metrics.jsonl to 50 WebSocket clients.

The real path: lines are appended to a run's metrics.jsonl; the platform's own ingestion
(`jobs.ingest.ingest`, as the supervisor runs it) stores them and publishes them to Redis;
the API (a uvicorn process) fans them out to every client of the job's WebSocket. Each point's
value is the wall-clock time its line was written, so a client knows each point's latency.

    python benchmarks/ws_fanout.py [--clients 50] [--seconds 20] [--rate 1000] [--keys 10]

`--rate` is points written per second (steps/s x keys). A private TP_HOME, a redis-server of
its own and the API on free ports; everything is stopped at the end. Clients run in a process
of their own; all share this host. Prints a table, then one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clients(url: str, count: int, seconds: float, results: Any) -> None:
    """Connect `count` clients, count points and their latencies until told to stop."""
    from websockets.asyncio.client import connect

    connected = [0]

    async def one(index: int) -> tuple[int, list[float], int]:
        latencies: list[float] = []
        received = 0
        async with connect(url, max_size=None, open_timeout=60) as ws:
            json.loads(await ws.recv())  # the snapshot
            connected[0] += 1
            if connected[0] == count:
                ready.set()
            deadline = time.monotonic() + seconds + 30
            while time.monotonic() < deadline:
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                except TimeoutError:
                    break
                if message.get("type") != "metrics":
                    continue
                now = time.time()
                for point in message["points"]:
                    if point["key"] == "stop":
                        return received, latencies, index
                    received += 1
                    if point["value"] is not None:
                        latencies.append(now - point["value"])
        return received, latencies, index

    async def main() -> None:
        outcome = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
        received, latencies, errors = 0, [], 0
        for item in outcome:
            if isinstance(item, BaseException):
                errors += 1
                continue
            received += item[0]
            latencies.extend(item[1][::10])  # a sample keeps the pipe small
        results.put({"received": received, "latencies": latencies, "errors": errors})

    ready = multiprocessing_ready
    asyncio.run(main())


multiprocessing_ready: Any = None


def _start_clients(url: str, count: int, seconds: float) -> tuple[Any, Any]:
    global multiprocessing_ready
    context = multiprocessing.get_context("fork")
    multiprocessing_ready = context.Event()
    results = context.Queue()
    process = context.Process(target=_clients, args=(url, count, seconds, results))
    process.start()
    return process, results


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=1000, help="points written per second")
    parser.add_argument("--keys", type=int, default=10, help="metric keys per step")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="tp-ws-bench-"))
    redis_port, api_port = _free_port(), _free_port()
    redis_binary = shutil.which("redis-server") or "redis-server"
    redis_process = subprocess.Popen(
        [redis_binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        cwd=scratch,
    )
    os.environ.update(
        TP_HOME=str(scratch / "home"),
        TP_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        TP_PORT=str(api_port),
        TP_LOG_LEVEL="WARNING",
    )
    api: subprocess.Popen[bytes] | None = None
    clients = None
    try:
        from sqlmodel import Session

        from training_platform.bootstrap import bootstrap
        from training_platform.core.settings import load_settings
        from training_platform.jobs import ingest, service
        from training_platform.jobs.models import Job
        from training_platform.jobs.schemas import JobCreate
        from training_platform.jobs.state import JobStatus, transition
        from training_platform.monitoring.live import publisher
        from training_platform.runners.local import LocalRunner

        settings = load_settings()
        engine = bootstrap(settings, build_model=True)
        request = JobCreate.model_validate(
            {"name": "fan-out", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
        )
        with Session(engine, expire_on_commit=False) as session:
            job, _ = service.submit(session=session, request=request, actor="benchmark")
            session.commit()
            for target in (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING):
                transition(session, job, target, actor="benchmark", reason="benchmark")
                session.commit()
                session.refresh(job)
        run_dir = scratch / "run"
        run_dir.mkdir()
        metrics = run_dir / "metrics.jsonl"
        metrics.touch()
        handle = {"runner": "local", "run_dir": str(run_dir)}

        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "training_platform.api.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(api_port),
                "--log-level",
                "warning",
            ],
            env=dict(os.environ),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        token = settings.admin_token_file.read_text().strip()
        url = f"ws://127.0.0.1:{api_port}/api/v1/ws/jobs/{job.id}?token={token}"
        clients, results = _start_clients(url, args.clients, args.seconds)
        if not multiprocessing_ready.wait(60):
            raise RuntimeError("the clients did not connect")

        runner, publish = LocalRunner(node="benchmark"), publisher(settings.broker_url)
        steps_per_s = max(args.rate // args.keys, 1)
        interval = 0.05  # the writer appends and ingests every 50 ms, as a busy trainer would
        step, written, ingest_s = 0, 0, 0.0
        started = time.monotonic()
        with metrics.open("a") as out, Session(engine, expire_on_commit=False) as session:
            stored = session.get(Job, job.id)
            assert stored is not None
            while time.monotonic() - started < args.seconds:
                tick = time.monotonic()
                due = int((tick - started) * steps_per_s) - step
                for _ in range(max(due, 0)):
                    step += 1
                    now = time.time()
                    values = {f"k{i}": now for i in range(args.keys)}
                    out.write(json.dumps({"type": "metrics", "step": step, "values": values}))
                    out.write("\n")
                    written += args.keys
                out.flush()
                before = time.monotonic()
                ingest.ingest(session, stored, runner, handle, final=False, publish=publish)
                ingest_s += time.monotonic() - before
                time.sleep(max(0.0, interval - (time.monotonic() - tick)))
            elapsed = time.monotonic() - started
            out.write(json.dumps({"type": "metrics", "step": step + 1, "values": {"stop": 0}}))
            out.write("\n")
            out.flush()
            ingest.ingest(session, stored, runner, handle, final=False, publish=publish)
        outcome = results.get(timeout=120)
        clients.join(timeout=30)
    finally:
        if clients is not None and clients.is_alive():
            clients.kill()
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        redis_process.terminate()
        redis_process.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)

    latencies = sorted(outcome["latencies"])
    expected = written * args.clients

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    report = {
        "clients": args.clients,
        "seconds": round(elapsed, 2),
        "points_written": written,
        "deliveries": outcome["received"],
        "deliveries_expected": expected,
        "deliveries_per_s": round(outcome["received"] / elapsed),
        "latency_ms_p50": round(percentile(0.50) * 1000, 1),
        "latency_ms_p99": round(percentile(0.99) * 1000, 1),
        "latency_ms_max": round(latencies[-1] * 1000, 1) if latencies else None,
        "client_errors": outcome["errors"],
        "ingest_share_of_wall": round(ingest_s / elapsed, 3),
        "mean_latency_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
    }
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print(
        f"target: >= 20000 deliveries/s -> {report['deliveries_per_s'] >= 20000}; "
        f"p99 < 500 ms -> {report['latency_ms_p99'] < 500}"
    )
    print("RESULT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
