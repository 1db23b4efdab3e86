"""Database engine, sessions and migrations (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, create_engine

from training_platform.core.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The newest migration. A database already there is left alone without loading Alembic and
# every migration script (most of a process's start); tests/core/test_db.py holds this to
# Alembic's own head.
SCHEMA_HEAD = "0017"
RowT = TypeVar("RowT")
_MIGRATION_LOCK_ID = 0x7470_6D69  # "tpmi": the PostgreSQL advisory lock taken around upgrades


def make_engine(url: str) -> Engine:
    """An engine with the settings each backend needs to be safe under several processes."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and one writer work at once; the busy timeout makes writers queue
    # instead of failing; foreign keys are off by default in SQLite. pysqlite's own
    # transaction handling stays on: it opens the write transaction at the first write, so a
    # read-then-compare-and-set never holds a stale snapshot that SQLite would refuse to upgrade.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine (and pool) per URL per process."""
    return make_engine(url)


def get_engine(settings: Settings) -> Engine:
    """The engine for these settings, creating TP_HOME first for the SQLite default."""
    if settings.database_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
    return engine_for(settings.resolved_database_url)


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(engine: Engine) -> Config:
    """Alembic configuration pointing at the packaged migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent.parent / "migrations"))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["engine"] = engine
    return config


def schema_version(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None


def migrate(engine: Engine, settings: Settings) -> None:
    """Apply pending migrations; safe when several processes start at once."""
    if schema_version(engine) == SCHEMA_HEAD:
        return
    from alembic import command

    config = alembic_config(engine)
    if engine.dialect.name == "sqlite":
        settings.home.mkdir(parents=True, exist_ok=True)
        lock_path = settings.home / ".migrate.lock"
        with lock_path.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            command.upgrade(config, "head")
        return
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
            connection.commit()


def check_database(engine: Engine) -> None:
    """Raise if the database cannot answer a trivial query."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def insert_for(session: Session, table: Any) -> Any:
    """An INSERT of the session's dialect (PostgreSQL or SQLite), for ON CONFLICT clauses."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    dialect = session.get_bind().dialect.name
    return (pg_insert if dialect == "postgresql" else sqlite_insert)(table)


def add_unique(session: Session, row: RowT, taken: str) -> RowT:
    """Add a row whose unique columns another request may hold (a name): flushed, or the
    session rolled back and Conflict(taken) raised."""
    from training_platform.core.errors import Conflict

    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(taken) from None
    return row
