"""Ingestion of a run's metrics and log: nothing lost at read limits, short transactions.

The in-memory runner scripts what a run wrote; tests/e2e covers ingestion of real trainings.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine, select

from training_platform.jobs import ingest, service, supervisor
from training_platform.jobs.models import Job, JobMetric
from training_platform.jobs.schemas import JobCreate


def _lines(steps: range, keys: int, pad: int = 0) -> bytes:
    """metrics.jsonl lines with `keys` values each, padded to make big files fast to store."""
    out = []
    for step in steps:
        record: dict[str, Any] = {
            "type": "metrics",
            "time": "2026-12-01T00:00:00+00:00",
            "step": step,
            "values": {f"k{i}": step + i / 10 for i in range(keys)},
        }
        if pad:
            record["note"] = "x" * pad  # not a value: ingestion ignores it
        out.append(json.dumps(record).encode() + b"\n")
    return b"".join(out)


def _stored(engine: Any, job_id: int) -> int:
    with Session(engine) as session:
        return int(
            session.exec(
                select(func.count()).select_from(JobMetric).where(JobMetric.job_id == job_id)
            ).one()
        )


def test_a_final_pass_over_more_than_a_read_limit_keeps_every_line(  # type: ignore[no-untyped-def]
    engine, settings, runner, running_job, caplog
) -> None:
    # Defect: the last pass (the run had exited) took reads cut at the read limit as they
    # were, so the line cut in two at each limit was dropped as unreadable.
    job, run_dir = running_job()
    lines = 3 * ingest.METRICS_READ_LIMIT // 1000
    data = _lines(range(1, lines + 1), keys=2, pad=900)
    assert len(data) > 2 * ingest.METRICS_READ_LIMIT
    assert len(data) % ingest.METRICS_READ_LIMIT != 0
    runner.write(run_dir, "metrics", data)
    runner.finish(run_dir, 0)
    with caplog.at_level(logging.WARNING, logger="training_platform.jobs.ingest"):
        supervisor.reconcile_job(engine, settings, job.id, {"memory": runner})
    assert "unreadable" not in caplog.text
    assert _stored(engine, job.id) == 2 * lines
    with Session(engine) as session:
        stored = session.get(Job, job.id)
        assert stored is not None
        assert stored.metrics_offset == len(data)
        assert stored.progress_step == lines
        assert stored.status == "succeeded"


def test_the_last_line_of_an_ended_run_counts_even_without_its_newline(  # type: ignore[no-untyped-def]
    engine, settings, runner, running_job
) -> None:
    job, run_dir = running_job()
    runner.write(run_dir, "metrics", _lines(range(1, 4), keys=1).rstrip(b"\n"))
    supervisor.reconcile_job(engine, settings, job.id, {"memory": runner})
    assert _stored(engine, job.id) == 2  # while it runs, the unfinished line waits
    runner.finish(run_dir, 0)
    supervisor.reconcile_job(engine, settings, job.id, {"memory": runner})
    assert _stored(engine, job.id) == 3


@pytest.mark.parametrize("cut", [0, 1, 100, ingest.METRICS_READ_LIMIT - 2])
def test_a_cut_falls_on_a_newline_unless_it_is_the_end_of_the_file(cut: int) -> None:
    limit = ingest.METRICS_READ_LIMIT
    whole = b"a" * cut + b"\n" + b"b" * (limit - cut - 1)
    assert len(whole) == limit
    for final in (False, True):
        assert ingest.complete_part(whole, limit, final) == b"a" * cut + b"\n"
    short = whole[: limit - 1]
    assert ingest.complete_part(short, limit, final=True) == short  # the file's end
    assert ingest.complete_part(short, limit, final=False) == b"a" * cut + b"\n"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ingestion_writes_in_short_transactions_so_other_writers_never_fail(  # type: ignore[no-untyped-def]
    engine, settings, runner, running_job
) -> None:
    # Defect: one ingestion round stored a whole MiB of metrics in one transaction, holding
    # SQLite's only write lock for longer than the busy timeout: POST /jobs answered 500
    # "database is locked". Here the other writer gives up after 3 s instead of 30 s.
    job, run_dir = running_job()
    steps = 6000
    runner.write(run_dir, "metrics", _lines(range(1, steps + 1), keys=10))
    runner.finish(run_dir, 0)
    done = threading.Event()

    def catch_up() -> None:
        try:
            supervisor.reconcile_job(engine, settings, job.id, {"memory": runner})
        finally:
            done.set()

    other = create_engine(settings.resolved_database_url, connect_args={"timeout": 3})
    request = JobCreate.model_validate(
        {"name": "during", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
    )
    failures: list[str] = []
    submitted = 0
    worker = threading.Thread(target=catch_up)
    worker.start()
    try:
        while not done.is_set():
            try:
                with Session(other) as session:
                    service.submit(session=session, request=request, actor="test")
                    session.commit()
                submitted += 1
            except OperationalError as error:
                failures.append(str(error.orig))
            time.sleep(0.01)
    finally:
        worker.join()
        other.dispose()
    assert failures == []
    assert submitted >= 1
    assert _stored(engine, job.id) == 10 * steps
