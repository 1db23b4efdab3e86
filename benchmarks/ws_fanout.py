"""Live fan-out benchmark: a metric line written by a trainer, to 50 WebSocket clients.

    python benchmarks/ws_fanout.py [--clients 50] [--seconds 15] [--rate 1000] [--keys 10]

Two phases with the same writer and the same 50 clients (a process of their own), on a private
TP_HOME, redis-server and free ports:

- platform: lines are appended to a run's metrics.jsonl; the platform's own watcher (what a
  training worker runs: the run directory's change notification, then `reconcile_job`, which
  ingests, stores and publishes) runs in a process of its own; the API (a uvicorn process with
  its live hub) fans the points out to every client of the job's WebSocket.
- bare: the writer publishes the same points to Redis itself, and a bare Starlette app (one
  uvicorn process, one Redis subscription, a broadcast to every socket) sends them on.

Each point's value is the wall-clock time its line was written, so a client knows each point's
latency. `--rate` is points per second (lines/s x keys). Prints both phases and the ratio of
their p50 latencies (target <= 3), then one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

CHANNEL = "bench:bare"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the bare baseline: Starlette, one Redis subscription, a broadcast -----------------------


def bare_app() -> Any:
    """A Starlette app that broadcasts every message of one Redis channel to every socket."""
    import redis.asyncio as aioredis
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    sockets: set[WebSocket] = set()
    tasks: list[asyncio.Task[None]] = []

    async def forward() -> None:
        client = aioredis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(CHANNEL)
        async for message in pubsub.listen():
            text = message["data"].decode()
            for websocket in list(sockets):
                try:
                    await websocket.send_text(text)
                except Exception:
                    sockets.discard(websocket)

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(json.dumps({"type": "snapshot"}))
        sockets.add(websocket)
        try:
            while True:
                await websocket.receive_text()
        except Exception:
            sockets.discard(websocket)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        tasks.append(asyncio.create_task(forward()))
        yield
        tasks[0].cancel()

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)], lifespan=lifespan)


# --- clients ------------------------------------------------------------------------------


def _clients(
    url: str, count: int, seconds: float, ready: Any, results: Any, hello: str | None
) -> None:
    """Connect `count` clients (each sends `hello` first when given), count points and their
    latencies until the stop point."""
    from websockets.asyncio.client import connect

    connected = [0]

    async def one() -> tuple[int, list[float]]:
        latencies: list[float] = []
        received = 0
        async with connect(url, max_size=None, open_timeout=60) as ws:
            if hello is not None:
                await ws.send(hello)
            json.loads(await ws.recv())  # the snapshot
            connected[0] += 1
            if connected[0] == count:
                ready.set()
            deadline = time.monotonic() + seconds + 60
            while time.monotonic() < deadline:
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                except TimeoutError:
                    break
                if message.get("type") != "metrics":
                    continue
                now = time.time()
                for point in message["points"]:
                    if point["key"] == "stop":
                        return received, latencies
                    received += 1
                    latencies.append(now - point["value"])
        return received, latencies

    async def main() -> None:
        outcome = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        received, latencies, errors = 0, [], 0
        for item in outcome:
            if isinstance(item, BaseException):
                errors += 1
                continue
            received += item[0]
            latencies.extend(item[1][::5])  # a sample keeps the pipe small
        results.put({"received": received, "latencies": latencies, "errors": errors})

    asyncio.run(main())


# --- the platform's watcher, as a training worker runs it ------------------------------------


def _watcher(home: str, redis_url: str, job_id: int, handle: dict[str, Any]) -> None:
    os.environ.update(TP_HOME=home, TP_REDIS_URL=redis_url, TP_LOG_LEVEL="WARNING")
    from training_platform.core.db import get_engine
    from training_platform.core.settings import load_settings
    from training_platform.jobs.supervisor import reconcile_job
    from training_platform.runners.local import LocalRunner

    settings = load_settings()
    engine = get_engine(settings)
    runner = LocalRunner(node=handle["node"])
    waiter = runner.output_waiter(handle, 0.5)
    assert waiter is not None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        reconcile_job(engine, settings, job_id, {"local": runner}, actor="benchmark")
        waiter.wait()


# --- one phase ----------------------------------------------------------------------------


def _phase(
    url: str, args: argparse.Namespace, write: Any, flush: Any, hello: str | None = None
) -> tuple[dict[str, Any], float]:
    context = multiprocessing.get_context("fork")
    ready, results = context.Event(), context.Queue()
    clients = context.Process(
        target=_clients, args=(url, args.clients, args.seconds, ready, results, hello)
    )
    clients.start()
    try:
        if not ready.wait(90):
            raise RuntimeError("the clients did not connect")
        lines_per_s = max(args.rate // args.keys, 1)
        started = time.monotonic()
        line = 0
        while time.monotonic() - started < args.seconds:
            due = int((time.monotonic() - started) * lines_per_s)
            while line < due:
                line += 1
                now = time.time()
                write(line, {f"k{i}": now for i in range(args.keys)})
            flush()
            time.sleep(0.002)
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        write(line + 1, {"stop": 0.0})
        flush()
        outcome = results.get(timeout=120)
        clients.join(timeout=30)
    finally:
        if clients.is_alive():
            clients.kill()
    outcome["written"] = line * args.keys
    return outcome, elapsed


def _summary(outcome: dict[str, Any], elapsed: float, clients: int) -> dict[str, Any]:
    latencies = sorted(outcome["latencies"])

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    expected = outcome["written"] * clients
    return {
        "points_written": outcome["written"],
        "deliveries": outcome["received"],
        "deliveries_expected": expected,
        "lost": expected - outcome["received"],
        "deliveries_per_s": round(outcome["received"] / elapsed),
        "latency_ms_p50": round(percentile(0.50), 1),
        "latency_ms_p99": round(percentile(0.99), 1),
        "latency_ms_mean": round(statistics.fmean(latencies) * 1000, 1),
        "client_errors": outcome["errors"],
    }


def _serve(app: str, port: int, env: dict[str, str], factory: bool) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", "warning"] + (["--factory"] if factory else [])
    return subprocess.Popen(argv, env=env)


def _wait_port(port: int, path: str | None) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def main() -> int:
    """Run both phases and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=1000, help="points written per second")
    parser.add_argument("--keys", type=int, default=10, help="metric keys per line")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="tp-ws-bench-"))
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
    home = scratch / "home"
    env = {**os.environ, "TP_HOME": str(home), "TP_REDIS_URL": redis_url}
    env.update(TP_LOG_LEVEL="WARNING", BENCH_REDIS_URL=redis_url)
    os.environ.update(env)
    started: list[subprocess.Popen[bytes]] = []
    watcher = None
    report: dict[str, Any] = {"clients": args.clients, "rate": args.rate, "keys": args.keys}
    try:
        import redis
        from sqlmodel import Session

        from training_platform.bootstrap import bootstrap
        from training_platform.core.settings import load_settings
        from training_platform.jobs import service
        from training_platform.jobs.schemas import JobCreate
        from training_platform.jobs.state import JobStatus, transition

        # Bare: writer -> Redis -> Starlette -> clients.
        bare_port = _free_port()
        started.append(_serve("ws_fanout:bare_app", bare_port, env | _here(), factory=True))
        _wait_port(bare_port, None)
        publisher = redis.Redis.from_url(redis_url)

        def publish(step: int, values: dict[str, float]) -> None:
            points = [{"step": step, "key": k, "value": v} for k, v in values.items()]
            message = {"v": 1, "type": "metrics", "job_id": 1, "points": points}
            publisher.publish(CHANNEL, json.dumps(message, separators=(",", ":")))

        outcome, elapsed = _phase(f"ws://127.0.0.1:{bare_port}/ws", args, publish, lambda: None)
        report["bare"] = _summary(outcome, elapsed, args.clients)

        # Platform: metrics.jsonl -> watcher -> ingest, DB, Redis -> API hub -> clients.
        settings = load_settings()
        engine = bootstrap(settings, build_model=True)
        request = JobCreate.model_validate(
            {"name": "fan-out", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
        )
        run_dir = scratch / "run"
        run_dir.mkdir()
        trainer = subprocess.Popen(["sleep", "3600"], start_new_session=True)  # the "trainer"
        started.append(trainer)
        import psutil

        handle = {
            "runner": "local",
            "node": settings.node_name,
            "run_dir": str(run_dir),
            "pid": trainer.pid,
            "create_time": psutil.Process(trainer.pid).create_time(),
        }
        with Session(engine, expire_on_commit=False) as session:
            job, _ = service.submit(session=session, request=request, actor="benchmark")
            session.commit()
            for target in (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING):
                values = {"runner_handle": handle, "runner": "local"}
                transition(
                    session, job, target, actor="benchmark", reason="benchmark", values=values
                )
                session.commit()
                session.refresh(job)
        engine.dispose()
        api_port = _free_port()
        started.append(_serve("training_platform.api.server:create_app", api_port, env, True))
        _wait_port(api_port, "/readyz")
        context = multiprocessing.get_context("spawn")
        watcher = context.Process(target=_watcher, args=(str(home), redis_url, job.id, handle))
        watcher.start()
        metrics = (run_dir / "metrics.jsonl").open("a")

        def append(step: int, values: dict[str, float]) -> None:
            record = {"type": "metrics", "step": step, "values": values}
            metrics.write(json.dumps(record) + "\n")

        token = settings.admin_token_file.read_text().strip()
        url = f"ws://127.0.0.1:{api_port}/api/v1/ws/jobs/{job.id}"
        hello = json.dumps({"type": "hello", "token": token})
        outcome, elapsed = _phase(url, args, append, metrics.flush, hello)
        metrics.close()
        report["platform"] = _summary(outcome, elapsed, args.clients)
    finally:
        if watcher is not None:
            watcher.terminate()
            watcher.join(timeout=10)
            if watcher.is_alive():  # blocked in the change notification: it must not linger
                watcher.kill()
                watcher.join(timeout=10)
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=30)
        redis_process.terminate()
        redis_process.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)

    bare, platform = report["bare"], report["platform"]
    report["p50_ratio"] = round(platform["latency_ms_p50"] / bare["latency_ms_p50"], 2)
    for name in ("bare", "platform"):
        row = report[name]
        print(
            f"{name:<9} p50 {row['latency_ms_p50']:>7} ms  p99 {row['latency_ms_p99']:>7} ms  "
            f"{row['deliveries']:,} of {row['deliveries_expected']:,} delivered "
            f"({row['deliveries_per_s']:,}/s), {row['client_errors']} client errors"
        )
    print(f"p50 ratio platform/bare {report['p50_ratio']} (target <= 3, 0 lost)")
    print("RESULT " + json.dumps(report))
    return 0


def _here() -> dict[str, str]:
    """PYTHONPATH for the bare app, which lives in this file."""
    here = str(Path(__file__).resolve().parent)
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{here}:{current}" if current else here}


if __name__ == "__main__":
    sys.exit(main())
