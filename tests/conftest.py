"""Shared fixtures: a private Redis, throwaway PostgreSQL databases, TP_HOMEs with the tiny model.

Nothing here touches data the suite did not create: Redis is a redis-server of our own on a
free port, PostgreSQL databases are created per test and dropped after it, and every
TP_HOME is a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SESSION_DIR = Path(tempfile.mkdtemp(prefix="tp-tests-"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


REDIS_PORT = free_port()
REDIS_BASE = f"redis://127.0.0.1:{REDIS_PORT}"

# Settings are read at import time by the Celery app; pin them before any test imports it,
# and forget whatever TP_* variables the calling shell had.
for _name in [n for n in os.environ if n.startswith("TP_") and not n.startswith("TP_TEST_")]:
    del os.environ[_name]
os.environ["TP_HOME"] = str(SESSION_DIR / "home-default")
os.environ["TP_REDIS_URL"] = f"{REDIS_BASE}/0"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

PG_ADMIN_URL = os.environ.get("TP_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
_redis_process: subprocess.Popen[bytes] | None = None


def start_redis_server(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """A redis-server on loopback that keeps nothing on disk; returns once it answers."""
    import redis

    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(f"redis://127.0.0.1:{port}/0").ping()
            return process
        except redis.RedisError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"a test redis-server did not start on port {port}")


def pytest_configure(config: pytest.Config) -> None:
    global _redis_process
    if hasattr(config, "workerinput"):
        return
    _redis_process = start_redis_server(REDIS_PORT, SESSION_DIR)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _redis_process is not None:
        _redis_process.terminate()
        _redis_process.wait(timeout=10)
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Database 0 of the private Redis, emptied before the test (the in-process Celery app's)."""
    import redis

    client = redis.Redis.from_url(f"{REDIS_BASE}/0")
    client.flushdb()
    yield f"{REDIS_BASE}/0"
    client.close()


_redis_db_counter = iter(range(1, 16))


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the module's own: it may be flushed whole or restarted."""
    process = start_redis_server(port := free_port(), tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def isolated_redis_url() -> str:
    """A database of the private Redis no other module uses (for whole-platform tests)."""
    import redis

    url = f"{REDIS_BASE}/{next(_redis_db_counter)}"
    redis.Redis.from_url(url).flushdb()
    return url


# --- PostgreSQL ----------------------------------------------------------------------------


def create_pg_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    import psycopg

    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    """Drop a database made by create_pg_database, closing its connections."""
    import psycopg

    from training_platform.core.db import engine_for

    for candidate in (url, url.replace("postgresql://", "postgresql+psycopg://")):
        engine_for(candidate).dispose()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each persistence test runs twice: on SQLite and on a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'platform.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


# --- TP_HOME with the tiny model -----------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The bundled tiny model, built once per session."""
    from training_platform.assets import build_tiny_model

    return build_tiny_model(SESSION_DIR / "tiny-qwen2")


def install_tiny_model(home: Path, source: Path) -> None:
    """Put the prebuilt tiny model where bootstrap looks for it."""
    target = home / "models" / "builtin" / "tiny-qwen2"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    """Settings on a temporary TP_HOME, on SQLite and on PostgreSQL in turn."""
    from training_platform.core.settings import load_settings

    return load_settings(home=tmp_path / "home", database_url=database_url, redis_url=redis_url)


@pytest.fixture
def sqlite_settings(tmp_path: Path, redis_url: str):  # type: ignore[no-untyped-def]
    """Settings on a temporary TP_HOME with the default SQLite database."""
    from training_platform.core.settings import load_settings

    return load_settings(home=tmp_path / "home", redis_url=redis_url)


def _bootstrapped(settings, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from training_platform.bootstrap import bootstrap

    install_tiny_model(settings.home, tiny_model_dir)
    return bootstrap(settings)


@pytest.fixture
def engine(settings, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """A migrated database with the admin token and the bundled catalog."""
    engine = _bootstrapped(settings, tiny_model_dir)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_settings, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """Like `engine`, on SQLite only."""
    engine = _bootstrapped(sqlite_settings, tiny_model_dir)
    yield engine
    engine.dispose()


@pytest.fixture
def api(settings, engine):  # type: ignore[no-untyped-def]
    """An HTTP client on the real app (real Celery dispatcher to the private Redis), with token."""
    from fastapi.testclient import TestClient

    from training_platform.api.app import create_app

    token = settings.admin_token_file.read_text().strip()
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


# --- the whole platform, started with `tp up` ----------------------------------------------


class Platform:
    """A platform started by `tp up` on a private TP_HOME, ports and Redis database."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.base_url = f"http://127.0.0.1:{env['TP_PORT']}"

    def tp(
        self, *args: str, timeout: float = 300, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the tp CLI in a subprocess against this platform."""
        import sys

        done = subprocess.run(
            [sys.executable, "-m", "training_platform", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"tp {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    @property
    def token(self) -> str:
        return (self.home / "admin-token").read_text().strip()

    def client(self):  # type: ignore[no-untyped-def]
        """An httpx client on the API with the admin token."""
        import httpx

        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def wait_status(self, job_id: int, statuses: set[str], timeout: float = 180) -> dict:  # type: ignore[type-arg]
        """Poll a job until it reaches one of `statuses`."""
        with self.client() as client:
            deadline = time.monotonic() + timeout
            job: dict = {}  # type: ignore[type-arg]
            while time.monotonic() < deadline:
                job = client.get(f"/api/v1/jobs/{job_id}").json()
                if job["status"] in statuses:
                    return job
                time.sleep(0.5)
        raise AssertionError(f"job {job_id} stayed {job.get('status')}, wanted {statuses}")

    def kill_service(self, name: str) -> None:
        """kill -9 a service's whole process group, as a crash would; returns when it is gone."""
        import json
        import signal

        import psutil

        state = json.loads((self.home / "run" / f"{name}.json").read_text())
        group = int(state["pid"])
        os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = []
            for process in psutil.process_iter(["pid", "status"]):
                try:
                    if (
                        process.info["status"] != psutil.STATUS_ZOMBIE
                        and os.getpgid(process.pid) == group
                    ):
                        alive.append(process.pid)
                except (ProcessLookupError, psutil.Error):
                    continue
            if not alive:
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} survived SIGKILL")

    def processes(self) -> list[int]:
        """Live processes that belong to this platform: its services and trainings."""
        import psutil

        found = []
        marker = str(self.home)
        for process in psutil.process_iter(["pid", "cmdline", "cwd", "environ", "status"]):
            try:
                if process.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                cmdline = " ".join(process.info["cmdline"] or [])
                environ = process.info["environ"] or {}
                if (
                    marker in cmdline
                    or (process.info["cwd"] or "").startswith(marker)
                    or environ.get("TP_HOME") == marker
                ):
                    found.append(process.pid)
            except psutil.Error:
                continue
        return found


def start_platform(
    tmp: Path, tiny_model_dir: Path, redis_db: int, redis_url: str | None = None, **extra: str
) -> Platform:
    """`tp up` on a fresh TP_HOME (on a database of the test Redis, or on `redis_url`)."""
    import redis

    home = tmp / "home"
    install_tiny_model(home, tiny_model_dir)
    url = redis_url or f"{REDIS_BASE}/{redis_db}"
    redis.Redis.from_url(url).flushdb()
    env = dict(os.environ)
    env.update(
        TP_HOME=str(home),
        TP_REDIS_URL=url,
        TP_PORT=str(free_port()),
        TP_FLOWER_PORT=str(free_port()),
        TP_SUPERVISOR_INTERVAL_S="1",
        **extra,
    )
    platform = Platform(home, env)
    platform.tp("up", "--timeout", "120", check=True)
    return platform


@pytest.fixture(scope="session")
def platform(tiny_model_dir: Path) -> Iterator[Platform]:
    """The whole platform, shared by the end-to-end and CLI tests, stopped at the end."""
    tmp = Path(tempfile.mkdtemp(prefix="platform-", dir=SESSION_DIR))
    # Two simulated GPUs, so that GPU jobs (verl plans) can be submitted; CPU jobs use the CPU
    # training slot as before.
    started = start_platform(tmp, tiny_model_dir, redis_db=15, TP_SIMULATED_GPUS="2")
    yield started
    started.tp("down", "--jobs")


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database, dropped after the test."""
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def start_platform_on(tmp_path: Path, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """Start another platform (own TP_HOME and Redis db); stopped after the test."""
    started: list[Platform] = []

    def start(redis_db: int, **extra: str) -> Platform:
        platform = start_platform(tmp_path, tiny_model_dir, redis_db, **extra)
        started.append(platform)
        return platform

    yield start
    for platform in started:
        platform.tp("down", "--jobs")
        deadline = time.monotonic() + 15
        while platform.processes() and time.monotonic() < deadline:
            time.sleep(0.5)


@pytest.fixture(scope="module")
def start_module_platform(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Start platforms shared by one module's tests (own TP_HOME, Redis db); stopped after it."""
    started: list[Platform] = []

    def start(redis_db: int, redis_url: str | None = None, **extra: str) -> Platform:
        platform = start_platform(
            tmp_path_factory.mktemp("platform"), tiny_model_dir, redis_db, redis_url, **extra
        )
        started.append(platform)
        return platform

    yield start
    for platform in started:
        platform.tp("down", "--jobs")
        deadline = time.monotonic() + 15
        while platform.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
