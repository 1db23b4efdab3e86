"""Engine, migrations and column types, on SQLite and on a throwaway PostgreSQL database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError
from sqlmodel import Session

from training_platform.auth.models import ApiToken
from training_platform.core.db import (
    SCHEMA_HEAD,
    SQLITE_BUSY_TIMEOUT_MS,
    alembic_config,
    get_engine,
    migrate,
    schema_version,
    session_scope,
)
from training_platform.core.settings import Settings
from training_platform.tables import metadata

REPO_ROOT = Path(__file__).resolve().parents[2]
IST = timezone(timedelta(hours=5, minutes=30))


@pytest.fixture
def migrated(settings: Settings) -> Engine:
    """A migrated database for these settings."""
    engine = get_engine(settings)
    migrate(engine, settings)
    return engine


def _head(engine: Engine) -> str:
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    assert head is not None
    return head


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _token(name: str, created_at: datetime) -> ApiToken:
    return ApiToken(name=name, token_hash=name.ljust(64, "0"), created_at=created_at)


# --- migrations ---------------------------------------------------------------------------


def test_migrate_creates_every_table_and_is_idempotent(settings: Settings) -> None:
    engine = get_engine(settings)
    migrate(engine, settings)
    with session_scope(engine) as session:
        session.add(_token("kept", datetime.now(UTC)))

    migrate(engine, settings)  # a restart migrates again: nothing changes, nothing is lost

    tables = set(inspect(engine).get_table_names())
    assert set(metadata.tables) <= tables
    assert "alembic_version" in tables
    assert _revision(engine) == _head(engine)
    with Session(engine) as session:
        assert [t.name for t in session.exec(select(ApiToken)).scalars()] == ["kept"]


def test_the_migrations_match_the_table_models(migrated: Engine) -> None:
    # A model changed without a migration shows up here as a difference.
    with migrated.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_sqlite_uses_wal_a_busy_timeout_and_foreign_keys(sqlite_settings: Settings) -> None:
    engine = get_engine(sqlite_settings)
    migrate(engine, sqlite_settings)
    assert sqlite_settings.home.is_dir()  # the default database lives in TP_HOME

    # Every pooled connection has the pragmas, not just the first one.
    with engine.connect() as first, engine.connect() as second:
        for connection in (first, second):
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            busy = connection.execute(text("PRAGMA busy_timeout")).scalar()
            assert busy == SQLITE_BUSY_TIMEOUT_MS
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_two_processes_migrating_at_once_both_succeed(settings: Settings, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from training_platform.core.db import get_engine, migrate
        from training_platform.core.settings import load_settings
        settings = load_settings()
        engine = get_engine(settings)
        Path(sys.argv[2]).touch()
        go = Path(sys.argv[1])
        while not go.exists():
            time.sleep(0.005)
        migrate(engine, settings)
        """
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TP_")},
        "TP_HOME": str(settings.home),
        "TP_DATABASE_URL": settings.resolved_database_url,
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(go), str(tmp_path / f"ready-{index}")],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    # Start the race only once every process has imported everything.
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < len(processes):
        assert time.monotonic() < deadline, "the migrating processes did not get ready"
        assert all(process.poll() is None for process in processes), "a process died early"
        time.sleep(0.02)
    go.touch()
    results = [process.communicate(timeout=120) for process in processes]

    for process, (_out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
    engine = get_engine(settings)
    assert _revision(engine) == _head(engine)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())


# --- UTC datetimes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC),
        datetime(2026, 3, 1, 18, 0, 15, 123456, tzinfo=IST),
    ],
    ids=["utc", "utc+05:30"],
)
def test_an_aware_datetime_comes_back_as_aware_utc(migrated: Engine, given: datetime) -> None:
    with session_scope(migrated) as session:
        session.add(_token("t", given))

    with Session(migrated) as session:
        stored = session.exec(select(ApiToken)).scalars().one().created_at

    assert stored == given  # the same instant
    assert stored.tzinfo is not None
    assert stored.utcoffset() == timedelta(0)
    assert stored == given.astimezone(UTC)
    assert (stored.hour, stored.microsecond) == (given.astimezone(UTC).hour, 123456)


def test_times_from_different_zones_sort_by_instant(migrated: Engine) -> None:
    # 10:00 at UTC+05:30 (04:30 UTC) is earlier than 05:00 UTC, though its wall clock is later.
    with session_scope(migrated) as session:
        session.add(_token("later", datetime(2026, 3, 1, 5, 0, tzinfo=UTC)))
        session.add(_token("earlier", datetime(2026, 3, 1, 10, 0, tzinfo=IST)))

    with Session(migrated) as session:
        names = session.exec(select(ApiToken.name).order_by(ApiToken.created_at)).scalars().all()
        newer = session.exec(
            select(ApiToken.name).where(
                ApiToken.created_at > datetime(2026, 3, 1, 4, 45, tzinfo=UTC)
            )
        )
        assert newer.scalars().all() == ["later"]
    assert names == ["earlier", "later"]


def test_a_naive_datetime_is_refused(migrated: Engine) -> None:
    with pytest.raises(StatementError, match="naive datetime"), session_scope(migrated) as session:
        session.add(_token("naive", datetime(2026, 3, 1, 12, 0)))

    with Session(migrated) as session:
        assert session.exec(select(ApiToken)).scalars().all() == []


def test_schema_head_is_alembics_head_and_a_current_database_is_left_alone(
    settings: Settings,
) -> None:
    engine = get_engine(settings)
    assert schema_version(engine) is None  # empty
    heads = ScriptDirectory.from_config(alembic_config(engine)).get_heads()
    assert heads == [SCHEMA_HEAD]
    migrate(engine, settings)
    assert schema_version(engine) == SCHEMA_HEAD
    # At head, a start neither loads Alembic nor takes the migration lock.
    probe = textwrap.dedent(
        f"""
        import sys
        from training_platform.core.db import get_engine, migrate
        from training_platform.core.settings import load_settings
        settings = load_settings(
            home={str(settings.home)!r}, database_url={settings.resolved_database_url!r}
        )
        migrate(get_engine(settings), settings)
        print("alembic" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "False"


def test_a_dataset_registered_before_versions_becomes_its_version_1(settings: Settings) -> None:
    from alembic import command
    from sqlalchemy import text

    from training_platform.core.db import alembic_config

    engine = get_engine(settings)
    config = alembic_config(engine)
    command.upgrade(config, "0012")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO datasets (name, source, path, format, rows, size_bytes, sha256, "
                "description, created_at) VALUES ('old', 'upload', 'datasets/uploads/a.jsonl', "
                "'messages', 3, 99, :sha, '', :at)"
            ),
            {"sha": "a" * 64, "at": datetime(2026, 11, 1, tzinfo=UTC)},
        )
        dataset_id = connection.execute(text("SELECT id FROM datasets")).scalar_one()
    command.upgrade(config, "head")
    with engine.connect() as connection:
        version = connection.execute(
            text("SELECT number, rows, sha256, origin, manifest FROM dataset_versions")
        ).one()
        current = connection.execute(text("SELECT version FROM datasets")).scalar_one()
    manifest = (
        version.manifest if isinstance(version.manifest, dict) else json.loads(version.manifest)
    )
    assert (version.number, version.rows, version.sha256, version.origin) == (
        1,
        3,
        "a" * 64,
        "upload",
    )
    assert manifest["dataset"] == "old" and manifest["file"]["rows"] == 3 and current == 1
    assert dataset_id
