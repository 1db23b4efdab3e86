"""What analyses and dedups share: work on a dataset version that a task computes once.

A row is created pending; the task takes it with a compare-and-set (pending to running, so a
message delivered twice computes once), computes, and stores the outcome or why it failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.catalog.models import DatasetEntry
from training_platform.core.errors import NotFound
from training_platform.core.types import utcnow
from training_platform.datasets.models import DatasetAnalysis, DatasetDedup

log = logging.getLogger(__name__)
PENDING, RUNNING, FAILED = "pending", "running", "failed"
Work = TypeVar("Work", DatasetAnalysis, DatasetDedup)


def get(session: Session, table: type[Work], entry: DatasetEntry, work_id: int) -> Work:
    """One analysis or dedup of a dataset; NotFound names both."""
    found = session.get(table, work_id)
    if found is None or found.dataset_id != entry.id:
        kind = "analysis" if table is DatasetAnalysis else "dedup"
        raise NotFound(f"dataset {entry.name!r} has no {kind} {work_id}")
    return found


def of_dataset(session: Session, table: type[Work], entry: DatasetEntry) -> list[Work]:
    """A dataset's analyses or dedups, newest first."""
    return list(
        session.exec(
            select(table).where(table.dataset_id == entry.id).order_by(col(table.id).desc())
        ).all()
    )


def run_once(
    engine: Engine,
    table: type[Work],
    work_id: int,
    compute: Callable[[Session, Work], None],
    *,
    done: str,
) -> str:
    """Take a pending row and compute it here (`compute` fills in its outcome, then the row
    is `done`), or fail it with the reason; "skipped" when another worker has it."""
    with Session(engine) as session:
        taken = session.execute(
            update(table)
            .where(col(table.id) == work_id, col(table.status) == PENDING)
            .values(status=RUNNING)
        )
        session.commit()
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return "skipped"
        found = session.get(table, work_id)
        assert found is not None
        try:
            compute(session, found)
            found.status = done
        except Exception as error:  # stored for the user: the work ends failed
            log.warning("%s %s failed: %s", table.__tablename__, work_id, error)
            found.status = FAILED
            found.error = str(getattr(error, "message", error))[:2000]
        found.finished_at = utcnow()
        session.add(found)
        session.commit()
        return found.status


def describe(found: DatasetAnalysis | DatasetDedup, entry: DatasetEntry) -> dict[str, Any]:
    """Public fields of an analysis or a dedup: its row, the dataset by name."""
    return found.model_dump(exclude={"dataset_id"}) | {"dataset": entry.name}
