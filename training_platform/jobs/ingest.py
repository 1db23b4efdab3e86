"""Ingestion: copy a run's log and metrics into the database by byte offset.

Offsets live on the job row and advance with a compare-and-set, in the same transaction as
the rows they cover, so two ingesters (supervisor and worker) never store a byte twice and
a crash never loses one.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session

from training_platform.core.db import insert_for
from training_platform.core.types import utcnow
from training_platform.jobs.models import Checkpoint, Job, JobLogChunk, JobMetric
from training_platform.monitoring.live import Publisher
from training_platform.runners.base import Handle, Runner

log = logging.getLogger(__name__)

READ_LIMIT = 1 << 20
CHUNK_SIZE = 64 * 1024
MAX_ROUNDS = 16  # per call; a very chatty run is caught up over several calls


@dataclass
class IngestResult:
    """What one ingestion pass stored."""

    log_bytes: int = 0
    metric_values: int = 0
    checkpoints: int = 0
    # Values as reported (NaN and infinities kept, unlike the stored rows): for alert rules.
    points: list[tuple[int, str, float]] = field(default_factory=list)


def _complete_part(data: bytes, final: bool) -> bytes:
    # While the run lives only whole lines are taken: a half-written line waits for its end.
    if final or not data:
        return data
    cut = data.rfind(b"\n")
    if cut >= 0:
        return data[: cut + 1]
    return data if len(data) >= READ_LIMIT else b""


def _advance(session: Session, job: Job, column: str, old: int, new: int) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempt == job.attempt, getattr(Job, column) == old)  # type: ignore[arg-type]
        # Hang detection watches last_progress_at: the run's output grew.
        .values({column: new, "last_progress_at": utcnow()})
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

    What a round stored is published for live views after its commit, never before: a
    client that resumes from the database cannot miss what it was sent.
    """
    result = IngestResult()
    for _ in range(MAX_ROUNDS):
        session.refresh(job)
        live = _Round()
        stored = _ingest_log(session, job, runner, handle, final, live)
        values, checkpoints, consumed = _ingest_metrics(session, job, runner, handle, final, live)
        if stored < 0 or consumed < 0:
            session.rollback()  # someone else advanced an offset first; they have it
            return result
        session.commit()
        assert job.id is not None
        if publish is not None:
            publish.log(job.id, job.attempt, live.log_offset, live.log_data)
            publish.metrics(job.id, job.attempt, live.points)
            if live.lag is not None:
                publish.lag(job.id, live.lag)
        result.points.extend(live.raw)
        result.log_bytes += stored
        result.metric_values += values
        result.checkpoints += checkpoints
        if stored == 0 and consumed == 0:
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


def _ingest_log(
    session: Session, job: Job, runner: Runner, handle: Handle, final: bool, live: _Round
) -> int:
    offset = job.log_offset
    data = _complete_part(runner.read(handle, "log", offset, READ_LIMIT), final)
    if not data:
        return 0
    if not _advance(session, job, "log_offset", offset, offset + len(data)):
        return -1
    live.log_offset, live.log_data = offset, data
    position = 0
    while position < len(data):
        piece = data[position : position + CHUNK_SIZE]
        if position + CHUNK_SIZE < len(data):
            cut = piece.rfind(b"\n")
            piece = piece[: cut + 1] if cut >= 0 else piece
        session.add(
            JobLogChunk(
                job_id=job.id,  # type: ignore[arg-type]
                attempt=job.attempt,
                offset=offset + position,
                data=piece,
            )
        )
        position += len(piece)
    return len(data)


def _ingest_metrics(
    session: Session, job: Job, runner: Runner, handle: Handle, final: bool, live: _Round
) -> tuple[int, int, int]:
    offset = job.metrics_offset
    data = _complete_part(runner.read(handle, "metrics", offset, READ_LIMIT), final)
    if not data:
        return 0, 0, 0
    if not _advance(session, job, "metrics_offset", offset, offset + len(data)):
        return 0, 0, -1
    values = checkpoints = 0
    progress: dict[str, Any] = {}
    for number, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("job %s: skipping unreadable metrics line %d", job.id, number)
            continue
        if not isinstance(record, dict):
            continue
        kind = record.get("type")
        if kind == "started" and isinstance(record.get("max_steps"), int):
            progress["progress_total"] = record["max_steps"]
        elif kind == "metrics":
            values += _store_values(session, job, record, live)
            if isinstance(record.get("step"), int):
                progress["progress_step"] = record["step"]
        elif kind == "checkpoint":
            checkpoints += _store_checkpoint(session, job, record)
        elif kind == "summary":
            summary = {k: v for k, v in dict(record.get("values", {})).items() if _is_number(v)}
            outputs = dict(job.outputs or {})
            outputs["summary"] = summary
            progress["outputs"] = outputs
    if progress:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.attempt == job.attempt)  # type: ignore[arg-type]
            .values(**progress)
            .execution_options(synchronize_session=False)
        )
    return values, checkpoints, len(data)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _timestamp(record: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(record["time"]))
    except (KeyError, ValueError):
        return utcnow()


def _store_values(session: Session, job: Job, record: dict[str, Any], live: _Round) -> int:
    step = record.get("step")
    raw = record.get("values")
    if not isinstance(step, int) or not isinstance(raw, dict):
        return 0
    # Trainers write NaN and infinities as null and name them here (JSON has no NaN).
    named = record.get("non_finite")
    marks: dict[str, Any] = named if isinstance(named, dict) else {}
    recorded_at = _timestamp(record)
    if recorded_at.tzinfo is not None:
        live.lag = max(live.lag or 0.0, (utcnow() - recorded_at).total_seconds())
    rows = []
    for key, value in raw.items():
        if value is None and marks.get(key) in ("nan", "inf", "-inf"):
            value = float(marks[key])
        if not _is_number(value) or not 0 < len(str(key)) <= 200:
            continue
        number = float(value)
        live.raw.append((step, str(key), number))
        live.points.append((step, str(key), number if math.isfinite(number) else None))
        rows.append(
            {
                "job_id": job.id,
                "attempt": job.attempt,
                "step": step,
                "key": str(key),
                # NaN and infinities are kept as "no value" (SQLite cannot store NaN).
                "value": number if math.isfinite(number) else None,
                "recorded_at": recorded_at,
            }
        )
    if not rows:
        return 0
    statement = insert_for(session, JobMetric).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=["job_id", "step", "key"],
        set_={
            "value": statement.excluded.value,
            "attempt": statement.excluded.attempt,
            "recorded_at": statement.excluded.recorded_at,
        },
    )
    session.execute(statement)
    return len(rows)


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
