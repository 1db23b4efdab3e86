"""Dispatch benchmark: job start latency, bare Celery round trip, API read throughput.

Starts a private platform (temporary TP_HOME, free ports, a redis-server of its own), measures,
and always stops everything it started, whatever happens:

    python benchmarks/dispatch.py [--jobs N] [--pings N] [--clients 50] [--requests N]

1. Job dispatch latency: from just before `POST /api/v1/jobs` to the trainer process existing
   (the launcher writes child.pid right after starting it: the target's figure), to the job's
   `started_at`, the RUNNING status as seen by polling, the first log line as served by the API,
   and the phases taken from the job's event timestamps. Jobs run one at a time (one training
   slot), tiny model, 1 step; the next is submitted once the previous start is acknowledged.
2. Baselines on the same Redis: the bare Celery round trip of `tp.system.ping`, and a bare
   Celery app whose task spawns `python -c pass` (benchmarks/bare_spawn.py): send -> child
   exists. The ratio of the trainer-exists p50 to the bare spawn p50 is the target (<= 5).
3. API read throughput: `GET /api/v1/jobs` and `GET /api/v1/jobs/{id}` under concurrent clients
   (benchmarks/api.py compares them with a bare handler).

The report is a set of tables followed by one JSON line (prefixed `RESULT `) for machines.
Server and client share this host, so throughput figures include the client's own CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
import redis
from rich.console import Console
from rich.table import Table

from training_platform.worker.broker import RedisBrokerView

API = "/api/v1"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
PING_TASK = "tp.system.ping"
PING_LIST_PREFIX = "tp:ping:"
PING_QUEUE = "default"
TRAINING_QUEUE = "training"
MODEL = "tiny-qwen2"
DATASET = "tiny-sft"

# Piped output gets a fixed width wide enough for the tables instead of rich's 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


# --- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Distribution of one measured quantity, in seconds."""

    n: int
    median: float
    p95: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarise values (NaN everywhere when there are none)."""
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(values), statistics.median(values), percentile(values, 95), min(values), max(values)
        )

    def as_ms(self) -> dict[str, float | int | None]:
        """JSON-ready milliseconds (None for NaN)."""

        def ms(value: float) -> float | None:
            return None if math.isnan(value) else round(value * 1000, 2)

        return {
            "n": self.n,
            "median_ms": ms(self.median),
            "p95_ms": ms(self.p95),
            "min_ms": ms(self.min),
            "max_ms": ms(self.max),
        }


def _ms_or_dash(seconds: float | None) -> str:
    return fmt_ms(math.nan if seconds is None else seconds)


def fmt_ms(seconds: float) -> str:
    """Seconds as a readable millisecond figure."""
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:,.1f}"


# --- the platform under test ------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


class Platform:
    """A private platform: its own TP_HOME, ports and redis-server; `stop()` undoes all of it."""

    def __init__(self, *, keep_home: bool, up_timeout_s: float) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="tp-bench-"))
        self.keep_home = keep_home
        self.up_timeout_s = up_timeout_s
        self.api_port = free_port()
        self.flower_port = free_port()
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        # Nothing of the caller's TP_* configuration (database, Redis, token) may leak in.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
        self.env.update(
            TP_HOME=str(self.home),
            TP_PORT=str(self.api_port),
            TP_FLOWER_PORT=str(self.flower_port),
            TP_REDIS_URL=self.redis_url,
        )
        self._redis: subprocess.Popen[bytes] | None = None
        self._up_called = False
        self.up_s = math.nan
        self.down_s = math.nan
        self.problems: list[str] = []

    def _tp(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "training_platform", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """Start redis-server, then `tp up`; raise RuntimeError with the logs if it fails."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        redis_dir = self.home / "bench-redis"
        redis_dir.mkdir()
        self._redis = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.redis_port),
                "--dir",
                str(redis_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                if client.ping():
                    break
            if time.monotonic() > deadline or self._redis.poll() is not None:
                raise RuntimeError(f"the private redis-server did not answer on {self.redis_url}")
            time.sleep(0.1)
        client.close()
        started = time.perf_counter()
        self._up_called = True
        done = self._tp("up", "--timeout", str(self.up_timeout_s), timeout=self.up_timeout_s + 300)
        self.up_s = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(
                f"`tp up` exited {done.returncode}:\n{_tail(done.stdout)}\n{_tail(done.stderr)}"
            )

    @property
    def token(self) -> str:
        """The admin token `tp up` wrote."""
        return (self.home / "admin-token").read_text().strip()

    def stop(self) -> None:
        """`tp down --jobs`, then whatever survived it, then redis-server and TP_HOME."""
        if self._up_called:
            started = time.perf_counter()
            try:
                done = self._tp("down", "--jobs", timeout=180)
                if done.returncode != 0:
                    self.problems.append(
                        f"`tp down --jobs` exited {done.returncode}: {_tail(done.stderr, 5)}"
                    )
            except subprocess.TimeoutExpired:
                self.problems.append("`tp down --jobs` did not finish within 180 s")
            self.down_s = time.perf_counter() - started
            self._kill_recorded_services()
        if self._redis is not None:
            self._redis.terminate()
            try:
                self._redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
                self._redis.wait(timeout=10)
        if self.keep_home:
            console.print(f"TP_HOME kept at {self.home}")
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    def _kill_recorded_services(self) -> None:
        """Kill the process groups of services `tp up` recorded and `tp down` left alive."""
        state_dir = self.home / "run"
        for state_file in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
            try:
                state = json.loads(state_file.read_text())
                process = psutil.Process(int(state["pid"]))
                if abs(process.create_time() - float(state["create_time"])) >= 1.0:
                    continue  # the pid was reused by something we did not start
            except (OSError, ValueError, KeyError, psutil.Error):
                continue
            self.problems.append(f"{state_file.stem} survived `tp down`; killed its group")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


# --- 1. job dispatch latency ------------------------------------------------------------------


def parse_time(value: str | None) -> float | None:
    """An API timestamp as Unix seconds."""
    return None if value is None else datetime.fromisoformat(value).timestamp()


@dataclass
class JobSample:
    """Timings of one job, in seconds from just before its POST (wall clock)."""

    job_id: int
    status: str
    post_rtt: float
    to_queued_event: float | None = None
    to_starting_event: float | None = None
    to_started_at: float | None = None
    to_trainer_exists: float | None = None
    to_running_seen: float | None = None
    to_first_log_seen: float | None = None
    to_finished_at: float | None = None
    to_process_exit: float | None = None
    to_terminal_seen: float | None = None
    to_slot_free: float | None = None
    error: str | None = None

    def phase(self, start: float | None, end: float | None) -> float | None:
        """end - start when both are known."""
        return None if start is None or end is None else end - start


def run_one_job(
    client: httpx.Client, broker: RedisBrokerView, index: int, poll_s: float, timeout_s: float
) -> JobSample:
    """Submit one tiny job, follow it to its end, and time every step we can see.

    Returns only once the training slot is free again (the job's start message acknowledged),
    so that the next job's latency is not that of waiting for this one's worker.
    """
    spec = {
        "name": f"bench-dispatch-{index}",
        "algorithm": "sft",
        "model": MODEL,
        "dataset": DATASET,
        "hyperparameters": {"max_steps": 1},
    }
    t0 = time.time()
    response = client.post(f"{API}/jobs", json=spec)
    post_rtt = time.time() - t0
    response.raise_for_status()
    job = response.json()
    sample = JobSample(job_id=int(job["id"]), status=job["status"], post_rtt=post_rtt)
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"{API}/jobs/{sample.job_id}").raise_for_status().json()
        seen = time.time() - t0
        sample.status = job["status"]
        if sample.status == "running" and sample.to_running_seen is None:
            sample.to_running_seen = seen
        if sample.to_first_log_seen is None and sample.status not in ("queued", "starting"):
            logs = client.get(
                f"{API}/jobs/{sample.job_id}/logs", params={"limit": 4096}
            ).raise_for_status()
            if logs.json()["text"]:
                sample.to_first_log_seen = time.time() - t0
        if sample.status in TERMINAL:
            sample.to_terminal_seen = seen
            break
        if time.monotonic() > deadline:
            client.post(f"{API}/jobs/{sample.job_id}/cancel")
            sample.error = f"not finished after {timeout_s:.0f} s; cancelled"
            break
        time.sleep(poll_s)
    sample.to_slot_free = _wait_slot_free(broker, sample.job_id, t0, poll_s, timeout_s)
    started_at = parse_time(job["started_at"])
    finished_at = parse_time(job["finished_at"])
    sample.to_started_at = None if started_at is None else started_at - t0
    sample.to_finished_at = None if finished_at is None else finished_at - t0
    if sample.status == "failed":
        sample.error = (job.get("error") or "failed")[-300:]
    sample.to_process_exit = _process_exit(client, sample.job_id, t0)
    sample.to_trainer_exists = _trainer_spawned(client, sample.job_id, t0)
    events = client.get(f"{API}/jobs/{sample.job_id}/events").raise_for_status().json()
    for event in events:
        at = parse_time(event["created_at"])
        if at is None:
            continue
        if event["to_status"] == "queued" and sample.to_queued_event is None:
            sample.to_queued_event = at - t0
        elif event["to_status"] == "starting" and sample.to_starting_event is None:
            sample.to_starting_event = at - t0
    return sample


def _wait_slot_free(
    broker: RedisBrokerView, job_id: int, t0: float, poll_s: float, timeout_s: float
) -> float | None:
    """Wait until no start message of the job is queued or unacked; seconds after t0.

    The training task is acks_late and holds its worker's only slot until it returns, so the
    acknowledgement is the moment the next start message can be taken.
    """
    prefix = f"job-{job_id}-"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = broker.pending_task_ids((TRAINING_QUEUE,))
        if pending is not None and not any(task.startswith(prefix) for task in pending):
            return time.time() - t0
        time.sleep(poll_s)
    return None


def _process_exit(client: httpx.Client, job_id: int, t0: float) -> float | None:
    """When the launcher saw the trainer exit (its exit.json), seconds after t0.

    The run directory is on this host (our own TP_HOME), so this is read from disk: the API
    has no field for it, and the job's finished_at is when a watcher noticed the exit.
    """
    run_dir = client.get(f"{API}/jobs/{job_id}/plan").raise_for_status().json()["run_dir"]
    try:
        data = json.loads((Path(run_dir) / "exit.json").read_text())
        finished = parse_time(data.get("finished_at"))
    except (OSError, ValueError):
        return None
    return None if finished is None else finished - t0


def _trainer_spawned(client: httpx.Client, job_id: int, t0: float) -> float | None:
    """When the trainer process existed: the launcher writes child.pid right after starting
    it. Seconds after t0."""
    run_dir = client.get(f"{API}/jobs/{job_id}/plan").raise_for_status().json()["run_dir"]
    try:
        return (Path(run_dir) / "child.pid").stat().st_mtime - t0
    except OSError:
        return None


@dataclass
class DispatchResult:
    """All job samples plus their summaries."""

    samples: list[JobSample]
    warmup: list[JobSample]
    figures: dict[str, Summary] = field(default_factory=dict)

    def summarise(self) -> None:
        """Fill `figures` from the (non-warm-up) samples."""

        def collect(values: Iterator[float | None]) -> Summary:
            return Summary.of([v for v in values if v is not None])

        s = self.samples
        self.figures = {
            "post_rtt": collect(x.post_rtt for x in s),
            "submit_to_started_at": collect(x.to_started_at for x in s),
            "submit_to_trainer_exists": collect(x.to_trainer_exists for x in s),
            "submit_to_running_seen": collect(x.to_running_seen for x in s),
            "submit_to_first_log_seen": collect(x.to_first_log_seen for x in s),
            "submit_to_queued_event": collect(x.to_queued_event for x in s),
            "queued_to_starting": collect(
                x.phase(x.to_queued_event, x.to_starting_event) for x in s
            ),
            "starting_to_running": collect(
                x.phase(x.to_starting_event, x.to_started_at) for x in s
            ),
            "running_to_exit": collect(x.phase(x.to_started_at, x.to_process_exit) for x in s),
            "exit_to_finished": collect(x.phase(x.to_process_exit, x.to_finished_at) for x in s),
            "finished_to_terminal_seen": collect(
                x.phase(x.to_finished_at, x.to_terminal_seen) for x in s
            ),
            "submit_to_terminal_seen": collect(x.to_terminal_seen for x in s),
            "terminal_seen_to_slot_free": collect(
                x.phase(x.to_terminal_seen, x.to_slot_free) for x in s
            ),
        }


def bench_dispatch(
    client: httpx.Client, redis_url: str, jobs: int, warmup: int, poll_s: float, timeout_s: float
) -> DispatchResult:
    """Run warm-up jobs, then `jobs` measured ones, strictly one after another."""
    broker = RedisBrokerView(redis_url)
    warm = [run_one_job(client, broker, -1 - i, poll_s, timeout_s) for i in range(warmup)]
    samples = []
    for index in range(jobs):
        sample = run_one_job(client, broker, index, poll_s, timeout_s)
        samples.append(sample)
        console.print(
            f"  job {sample.job_id:>3} {sample.status:<9} ms after POST:"
            f" spawned {_ms_or_dash(sample.to_started_at)},"
            f" running {_ms_or_dash(sample.to_running_seen)},"
            f" log {_ms_or_dash(sample.to_first_log_seen)},"
            f" done {_ms_or_dash(sample.to_terminal_seen)},"
            f" slot {_ms_or_dash(sample.to_slot_free)}"
        )
    result = DispatchResult(samples=samples, warmup=warm)
    result.summarise()
    return result


# --- 2. bare Celery round trip ----------------------------------------------------------------


@dataclass
class PingResult:
    """Round trips of tp.system.ping, split at the moment the task ran."""

    round_trip: Summary
    send_to_run: Summary
    run_to_seen: Summary
    lost: int


def bench_ping(redis_url: str, home: Path, pings: int, warmup: int) -> PingResult:
    """Send pings one at a time to the default queue and BLPOP each one's record."""
    from celery import Celery

    from training_platform.core.settings import load_settings
    from training_platform.worker.config import celery_config

    sender = Celery("tp-bench")
    sender.conf.update(celery_config(load_settings(redis_url=redis_url, home=home)))
    client = redis.Redis.from_url(redis_url)
    channel = f"bench-{uuid.uuid4().hex}"
    key = PING_LIST_PREFIX + channel
    round_trips: list[float] = []
    send_to_run: list[float] = []
    run_to_seen: list[float] = []
    lost = 0
    try:
        for index in range(warmup + pings):
            label = str(index)
            sent_wall = time.time()
            started = time.perf_counter()
            sender.send_task(
                PING_TASK, args=[channel, label], queue=PING_QUEUE, routing_key=PING_QUEUE
            )
            popped = client.blpop([key], timeout=15)
            elapsed = time.perf_counter() - started
            seen_wall = time.time()
            if popped is None:
                lost += 1
                continue
            raw = popped[1]
            got_label, ran_at = (raw.decode() if isinstance(raw, bytes) else raw).split()[:2]
            if got_label != label:
                lost += 1  # a late earlier ping; not comparable
                continue
            if index < warmup:
                continue
            round_trips.append(elapsed)
            send_to_run.append(float(ran_at) - sent_wall)
            run_to_seen.append(seen_wall - float(ran_at))
    finally:
        client.delete(key)
        client.close()
        sender.close()
    return PingResult(
        Summary.of(round_trips), Summary.of(send_to_run), Summary.of(run_to_seen), lost
    )


def bench_bare_spawn(redis_url: str, spawns: int, warmup: int) -> Summary:
    """Send benchmarks/bare_spawn.py's task one at a time: send -> `python -c pass` exists."""
    from celery import Celery

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
        start_new_session=True,
    )
    sender = Celery("bench-sender", broker=redis_url)
    client = redis.Redis.from_url(redis_url)
    key = f"bench:bare-spawn:{uuid.uuid4().hex}"
    samples: list[float] = []
    try:
        for index in range(warmup + spawns):
            sent = time.time()
            sender.send_task("bench.bare_spawn", args=[key], queue="bench-bare-spawn")
            popped = client.blpop([key], timeout=60)
            if popped is None:
                raise RuntimeError("the bare spawn worker did not answer")
            if index >= warmup:
                samples.append(float(popped[1]) - sent)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    return Summary.of(samples)


# --- 3. API read throughput -------------------------------------------------------------------


@dataclass
class LoadResult:
    """One endpoint under concurrent load."""

    name: str
    requests: int
    errors: int
    duration_s: float
    latency: Summary
    error_samples: list[str]

    @property
    def rps(self) -> float:
        """Completed requests (errors included) per second."""
        return self.requests / self.duration_s if self.duration_s > 0 else math.nan


async def _load(
    base_url: str, token: str, path: str, clients: int, total: int, name: str
) -> LoadResult:
    """`total` GETs of `path` spread over `clients` concurrent clients.

    Each client is an AsyncClient of its own with one keep-alive connection: one shared client
    with a 50-connection pool costs httpx so much CPU per request that on a small machine the
    load generator, not the API, becomes the bottleneck.
    """
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors: list[str] = []
    remaining = total

    async def one_client(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                response = await client.get(path)
                ok = response.status_code == 200
                detail = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                ok, detail = False, type(error).__name__
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors.append(detail)

    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=base_url,
                    headers=headers,
                    timeout=60.0,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                )
            )
            for _ in range(clients)
        ]
        # Open the connections and warm the path before the clock starts.
        await asyncio.gather(*(client.get(path) for client in pool))
        started = time.perf_counter()
        await asyncio.gather(*(one_client(client) for client in pool))
        duration = time.perf_counter() - started
    return LoadResult(
        name=name,
        requests=len(latencies),
        errors=len(errors),
        duration_s=duration,
        latency=Summary.of(latencies),
        error_samples=sorted(set(errors))[:5],
    )


def bench_api(base_url: str, token: str, job_id: int, clients: int, total: int) -> list[LoadResult]:
    """Load the list and the detail endpoint, one after the other."""
    return [
        asyncio.run(_load(base_url, token, f"{API}/jobs", clients, total, "GET /api/v1/jobs")),
        asyncio.run(
            _load(base_url, token, f"{API}/jobs/{job_id}", clients, total, "GET /api/v1/jobs/{id}")
        ),
    ]


# --- report -----------------------------------------------------------------------------------

DISPATCH_ROWS = (
    ("submit_to_trainer_exists", "submit -> trainer process exists (child.pid)  [target]"),
    ("submit_to_started_at", "submit -> launcher spawned (started_at)"),
    ("submit_to_running_seen", "submit -> RUNNING seen by polling"),
    ("submit_to_first_log_seen", "submit -> first log line via /logs"),
    ("post_rtt", "POST /jobs round trip"),
    ("submit_to_queued_event", "  phase: submit -> queued event (stored)"),
    ("queued_to_starting", "  phase: queued -> starting (broker + worker pick-up)"),
    ("starting_to_running", "  phase: starting -> running (plan + spawn)"),
    ("running_to_exit", "  phase: running -> process exit (exit.json, training life)"),
    ("exit_to_finished", "  phase: process exit -> job finished (exit noticed)"),
    ("finished_to_terminal_seen", "  phase: finished -> terminal seen by polling"),
    ("submit_to_terminal_seen", "submit -> terminal seen (whole job)"),
    ("terminal_seen_to_slot_free", "terminal seen -> training slot free (message acked)"),
)


def _summary_table(title: str, rows: Sequence[tuple[str, Summary]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    for column in ("n", "median ms", "p95 ms", "min ms", "max ms"):
        table.add_column(column, justify="right")
    for label, summary in rows:
        table.add_row(
            label,
            str(summary.n),
            fmt_ms(summary.median),
            fmt_ms(summary.p95),
            fmt_ms(summary.min),
            fmt_ms(summary.max),
        )
    return table


def report(
    args: argparse.Namespace,
    platform: Platform,
    dispatch: DispatchResult | None,
    ping: PingResult | None,
    loads: list[LoadResult],
    wall_s: float,
    bare: Summary | None = None,
) -> dict[str, Any]:
    """Print the tables and return the machine-readable result."""
    result: dict[str, Any] = {
        "benchmark": "dispatch",
        "params": {
            "jobs": args.jobs,
            "warmup_jobs": args.warmup_jobs,
            "pings": args.pings,
            "clients": args.clients,
            "requests": args.requests,
            "poll_ms": args.poll_ms,
        },
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "platform_up_s": round(platform.up_s, 2),
    }
    console.print()
    if dispatch is not None:
        figures = dispatch.figures
        console.print(
            _summary_table(
                f"1. Job dispatch latency ({len(dispatch.samples)} jobs, one at a time, "
                f"{MODEL}/{DATASET}, max_steps=1, poll {args.poll_ms:g} ms)",
                [(label, figures[key]) for key, label in DISPATCH_ROWS],
            )
        )
        failed = [s for s in dispatch.samples if s.status != "succeeded"]
        for sample in failed:
            console.print(f"  [red]job {sample.job_id} {sample.status}[/red]: {sample.error}")
        result["dispatch"] = {key: figures[key].as_ms() for key, _ in DISPATCH_ROWS}
        result["dispatch"]["not_succeeded"] = len(failed)
        result["dispatch"]["jobs"] = [
            {
                "id": s.job_id,
                "status": s.status,
                "started_at_ms": None if s.to_started_at is None else round(s.to_started_at * 1e3),
            }
            for s in dispatch.samples
        ]
    if ping is not None:
        console.print(
            _summary_table(
                f"2. Bare Celery round trip ({PING_TASK} -> '{PING_QUEUE}' queue -> BLPOP)",
                [
                    ("send -> BLPOP returns (round trip)", ping.round_trip),
                    ("  send -> task ran", ping.send_to_run),
                    ("  task ran -> BLPOP returns", ping.run_to_seen),
                ],
            )
        )
        if ping.lost:
            console.print(f"  [red]{ping.lost} ping(s) not seen in time or out of order[/red]")
        result["ping"] = {
            "round_trip": ping.round_trip.as_ms(),
            "send_to_run": ping.send_to_run.as_ms(),
            "lost": ping.lost,
        }
    if dispatch is not None and bare is not None:
        ours = dispatch.figures["submit_to_trainer_exists"]
        ratio = ours.median / bare.median
        result["bare_spawn"] = bare.as_ms()
        result["ratio_trainer_exists_p50_to_bare_spawn_p50"] = round(ratio, 1)
        console.print(
            f"submit -> trainer process p50 {fmt_ms(ours.median)} ms; bare Celery task "
            f"spawning `python -c pass` p50 {fmt_ms(bare.median)} ms; ratio "
            f"[bold]{ratio:,.1f}x[/bold] (target <= 5)"
        )
    if dispatch is not None and ping is not None:
        ratio = dispatch.figures["submit_to_started_at"].median / ping.round_trip.median
        result["ratio_dispatch_median_to_ping_median"] = round(ratio, 1)
        console.print(
            f"ratio job-dispatch median / ping median: [bold]{ratio:,.1f}x[/bold] "
            f"({fmt_ms(dispatch.figures['submit_to_started_at'].median)} ms vs "
            f"{fmt_ms(ping.round_trip.median)} ms)"
        )
        console.print()
    if loads:
        table = Table(
            title=f"3. API read throughput ({args.clients} concurrent clients, "
            f"{args.requests} requests per endpoint, admin token)",
            title_justify="left",
        )
        table.add_column("endpoint")
        for column in ("requests", "errors", "rps", "p50 ms", "p95 ms", "max ms"):
            table.add_column(column, justify="right")
        result["api"] = {}
        for load in loads:
            table.add_row(
                load.name,
                str(load.requests),
                str(load.errors),
                f"{load.rps:,.0f}",
                fmt_ms(load.latency.median),
                fmt_ms(load.latency.p95),
                fmt_ms(load.latency.max),
            )
            result["api"][load.name] = {
                "requests": load.requests,
                "errors": load.errors,
                "rps": round(load.rps, 1),
                "p50_ms": load.latency.as_ms()["median_ms"],
                "p95_ms": load.latency.as_ms()["p95_ms"],
                "error_samples": load.error_samples,
            }
        console.print(table)
    console.print(
        f"platform up {platform.up_s:.1f} s, down {platform.down_s:.1f} s, "
        f"benchmark wall time {wall_s:.1f} s"
    )
    for problem in platform.problems:
        console.print(f"[yellow]warning:[/yellow] {problem}")
    result["platform_down_s"] = None if math.isnan(platform.down_s) else round(platform.down_s, 2)
    result["wall_s"] = round(wall_s, 1)
    result["problems"] = platform.problems
    return result


# --- entry point ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="measured jobs (default 10)")
    parser.add_argument("--warmup-jobs", type=int, default=1, help="unmeasured first jobs")
    parser.add_argument("--pings", type=int, default=200, help="measured pings (default 200)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent API clients")
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per endpoint (default 2000)"
    )
    parser.add_argument("--poll-ms", type=float, default=50, help="job status poll interval")
    parser.add_argument("--job-timeout", type=float, default=180, help="seconds per job at most")
    parser.add_argument("--up-timeout", type=float, default=180, help="seconds for `tp up`")
    parser.add_argument("--keep-home", action="store_true", help="keep TP_HOME for inspection")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.pings < 1 or args.clients < 1 or args.requests < args.clients:
        parser.error("--jobs, --pings, --clients must be >= 1 and --requests >= --clients")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into an exception so that the platform is still stopped.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the platform, run the three benchmarks, stop it, report."""
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    wall_started = time.perf_counter()
    platform = Platform(keep_home=args.keep_home, up_timeout_s=args.up_timeout)
    dispatch: DispatchResult | None = None
    ping: PingResult | None = None
    bare: Summary | None = None
    loads: list[LoadResult] = []
    code = 0
    try:
        console.print(f"starting a private platform in {platform.home} ...")
        platform.start()
        console.print(f"platform up in {platform.up_s:.1f} s at {platform.api_url}")
        headers = {"Authorization": f"Bearer {platform.token}"}
        with httpx.Client(base_url=platform.api_url, headers=headers, timeout=30) as client:
            console.print(f"1/3 dispatching {args.warmup_jobs}+{args.jobs} jobs ...")
            dispatch = bench_dispatch(
                client,
                platform.redis_url,
                args.jobs,
                args.warmup_jobs,
                args.poll_ms / 1000,
                args.job_timeout,
            )
        console.print(f"2/3 {args.pings} pings ...")
        ping = bench_ping(platform.redis_url, platform.home, args.pings, warmup=5)
        console.print(f"2b/3 {args.jobs * 2} bare Celery spawns of `python -c pass` ...")
        bare = bench_bare_spawn(platform.redis_url, args.jobs * 2, warmup=3)
        console.print(f"3/3 API load, {args.clients} clients ...")
        loads = bench_api(
            platform.api_url,
            platform.token,
            dispatch.samples[-1].job_id,
            args.clients,
            args.requests,
        )
    except (Exception, KeyboardInterrupt, SystemExit) as error:
        # SystemExit comes from _terminate (SIGTERM/SIGHUP); its code is 128 + the signal.
        console.print(f"[red]benchmark aborted:[/red] {type(error).__name__}: {error}")
        code = error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # let the shutdown finish
        console.print("stopping the platform ...")
        platform.stop()
    result = report(args, platform, dispatch, ping, loads, time.perf_counter() - wall_started, bare)
    print("RESULT " + json.dumps(result, separators=(",", ":")))
    return code


if __name__ == "__main__":
    sys.exit(main())
