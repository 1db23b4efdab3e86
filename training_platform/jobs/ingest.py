"""Ingestion: copy a run's log and metrics into the database by byte offset.

Offsets live on the job row and advance with a compare-and-set, in the same transaction as
the rows they cover, so two ingesters (supervisor and worker) never store a byte twice and
a crash never loses one. Each round reads a bounded slice and commits it: SQLite has one
writer at a time, and a long ingestion transaction would make every other writer wait.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Dialect
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from training_platform.core.db import insert_for
from training_platform.core.types import utcnow
from training_platform.jobs.models import Checkpoint, Job, JobLogChunk, JobMetric
from training_platform.monitoring.live import Publisher
from training_platform.runners.base import Handle, Runner

log = logging.getLogger(__name__)

LOG_READ_LIMIT = 1 << 20
# Metrics bytes per round (one transaction): ~2,000 lines of 10 values, a few tens of ms of
# writing. Bigger rounds would hold SQLite's write lock long enough to stall API requests.
METRICS_READ_LIMIT = 256 * 1024
CHUNK_SIZE = 64 * 1024
# A live run is caught up for at most this long per call (a final pass goes to the end).
ROUNDS_BUDGET_S = 2.0


@dataclass
class IngestResult:
    """What one ingestion pass stored."""

    log_bytes: int = 0
    metric_values: int = 0
    checkpoints: int = 0
    # Values as reported (NaN and infinities kept, unlike the stored rows): for alert rules.
    points: list[tuple[int, str, float]] = field(default_factory=list)


def complete_part(data: bytes, limit: int, final: bool) -> bytes:
    """The part of a read to store now: whole lines only, but the file's last bytes at the end.

    A read that came back short reached the end of the file; once the run has ended
    (`final`), a last line without its newline is all there will ever be, so it is taken.
    Any other cut falls on a newline: a line cut at the read limit waits for the next round.
    """
    if not data or (final and len(data) < limit):
        return data
    cut = data.rfind(b"\n")
    if cut >= 0:
        return data[: cut + 1]
    # One line longer than the whole read: take it rather than stall on it for ever.
    return data if len(data) >= limit else b""


def _advance(
    session: Session,
    job: Job,
    column: str,
    old: int,
    new: int,
    also: dict[str, Any] | None = None,
) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempt == job.attempt, getattr(Job, column) == old)  # type: ignore[arg-type]
        # Hang detection watches last_progress_at: the run's output grew.
        .values({column: new, "last_progress_at": utcnow(), **(also or {})})
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def ingest(
    session: Session,
    job: Job,
    runner: Runner,
    handle: Handle,
    *,
    final: bool,
    publish: Publisher | None = None,
) -> IngestResult:
    """Store new log and metrics bytes of the job's current attempt; commits per round.

    A live run is caught up for at most ROUNDS_BUDGET_S per call (the next call goes on);
    a final pass (the process has ended) goes on until everything is stored.
    What a round stored is published for live views after its commit, never before: a
    client that resumes from the database cannot miss what it was sent.
    """
    result = IngestResult()
    deadline = time.monotonic() + ROUNDS_BUDGET_S
    # The caller has just read the job; later rounds know the offsets they committed.
    while True:
        live = _Round()
        stored = _ingest_log(session, job, runner, handle, final, live)
        values, checkpoints, consumed = _ingest_metrics(session, job, runner, handle, final, live)
        if stored < 0 or consumed < 0:
            session.rollback()  # someone else advanced an offset first; they have it
            session.refresh(job)
            return result
        session.commit()
        # Our compare-and-set won: the stored offsets are ours, no need to read them back.
        set_committed_value(job, "log_offset", job.log_offset + stored)
        set_committed_value(job, "metrics_offset", job.metrics_offset + consumed)
        assert job.id is not None
        if publish is not None:
            publish.round(
                job.id, job.attempt, live.log_offset, live.log_data, live.points, live.lag
            )
        result.points.extend(live.raw)
        result.log_bytes += stored
        result.metric_values += values
        result.checkpoints += checkpoints
        if not live.more:
            break  # both reads came back short: the end of both files
        if not final and time.monotonic() > deadline:
            break
    return result


@dataclass
class _Round:
    """What one round stored, for the live publisher."""

    log_offset: int = 0
    log_data: bytes = b""
    points: list[tuple[int, str, float | None]] = field(default_factory=list)
    raw: list[tuple[int, str, float]] = field(default_factory=list)
    lag: float | None = None  # seconds from the newest record's timestamp to its storage
    more: bool = False  # a read filled its limit: there may be more to read now


def _ingest_log(
    session: Session, job: Job, runner: Runner, handle: Handle, final: bool, live: _Round
) -> int:
    offset = job.log_offset
    read = runner.read(handle, "log", offset, LOG_READ_LIMIT)
    live.more |= len(read) >= LOG_READ_LIMIT
    data = complete_part(read, LOG_READ_LIMIT, final)
    if not data:
        return 0
    if not _advance(session, job, "log_offset", offset, offset + len(data)):
        return -1
    live.log_offset, live.log_data = offset, data
    rows = []
    position = 0
    while position < len(data):
        piece = data[position : position + CHUNK_SIZE]
        if position + CHUNK_SIZE < len(data):
            cut = piece.rfind(b"\n")
            piece = piece[: cut + 1] if cut >= 0 else piece
        rows.append(
            {"job_id": job.id, "attempt": job.attempt, "offset": offset + position, "data": piece}
        )
        position += len(piece)
    session.connection().execute(JobLogChunk.__table__.insert(), rows)  # type: ignore[attr-defined]
    return len(data)


def _ingest_metrics(
    session: Session, job: Job, runner: Runner, handle: Handle, final: bool, live: _Round
) -> tuple[int, int, int]:
    offset = job.metrics_offset
    read = runner.read(handle, "metrics", offset, METRICS_READ_LIMIT)
    live.more |= len(read) >= METRICS_READ_LIMIT
    data = complete_part(read, METRICS_READ_LIMIT, final)
    if not data:
        return 0, 0, 0
    # Parsed before any write: the round's transaction (and SQLite's lock) starts at the
    # compare-and-set, which also carries the progress, and is as short as it can be.
    saved: list[dict[str, Any]] = []
    progress: dict[str, Any] = {}
    # One row per (step, key): a key reported twice at one step keeps its last value.
    rows: dict[tuple[int, str], tuple[Any, ...]] = {}
    dialect = session.get_bind().dialect
    stamp = _stamp_processor(dialect)
    for number, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning(
                "job %s: skipping unreadable metrics line %d after byte %d", job.id, number, offset
            )
            continue
        if not isinstance(record, dict):
            continue
        kind = record.get("type")
        if kind == "metrics":
            _collect_values(job, record, live, rows, stamp)
            if isinstance(record.get("step"), int):
                progress["progress_step"] = record["step"]
        elif kind == "started" and isinstance(record.get("max_steps"), int):
            progress["progress_total"] = record["max_steps"]
        elif kind == "checkpoint":
            saved.append(record)
            if isinstance(record.get("step"), int):  # a run may only export its checkpoint
                progress["progress_step"] = max(record["step"], progress.get("progress_step", 0))
        elif kind == "summary":
            summary = {k: v for k, v in dict(record.get("values", {})).items() if _is_number(v)}
            outputs = dict(job.outputs or {})
            outputs["summary"] = summary
            progress["outputs"] = outputs
    if not _advance(session, job, "metrics_offset", offset, offset + len(data), progress):
        return 0, 0, -1
    if rows:
        # Straight to the driver's executemany: the rows are already in the column's form,
        # and per-row statement processing was most of the cost of ingestion.
        session.connection().exec_driver_sql(_upsert_sql(dialect.paramstyle), list(rows.values()))
    checkpoints = sum(_store_checkpoint(session, job, record) for record in saved)
    return len(rows), checkpoints, len(data)


_STEPS = (-(2**31), 2**31)  # the step column is a 32-bit integer on PostgreSQL
_UPSERT = (
    "INSERT INTO job_metrics (job_id, attempt, step, key, value, recorded_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, step, key) DO UPDATE SET "
    "value = excluded.value, attempt = excluded.attempt, recorded_at = excluded.recorded_at"
)


def _upsert_sql(paramstyle: str) -> str:
    """INSERT .. ON CONFLICT (job, step, key) DO UPDATE, in the driver's placeholder style."""
    return _UPSERT if paramstyle == "qmark" else _UPSERT.replace("?", "%s")


def _stamp_processor(dialect: Dialect) -> Callable[[datetime], Any]:
    """Turns a timestamp into what the driver stores in job_metrics.recorded_at."""
    column = JobMetric.__table__.c.recorded_at  # type: ignore[attr-defined]
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return processor if processor is not None else (lambda value: value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _timestamp(record: dict[str, Any]) -> datetime:
    try:
        moment = datetime.fromisoformat(str(record["time"]))
    except (KeyError, ValueError):
        return utcnow()
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _collect_values(
    job: Job,
    record: dict[str, Any],
    live: _Round,
    rows: dict[tuple[int, str], tuple[Any, ...]],
    stamp: Callable[[datetime], Any],
) -> None:
    step = record.get("step")
    raw = record.get("values")
    if not isinstance(step, int) or not isinstance(raw, dict) or not _STEPS[0] <= step < _STEPS[1]:
        return
    # Trainers write NaN and infinities as null and name them here (JSON has no NaN).
    named = record.get("non_finite")
    marks: dict[str, Any] = named if isinstance(named, dict) else {}
    recorded_at = _timestamp(record)
    live.lag = max(live.lag or 0.0, (utcnow() - recorded_at).total_seconds())
    stored_at = stamp(recorded_at)
    job_id, attempt = job.id, job.attempt
    for key, value in raw.items():
        kind = type(value)
        if kind is float or kind is int:
            number = float(value)
        elif value is None and marks.get(key) in ("nan", "inf", "-inf"):
            number = float(marks[key])
        else:
            continue  # text, booleans, lists: not a measurement
        if not 0 < len(key) <= 200:
            continue
        finite = number if math.isfinite(number) else None
        live.raw.append((step, key, number))
        live.points.append((step, key, finite))
        # NaN and infinities are kept as "no value" (SQLite cannot store NaN).
        rows[(step, key)] = (job_id, attempt, step, key, finite, stored_at)


def _store_checkpoint(session: Session, job: Job, record: dict[str, Any]) -> int:
    path, step = record.get("path"), record.get("step")
    if (
        not isinstance(path, str)
        or not isinstance(step, int)
        or path.startswith("/")
        or ".." in path
    ):
        return 0
    statement = (
        insert_for(session, Checkpoint)
        .values(
            job_id=job.id,
            attempt=job.attempt,
            step=step,
            path=path,
            final=bool(record.get("final", False)),
            size_bytes=record["size_bytes"] if isinstance(record.get("size_bytes"), int) else None,
            created_at=_timestamp(record),
        )
        .on_conflict_do_nothing(index_elements=["job_id", "attempt", "path"])
    )
    session.execute(statement)
    return 1
