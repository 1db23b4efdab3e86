"""Job page benchmark: the live socket's first message for a long run, and the curve's detail.

    python benchmarks/live_snapshot.py [--steps 2000] [--keys 16] [--rounds 20]

A run of STEPS steps with KEYS metric keys per step (verl's names and digits: each value a
float's full repr) plus a validation score every 50 steps and a 300 KB log is written as a
trainer writes it and stored by the platform's own ingestion, on a private TP_HOME (SQLite) and
redis-server. Then, ROUNDS times each, interleaved:

- platform: the API (a uvicorn process, as `tp up` runs it): a WebSocket client connects to
  /api/v1/ws/jobs/{id}, sends its hello and waits for the first message (the snapshot: the
  run thinned, the log's tail); then GET /api/v1/jobs/{id}/metrics for the two curves the page
  shows first, whole (max_steps=2000), gzip accepted: what the page reads after the snapshot.
- bare: a bare Starlette app (one uvicorn process) whose socket sends, on connect, the same
  thinned rows read with one plain SQL query through sqlite3, in the same JSON shape, with no
  auth, hub or log: the floor for the first message.
- before: the same bare app sending every stored point as the snapshot did before it was
  thinned (a `points` list of {step, key, value}): its bytes and time, for scale.

Prints the first message's bytes and time to it (median, p90) for each, the ratio of platform
to bare, then one `RESULT {json}` line. Client and server share the host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

VERL_KEYS = [
    "actor/pg_loss",
    "actor/entropy",
    "actor/pg_clipfrac",
    "actor/ppo_kl",
    "actor/grad_norm",
    "actor/lr",
    "critic/score/mean",
    "critic/score/max",
    "critic/score/min",
    "critic/rewards/mean",
    "critic/advantages/mean",
    "response_length/mean",
    "response_length/clip_ratio",
    "timing_s/generate_sequences",
    "timing_s/update_actor",
    "perf/throughput",
    "perf/max_memory_allocated_gb",
    "perf/total_num_tokens",
    "actor/pg_clipfrac_lower",
    "critic/returns/mean",
]
VAL_KEY = "val-core/openai/gsm8k/reward/mean@1"
SHOWN = ["actor/pg_loss", "critic/score/mean"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_run(run_dir: Path, steps: int, keys: int) -> None:
    """metrics.jsonl and the log, as a verl run writes them."""
    rng = random.Random(0)
    names = VERL_KEYS[:keys] + [f"extra/key_{i}" for i in range(keys - len(VERL_KEYS))]
    stamp = datetime.now(UTC).isoformat()
    with (run_dir / "metrics.jsonl").open("w") as out:
        for step in range(1, steps + 1):
            values = {key: rng.random() * 10 for key in names}
            if step % 50 == 0:
                values[VAL_KEY] = rng.random()
            out.write(
                json.dumps({"type": "metrics", "time": stamp, "step": step, "values": values})
            )
            out.write("\n")
    with (run_dir / "output.log").open("w") as out:
        for i in range(3000):
            out.write(f"(TaskRunner pid=4242) step:{i} - actor/pg_loss:{rng.random():.6f} ")
            out.write(f"critic/score/mean:{rng.random():.6f} timing_s/step:{rng.random():.3f}\n")


# --- the bare baseline -----------------------------------------------------------------------


def bare_app() -> Any:
    """A Starlette app: on connect, the job's rows (thinned as the platform thins, or all)."""
    import sqlite3

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    database = os.environ["BENCH_DB"]
    job_id = int(os.environ["BENCH_JOB"])
    budget = int(os.environ["BENCH_POINTS"])

    def read(thin: bool) -> str:
        with sqlite3.connect(database) as connection:
            where = "job_id = ?"
            params: list[Any] = [job_id]
            if thin:
                keys, low, high = connection.execute(
                    "SELECT COUNT(DISTINCT key), MIN(step), MAX(step) FROM job_metrics "
                    "WHERE job_id = ?",
                    params,
                ).fetchone()
                max_steps = max(2, budget // max(1, keys))
                stride = -(-(high - low + 1) // max_steps)
                where += " AND ((step - ?) % ? = 0 OR step = ?)"
                params += [low, stride, high]
            rows = connection.execute(
                f"SELECT step, key, value FROM job_metrics WHERE {where} ORDER BY step, key",
                params,
            ).fetchall()
        if not thin:
            points = [{"step": s, "key": k, "value": v} for s, k, v in rows]
            return json.dumps({"type": "snapshot", "points": points}, separators=(",", ":"))
        series: dict[str, list[Any]] = {}
        for step, key, value in rows:
            series.setdefault(key, []).append([step, value])
        return json.dumps({"type": "snapshot", "series": series}, separators=(",", ":"))

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()  # the hello
        thin = websocket.path_params["kind"] == "thinned"
        await websocket.send_text(await asyncio.to_thread(read, thin))
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.receive_text()  # until the client leaves

    return Starlette(routes=[WebSocketRoute("/ws/{kind}", endpoint)])


# --- measuring ---------------------------------------------------------------------------------


async def first_message(url: str, hello: str) -> tuple[float, int]:
    """Seconds from connecting to the first message, and its size in bytes (as sent: the
    client does not negotiate compression)."""
    from websockets.asyncio.client import connect

    started = time.perf_counter()
    async with connect(url, max_size=None, compression=None, open_timeout=60) as ws:
        await ws.send(hello)
        message = await ws.recv()
        elapsed = time.perf_counter() - started
    return elapsed, len(message if isinstance(message, bytes) else message.encode())


def detail(base: str, token: str, job_id: int) -> tuple[float, int, int, int]:
    """GET the shown curves whole, gzip accepted: seconds, bytes on the wire, bytes decoded,
    points."""
    started = time.perf_counter()
    response = httpx.get(
        f"{base}/api/v1/jobs/{job_id}/metrics",
        params={"key": SHOWN, "max_steps": 2000, "limit": 100_000},
        headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
        timeout=60,
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return (
        elapsed,
        response.num_bytes_downloaded,
        len(response.content),
        len(response.json()["points"]),
    )


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 1),
    }


def _serve(app: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", app, "--factory", "--host", "127.0.0.1"]
    return subprocess.Popen([*argv, "--port", str(port), "--log-level", "warning"], env=env)


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def main() -> int:
    """Store the run, measure each side, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=16, help="metric keys per step")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="tp-live-bench-"))
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
    env["TP_LOG_LEVEL"] = "WARNING"
    os.environ.update(env)
    started: list[subprocess.Popen[bytes]] = []
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from ingest import ingest_all, running_job

        from training_platform.bootstrap import bootstrap
        from training_platform.core.settings import load_settings
        from training_platform.monitoring.service import SNAPSHOT_POINTS

        settings = load_settings()
        engine = bootstrap(settings, build_model=True)
        job = running_job(engine, "long run")
        run_dir = scratch / "run"
        run_dir.mkdir()
        write_run(run_dir, args.steps, args.keys)
        _, stored = ingest_all(engine, settings, job.id, run_dir)
        engine.dispose()
        token = settings.admin_token_file.read_text().strip()

        api_port, bare_port = _free_port(), _free_port()
        started.append(_serve("training_platform.api.server:create_app", api_port, env))
        bare_env = env | {
            "BENCH_DB": str(settings.resolved_database_url.removeprefix("sqlite:///")),
            "BENCH_JOB": str(job.id),
            "BENCH_POINTS": str(SNAPSHOT_POINTS),
            "PYTHONPATH": str(Path(__file__).resolve().parent),
        }
        started.append(_serve("live_snapshot:bare_app", bare_port, bare_env))
        _wait_port(api_port)
        _wait_port(bare_port)
        base = f"http://127.0.0.1:{api_port}"
        platform_url = f"ws://127.0.0.1:{api_port}/api/v1/ws/jobs/{job.id}"
        hello = json.dumps({"type": "hello", "token": token})
        sides = {
            "platform": platform_url,
            "bare": f"ws://127.0.0.1:{bare_port}/ws/thinned",
            "before": f"ws://127.0.0.1:{bare_port}/ws/all",
        }
        times: dict[str, list[float]] = {side: [] for side in sides}
        sizes: dict[str, int] = {}
        details: list[tuple[float, int, int, int]] = []
        for url in sides.values():  # warm each once (imports, first queries)
            asyncio.run(first_message(url, hello))
        detail(base, token, job.id)
        for _ in range(args.rounds):
            for side, url in sides.items():
                seconds, size = asyncio.run(first_message(url, hello))
                times[side].append(seconds)
                sizes[side] = size
            details.append(detail(base, token, job.id))
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=30)
        redis_process.terminate()
        redis_process.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)

    report: dict[str, Any] = {
        "steps": args.steps,
        "keys": args.keys + 1,
        "points_stored": stored,
        "rounds": args.rounds,
    }
    for side in sides:
        report[side] = {"first_message_bytes": sizes[side], **_stats(times[side])}
    platform_p50 = statistics.median(times["platform"])
    report["ratio_p50_platform_to_bare"] = round(platform_p50 / statistics.median(times["bare"]), 2)
    report["bytes_platform_to_before"] = round(sizes["platform"] / sizes["before"], 3)
    report["detail"] = {
        "points": details[-1][3],
        "wire_bytes_gzip": details[-1][1],
        "json_bytes": details[-1][2],
        **_stats([d[0] for d in details]),
    }
    report["first_curve_then_detail_p50_ms"] = round(
        (platform_p50 + statistics.median(d[0] for d in details)) * 1000, 1
    )

    print(f"{args.steps} steps x {args.keys + 1} keys = {stored:,} points; {args.rounds} rounds")
    print(f"{'first message':<34}{'bytes':>10}{'p50 ms':>10}{'p90 ms':>10}")
    for side, label in (
        ("platform", "platform (thinned snapshot + log)"),
        ("bare", "bare Starlette, same rows"),
        ("before", "bare, every point (as before)"),
    ):
        row = report[side]
        print(f"{label:<34}{row['first_message_bytes']:>10,}{row['p50_ms']:>10}{row['p90_ms']:>10}")
    print(f"ratio platform / bare (p50): {report['ratio_p50_platform_to_bare']}")
    print(f"bytes platform / before: {report['bytes_platform_to_before']}")
    shown = report["detail"]
    print(
        f"then the shown curves whole ({shown['points']:,} points): {shown['wire_bytes_gzip']:,} "
        f"bytes gzip ({shown['json_bytes']:,} JSON), p50 {shown['p50_ms']} ms"
    )
    print(f"first curve drawn from the snapshot: p50 {report['platform']['p50_ms']} ms (< 1 s)")
    print("RESULT " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
