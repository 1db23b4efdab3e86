"""Fixtures for monitoring tests: jobs started on the in-memory runner, as a worker would."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlmodel import Session

from training_platform.jobs import preparation, service
from training_platform.jobs.models import Job
from training_platform.jobs.schemas import JobCreate
from training_platform.jobs.state import JobStatus, transition
from training_platform.runners.memory import MemoryRunner


def _metrics_line(step: int, **values: float) -> bytes:
    record = {"type": "metrics", "step": step, "time": "2026-11-27T00:00:00+00:00"}
    return (json.dumps({**record, "values": values}) + "\n").encode()


@pytest.fixture
def metrics_line() -> Callable[..., bytes]:
    """One metrics.jsonl record, as the trainers write it (NaN written as NaN)."""
    return _metrics_line


@pytest.fixture
def runner() -> MemoryRunner:
    return MemoryRunner()


@pytest.fixture
def running_job(engine, settings, runner) -> Callable[..., tuple[Job, str]]:  # type: ignore[no-untyped-def]
    """Submit, prepare and start a job on the in-memory runner; returns (job, run dir)."""

    def start(**overrides: Any) -> tuple[Job, str]:
        body: dict[str, Any] = {
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
