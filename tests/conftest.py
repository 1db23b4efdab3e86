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
# Others may pass (not list) it: runs, as the run user, read the tiny model built in it.
SESSION_DIR.chmod(0o711)


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
# This worker's warm servers (runners/warm.py), shared by its platforms, stopped at the end.
os.environ["TP_WARM_DIR"] = str(SESSION_DIR / "warm")
# Runs execute as this throwaway user (core/confine.py) where the suite runs as root: the
# platform creates it on first use, the suite removes it at its end. Named once by the
# controller; xdist's workers inherit the name.
os.environ.setdefault("TP_TEST_RUN_AS", f"tpr-{uuid.uuid4().hex[:8]}")
os.environ["TP_RUN_AS"] = os.environ["TP_TEST_RUN_AS"]

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


def _import_the_api_contexts() -> None:
    """Import every API context's routes before any test runs.

    pytest 9 walks every logger (logging's loggerDict) when it starts capturing a test phase's
    logs; an in-process API imports its contexts' routes in a warm-up thread after it starts
    (api/contexts.py), and each import that makes a logger then races that walk ("dictionary
    changed size during iteration", seen once in a full run). Imported here, the warm-up
    finds them loaded and makes no logger.
    """
    import importlib

    from training_platform.api.contexts import CONTEXTS

    for spec in CONTEXTS:
        importlib.import_module(spec.module)


def _runs_tests(config: pytest.Config) -> bool:
    """False in pytest-xdist's controller: its workers run the tests, each with its own Redis,
    session directory and platforms, so that parallel workers never share state."""
    return hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)


def pytest_configure(config: pytest.Config) -> None:
    global _redis_process
    if _runs_tests(config):
        _redis_process = start_redis_server(REDIS_PORT, SESSION_DIR)
        _import_the_api_contexts()
    elif "TP_TEST_TINY_MODEL" not in os.environ:
        # xdist's controller builds the tiny model once for all its workers (they inherit the
        # variable): each would otherwise build the same one.
        import sys

        path = SESSION_DIR / "tiny-qwen2"
        subprocess.run(
            [sys.executable, "-m", "training_platform.assets", "build-model", str(path)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        os.environ["TP_TEST_TINY_MODEL"] = str(path)


# How `make test` spreads the suite over pytest-xdist workers (--dist loadgroup): each test
# file is one unit of work, so its module-wide platform or training runs once; the files that
# start platforms and train are put in chains, each run by one worker one file after the
# other. The chains come first (the longest work starts first), and are balanced by their
# measured durations in a full run (2026-12-05, 20.7 min on a slow hour: a 820 s, b 870,
# c 790, d 750 before it took the quick start's GRPO, 250 s, which as a file of its own
# started late and ended last). The other files follow, the longest first (HEAVY), and fill
# the workers that finish first.
CHAINS: dict[str, tuple[str, ...]] = {
    "chain-a": (
        "tests/e2e/test_platform.py",  # these three share the session's platform
        "tests/e2e/test_algorithms.py",
        "tests/e2e/test_evaluation.py",
        "tests/e2e/test_serving.py",
        "tests/e2e/test_surgery.py",
        "tests/e2e/test_datasets.py",
        "tests/cli/test_cli.py",
        "tests/e2e/test_make.py",
        "tests/e2e/test_postgres_platform.py",
        "tests/e2e/test_monitoring.py",
    ),
    "chain-b": (
        "tests/e2e/test_pipelines.py",
        "tests/e2e/test_durability.py",
        "tests/trainers/test_trl_train.py",
        "tests/trainers/test_verl_cpu_sft.py",
    ),
    "chain-c": (
        "tests/e2e/test_scheduling.py",
        "tests/e2e/test_dashboard.py",
        "tests/e2e/test_remote_hosts.py",
        "tests/runners/test_ray.py",
        "tests/trainers/test_evaluate.py",
        "tests/trainers/test_verl_run.py",
        "tests/trainers/test_verl_ext.py",
    ),
    "chain-d": (
        "tests/e2e/test_verl_rl.py",
        "tests/trainers/test_trl_rl.py",
        "tests/trainers/test_quick_start_rl.py",
    ),
}
_CHAIN_OF = {
    path: (name, index) for name, paths in CHAINS.items() for index, path in enumerate(paths)
}


# Measured seconds of the longest files outside the chains (2026-12-05): scheduled first.
HEAVY = {
    "tests/backends/test_verl_contract.py": 100,
    "tests/pipelines/test_engine.py": 60,
    "tests/jobs/test_supervisor.py": 45,
    "tests/core/test_db.py": 44,
    "tests/jobs/test_service.py": 42,
    "tests/frontend/test_frontend.py": 40,
    "tests/trainers/test_merge.py": 38,
    "tests/datasets/test_dedup.py": 33,
}


def _unit_of(path: str) -> tuple[int, str, int]:
    """Where a test file runs: (0, its chain, its place in it) or (1, the file itself, its
    order: the longest first)."""
    chain = _CHAIN_OF.get(path)
    return (0, chain[0], chain[1]) if chain else (1, path, -HEAVY.get(path, 0))


def pytest_xdist_make_scheduler(config: pytest.Config, log):  # type: ignore[no-untyped-def]
    """--dist loadgroup schedules whole files and chains (xdist's own grouping by the
    xdist_group mark rewrites node ids, which pytest 9 ignores)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    # In collection order (chains first, then the heaviest files), not xdist's default of the
    # units with the most tests first: that started chain-d (few tests, the longest) 820 s
    # into a run, which then ended 260 s after the other workers.
    config.option.loadscopereorder = False

    class ChainScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit_of(nodeid.split("::", 1)[0])[1]

    return ChainScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --dist loadgroup, the chains come first, each in its order (see CHAINS).

    Runs in each xdist worker, whose collection is what the controller schedules; there xdist
    sets option.loadgroup (and resets dist and numprocesses)."""
    if not getattr(config.option, "loadgroup", False):
        return
    root = Path(str(config.rootpath))
    missing = [path for path in _CHAIN_OF if not (root / path).is_file()]
    if missing:
        raise pytest.UsageError(f"CHAINS names files that do not exist: {missing}")

    def order(item: pytest.Item) -> tuple[int, int, str, int]:
        kind, unit, place = _unit_of(Path(str(item.path)).relative_to(root).as_posix())
        # chains by name then place; the other files by their weight, then path
        return (kind, place if kind else 0, unit, place if not kind else 0)

    items.sort(key=order)


_TIMELINE = os.environ.get("TP_TEST_TIMELINE")  # a file: each test's worker, start and end


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    """With TP_TEST_TIMELINE set, append "worker start end nodeid" per test (setup to
    teardown): where a whole run's time goes, worker by worker (balancing CHAINS and HEAVY)."""
    started = time.time()
    yield
    if _TIMELINE:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(_TIMELINE, "a") as timeline:
            timeline.write(f"{worker} {started:.1f} {time.time():.1f} {item.nodeid}\n")


def pytest_unconfigure(config: pytest.Config) -> None:
    from training_platform.runners import warm

    warm.stop_all(SESSION_DIR / "warm")
    if _redis_process is not None:
        _redis_process.terminate()
        _redis_process.wait(timeout=10)
    shutil.rmtree(SESSION_DIR, ignore_errors=True)
    if not hasattr(config, "workerinput"):  # the controller, or the only process
        _remove_run_user(os.environ["TP_TEST_RUN_AS"])


def _remove_run_user(name: str) -> None:
    """The suite's run user, its ACL entries on the directories it was let through, its Ray
    directory."""
    import pwd
    import sys

    from training_platform.core import confine

    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return  # no run needed it (not root, or no local run)
    python = Path(sys.executable)
    roots = [python, python.resolve(), Path(sys.base_prefix) / "lib", Path(__file__).parent]
    temporary = Path(tempfile.gettempdir()) / f"pytest-of-{pwd.getpwuid(os.getuid()).pw_name}"
    directories = {d for root in roots for d in [root, *root.parents] if d.is_dir()}
    directories |= {temporary, *temporary.glob("pytest-*")}
    for directory in sorted(directories):
        subprocess.run(
            [system_tool("setfacl"), "-x", f"u:{uid}", str(directory)],
            check=False,
            capture_output=True,
        )
    shutil.rmtree(confine.ray_tmpdir(uid), ignore_errors=True)
    subprocess.run([system_tool("userdel"), name], check=False, capture_output=True)


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


def create_pg_database(template: str | None = None) -> str:
    """A fresh PostgreSQL database, empty or a copy of `template`'s; returns its URL."""
    import psycopg

    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"{copy}')
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
    """Each persistence test runs twice: on SQLite and on a throwaway PostgreSQL database.

    Empty, unless the test asks for `engine`: then a copy of the database bootstrapped once
    per session (schema at head, admin token, bundled catalog), which is what `engine` gives.
    """
    bootstrapped = "engine" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "platform.db"
        if bootstrapped:
            shutil.copyfile(request.getfixturevalue("template_home") / "platform.db", path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("pg_template") if bootstrapped else None
    url = create_pg_database(template)
    try:
        yield url
    finally:
        drop_pg_database(url)


# --- TP_HOME with the tiny model -----------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The bundled tiny model, built once per session (once per run under pytest-xdist)."""
    from training_platform.assets import build_tiny_model

    return build_tiny_model(Path(os.environ.get("TP_TEST_TINY_MODEL", SESSION_DIR / "tiny-qwen2")))


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


@pytest.fixture(scope="session")
def template_home(tiny_model_dir: Path) -> Path:
    """A TP_HOME bootstrapped once per session (SQLite inside it), which tests get copies of:
    the same state `bootstrap` makes, without paying for it in every test."""
    from sqlalchemy import text

    from training_platform.bootstrap import bootstrap
    from training_platform.core.settings import load_settings

    home = SESSION_DIR / "template-home"
    install_tiny_model(home, tiny_model_dir)
    engine = bootstrap(load_settings(home=home, redis_url=f"{REDIS_BASE}/0"))
    with engine.connect() as connection:  # everything into the main file: it is copied alone
        connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    return home


@pytest.fixture(scope="session")
def pg_template(template_home: Path) -> Iterator[str]:
    """A PostgreSQL database bootstrapped once per session for `template_home` (its token)."""
    from training_platform.bootstrap import bootstrap
    from training_platform.core.settings import load_settings

    url = create_pg_database()
    settings = load_settings(home=template_home, database_url=url, redis_url=f"{REDIS_BASE}/0")
    bootstrap(settings).dispose()
    try:
        yield url
    finally:
        drop_pg_database(url)


def _from_template(settings, template_home: Path):  # type: ignore[no-untyped-def]
    """The engine of a TP_HOME copied from the template (the database was copied already when
    it lives outside TP_HOME)."""
    from training_platform.core.db import get_engine

    inside = settings.database_url is None
    shutil.copytree(
        template_home,
        settings.home,
        ignore=None if inside else shutil.ignore_patterns("platform.db*"),
        dirs_exist_ok=True,
    )
    return get_engine(settings)


@pytest.fixture
def engine(settings, template_home: Path):  # type: ignore[no-untyped-def]
    """A migrated database with the admin token and the bundled catalog."""
    engine = _from_template(settings, template_home)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_settings, template_home: Path):  # type: ignore[no-untyped-def]
    """Like `engine`, on SQLite only."""
    engine = _from_template(sqlite_settings, template_home)
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


# --- jobs on the in-memory runner (supervisor, ingestion and monitoring tests) -------------


def metrics_record(step: int, **values: float) -> bytes:
    """One metrics.jsonl line, as the trainers write it (NaN written as NaN)."""
    import json

    record = {"type": "metrics", "step": step, "time": "2026-11-27T00:00:00+00:00"}
    return (json.dumps({**record, "values": values}) + "\n").encode()


@pytest.fixture
def metrics_line():  # type: ignore[no-untyped-def]
    """One metrics.jsonl record, as the trainers write it (NaN written as NaN)."""
    return metrics_record


@pytest.fixture
def runner():  # type: ignore[no-untyped-def]
    """The in-memory runner: runs nothing, the test scripts what each run writes and does."""
    from training_platform.runners.memory import MemoryRunner

    return MemoryRunner()


@pytest.fixture
def running_job(engine, settings, runner):  # type: ignore[no-untyped-def]
    """Submit, prepare and start a job on the in-memory runner; returns (job, run dir)."""
    from sqlmodel import Session

    from training_platform.jobs import preparation, service
    from training_platform.jobs.models import Job
    from training_platform.jobs.schemas import JobCreate
    from training_platform.jobs.state import JobStatus, transition

    def start(**overrides):  # type: ignore[no-untyped-def]
        body = {
            "name": "watched",
            "algorithm": "sft",
            "model": "tiny-qwen2",
            "dataset": "tiny-sft",
            "hyperparameters": {"max_steps": 50},
            **overrides,
        }
        with Session(engine, expire_on_commit=False) as session:
            job, _ = service.submit(
                session=session, request=JobCreate.model_validate(body), actor="test"
            )
            session.commit()
        preparation.prepare_job(engine, settings, job_id=job.id, attempt=1, actor="test")
        with Session(engine, expire_on_commit=False) as session:
            job = session.get(Job, job.id)
            transition(
                session,
                job,
                JobStatus.STARTING,
                actor="worker",
                reason="test",
                values={"node": settings.node_name, "runner": runner.kind},
            )
            run_dir = str(service.run_dir_for(settings, job))
            plan = service.plan_for_job(session=session, settings=settings, job=job, python="py")
            job.runner_handle = runner.submit(plan, run_dir)
            session.add(job)
            transition(session, job, JobStatus.RUNNING, actor="worker", reason="test")
            session.commit()
        return job, run_dir

    return start


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
        # The default period (2 s): at 1 s an idle platform costs 6.2% of a core, at 2 s 3.1%,
        # and a run of the suite keeps ~6 alive at once.
        TP_SUPERVISOR_INTERVAL_S="2",
        # Flower and its task events cost CPU the other tests need: on where a test looks at it.
        TP_FLOWER="false",
    )
    env.update(extra)
    platform = Platform(home, env)
    platform.tp("up", "--timeout", "120", check=True)
    return platform


@pytest.fixture(scope="session")
def platform(tiny_model_dir: Path) -> Iterator[Platform]:
    """The whole platform, shared by the end-to-end and CLI tests, stopped at the end."""
    tmp = Path(tempfile.mkdtemp(prefix="platform-", dir=SESSION_DIR))
    # Two simulated GPUs, so that GPU jobs (verl plans) can be submitted; CPU jobs use the CPU
    # training slot as before.
    # Private URLs allowed: the serving test registers the platform's own API as an endpoint.
    started = start_platform(
        tmp,
        tiny_model_dir,
        redis_db=15,
        TP_SIMULATED_GPUS="2",
        TP_FLOWER="true",
        TP_ALLOW_PRIVATE_URLS="true",
    )
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


# --- a real OpenSSH server (tests of remote hosts) ---------------------------------------
#
# `sshd` is a private /usr/sbin/sshd on 127.0.0.1 (a free port) that lets in exactly one
# throwaway local user, created for the session and deleted after it. Needs root (useradd) and
# the openssh-server package: scripts/ensure_test_packages.sh installs it.

import contextlib  # noqa: E402

SSHD_BINARY = "/usr/sbin/sshd"


def system_tool(name: str) -> str:
    """An administration command by full path (/usr/sbin is often missing from PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin") or name


def ed25519_key() -> tuple[str, str]:
    """A fresh ed25519 key: (private key in OpenSSH format, no passphrase; public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, public


def openssh_fingerprint(public_key_line: str) -> str:
    """`ssh-keygen -l` style fingerprint of a public key line: SHA256:<base64, no padding>."""
    import base64
    import hashlib

    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def wait_gone(processes: list, timeout: float = 10) -> None:  # type: ignore[type-arg]
    """Wait until killed processes are gone; a zombie counts as gone (its parent may be slow)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for process in processes:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                continue
        if not alive:
            return
        processes = alive
        time.sleep(0.01)
    raise RuntimeError(f"processes survived SIGKILL: {[p.pid for p in processes]}")


class _TraverseGrants:
    """Per-user `x` ACL entries on directories the throwaway user could not otherwise pass.

    The project's Python often lives under /root (pyenv), mode 0700. Rather than opening such
    directories to everyone, the throwaway user alone gets `x` on them (setfacl), taken back
    at the end of the session.
    """

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.granted: list[tuple[Path, bool, int]] = []  # (directory, had an ACL, mode)

    def cover(self, targets: list[Path]) -> None:
        import stat

        needed: list[Path] = []
        for target in targets:
            for directory in [target, *target.parents]:
                if not directory.is_dir() or directory in needed:
                    continue
                if not directory.stat().st_mode & stat.S_IXOTH:
                    needed.append(directory)
        if not needed:
            return
        if shutil.which(system_tool("setfacl")) is None:
            raise RuntimeError(
                f"the sshd fixture's user cannot reach {', '.join(map(str, needed))} (no o+x) and "
                "setfacl is missing to let it: run scripts/ensure_test_packages.sh"
            )
        for directory in needed:
            had_acl = self._has_acl(directory)
            mode = directory.stat().st_mode & 0o7777
            subprocess.run(
                [system_tool("setfacl"), "-m", f"u:{self.uid}:x", str(directory)], check=True
            )
            self.granted.append((directory, had_acl, mode))

    @staticmethod
    def _has_acl(directory: Path) -> bool:
        try:
            os.getxattr(directory, "system.posix_acl_access")
        except OSError:
            return False
        return True

    def revoke(self) -> None:
        # Only this user's entry: other workers' users (and the platform's run user) may
        # still need theirs on the same directories.
        for directory, _had_acl, _mode in reversed(self.granted):
            subprocess.run(
                [system_tool("setfacl"), "-x", f"u:{self.uid}", str(directory)],
                check=False,
                capture_output=True,
            )
        self.granted.clear()


class SshServer:
    """A running private sshd and the throwaway user it lets in (see `ssh_server`)."""

    host = "127.0.0.1"

    def __init__(self, user: str, password: str, home: Path, private_dir: Path) -> None:
        self.user = user
        self.password = password
        self.home = home
        self.port = free_port()
        self.private_dir = private_dir  # root only: config, host keys, the client key, log
        self.config_path = private_dir / "sshd_config"
        self.log_path = private_dir / "sshd.log"
        self.pid_path = private_dir / "sshd.pid"
        self.private_key_path = private_dir / "id_ed25519"
        self.private_key_text, self.public_key_text = ed25519_key()
        self.private_key_path.write_text(self.private_key_text)
        self.private_key_path.chmod(0o600)
        self.host_key_path = private_dir / "host_key_0"
        self.host_public_key = ""
        self.host_key_fingerprint = ""
        self._host_keys = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._retired: set[int] = set()  # per-connection sshd of listeners stopped earlier
        self._new_host_key()

    @property
    def uid(self) -> int:
        import pwd

        return pwd.getpwnam(self.user).pw_uid

    @property
    def pid(self) -> int:
        """The listening daemon's pid."""
        assert self._process is not None
        return self._process.pid

    def _new_host_key(self) -> None:
        private, public = ed25519_key()
        self.host_key_path = self.private_dir / f"host_key_{self._host_keys}"
        self._host_keys += 1
        self.host_key_path.write_text(private)
        self.host_key_path.chmod(0o600)
        self.host_key_path.with_suffix(".pub").write_text(public + "\n")
        self.host_public_key = public
        self.host_key_fingerprint = openssh_fingerprint(public)

    def _write_config(self) -> None:
        lines = [
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.pid_path}",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin no",
            "UsePAM no",
            "StrictModes no",
            f"AllowUsers {self.user}",
            f"AuthorizedKeysFile {self.home / '.ssh' / 'authorized_keys'}",
            "MaxStartups 100",
            "MaxSessions 50",
            "ClientAliveInterval 0",
            "LoginGraceTime 30",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start the daemon (config from the current state); returns once it greets clients."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
        self._write_config()
        self._process = subprocess.Popen(
            [SSHD_BINARY, "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with {self._process.returncode}:\n{self.log_text()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as probe:
                    if probe.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not answer on port {self.port}:\n{self.log_text()}")

    def stop(self) -> None:
        """Stop the listening daemon (connections it already serves go on)."""
        if self._process is None:
            return
        self._retired.update(self._connection_pids())
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def rotate_host_key(self) -> str:
        """A new host key, served by a restarted daemon on the same port; its fingerprint."""
        self._new_host_key()
        self.stop()
        self.start()
        return self.host_key_fingerprint

    def _connection_pids(self) -> set[int]:
        """The per-connection sshd processes (privileged monitors and the user's halves)."""
        import psutil

        found: set[int] = set()
        if self._process is not None:
            try:
                for child in psutil.Process(self._process.pid).children(recursive=True):
                    try:
                        if child.exe() == SSHD_BINARY:
                            found.add(child.pid)
                    except psutil.Error:
                        continue
            except psutil.NoSuchProcess:
                pass
        for process in psutil.process_iter(["pid", "exe", "cmdline", "status"]):
            info = process.info
            if info["exe"] != SSHD_BINARY or info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if self._process is not None and info["pid"] == self._process.pid:
                continue
            title = " ".join(info["cmdline"] or [])
            if info["pid"] in self._retired or title.startswith(f"sshd: {self.user}"):
                found.add(info["pid"])
        return found

    def drop_connections(self) -> None:
        """Kill every per-connection sshd (as a network drop would); the listener stays.

        Commands a session started detached (setsid) are not sshd processes and survive.
        """
        import psutil

        processes = []
        for pid in self._connection_pids():
            try:
                process = psutil.Process(pid)
                process.kill()
                processes.append(process)
            except psutil.NoSuchProcess:
                continue
        wait_gone(processes)
        self._retired.clear()

    def user_processes(self) -> list[int]:
        """Live processes of the throwaway user, its sshd halves left out."""
        return [pid for pid, name in self._user_processes() if name != "sshd"]

    def _user_processes(self) -> list[tuple[int, str]]:
        import psutil

        uid = self.uid
        found = []
        for process in psutil.process_iter(["pid", "uids", "name", "status"]):
            info = process.info
            if info["status"] == psutil.STATUS_ZOMBIE or info["uids"] is None:
                continue
            if uid in (info["uids"].real, info["uids"].effective):
                found.append((info["pid"], info["name"]))
        return found

    def kill_user_processes(self, include_sshd: bool = False) -> None:
        """SIGKILL the throwaway user's processes (and its sshd halves with include_sshd)."""
        import psutil

        processes = []
        for pid, name in self._user_processes():
            if name == "sshd" and not include_sshd:
                continue
            try:
                process = psutil.Process(pid)
                process.kill()
                processes.append(process)
            except psutil.NoSuchProcess:
                continue
        wait_gone(processes)

    def log_text(self) -> str:
        """What sshd wrote to its log (-E) so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"SshServer({self.user}@{self.host}:{self.port})"


@contextlib.contextmanager
def ssh_server() -> Iterator[SshServer]:
    """A throwaway user and a private sshd that lets only it in; all removed on exit."""
    import secrets
    import string
    import sys

    if not Path(SSHD_BINARY).exists():
        pytest.skip(
            f"{SSHD_BINARY} is missing: run scripts/ensure_test_packages.sh (as root) to "
            "install openssh-server"
        )
    if os.geteuid() != 0:
        pytest.skip("the sshd fixture creates a local user: run the tests as root")

    user = "tpt" + secrets.token_hex(3)
    alphabet = string.ascii_letters + string.digits
    password = "".join(secrets.choice(alphabet) for _ in range(24))
    with contextlib.ExitStack() as cleanup:  # undoes each step, in reverse, even after errors
        private_dir = Path(tempfile.mkdtemp(prefix="tp-sshd-"))  # 0700, root's
        cleanup.callback(shutil.rmtree, private_dir, ignore_errors=True)
        home_root = Path(tempfile.mkdtemp(prefix="tp-sshd-home-"))
        cleanup.callback(shutil.rmtree, home_root, ignore_errors=True)
        home_root.chmod(0o755)
        home = home_root / user
        subprocess.run(
            [
                system_tool("useradd"),
                "--create-home",
                "--home-dir",
                str(home),
                "--shell",
                "/bin/bash",
                "--user-group",
                "--no-log-init",
                "--comment",
                "training-platform tests",
                user,
            ],
            check=True,
            capture_output=True,
        )
        cleanup.callback(_delete_user, user)
        subprocess.run(
            [system_tool("chpasswd")],
            input=f"{user}:{password}\n",
            text=True,
            check=True,
            capture_output=True,
        )
        home.chmod(0o755)
        server = SshServer(user, password, home, private_dir)
        cleanup.callback(server.kill_user_processes, include_sshd=True)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(server.public_key_text + "\n")
        (ssh_dir / "authorized_keys").chmod(0o600)
        shutil.chown(ssh_dir, user, user)
        shutil.chown(ssh_dir / "authorized_keys", user, user)

        # The user runs this very Python and imports the project (as remote hosts will).
        import training_platform

        grants = _TraverseGrants(server.uid)
        cleanup.callback(grants.revoke)
        grants.cover(
            [
                Path(sys.executable).parent,
                Path(os.path.realpath(sys.executable)).parent,
                Path(sys.prefix),
                Path(sys.base_prefix),
                Path(training_platform.__file__).resolve().parent,
            ]
        )
        check = subprocess.run(
            [
                system_tool("runuser"),
                "-u",
                user,
                "--",
                sys.executable,
                "-c",
                "import training_platform",
            ],
            cwd=home,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(
                f"the sshd fixture's user {user} cannot run {sys.executable} and import "
                "training_platform; the interpreter, the venv and the project must be readable "
                f"(and their directories traversable) by other users:\n{check.stderr}"
            )

        cleanup.callback(server.drop_connections)
        cleanup.callback(server.stop)
        server.start()
        yield server


def _delete_user(user: str) -> None:
    for _attempt in range(3):
        done = subprocess.run([system_tool("userdel"), user], capture_output=True, check=False)
        if done.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"userdel {user} failed: {done.stderr!r}")


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1 and its throwaway user (see `SshServer`)."""
    with ssh_server() as server:
        yield server
