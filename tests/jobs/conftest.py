"""Fixtures for jobs tests: every job is made through the services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from training_platform.core.settings import Settings
from training_platform.jobs import preparation, service
from training_platform.jobs.models import Job
from training_platform.jobs.schemas import JobCreate


def job_request(**overrides: Any) -> JobCreate:
    """A valid SFT submission on the bundled tiny model and dataset."""
    body: dict[str, Any] = {
        "name": "tiny sft",
        "algorithm": "sft",
        "model": "tiny-qwen2",
        "dataset": "tiny-sft",
        "hyperparameters": {"max_steps": 5},
    }
    body.update(overrides)
    return JobCreate.model_validate(body)


def submit(
    engine: Engine, settings: Settings | None, key: str | None = None, **overrides: Any
) -> Job:
    """Submit and commit a job; with settings, also prepare it (pending -> queued)."""
    with Session(engine, expire_on_commit=False) as session:
        job, _ = service.submit(
            session=session, request=job_request(**overrides), actor="test", idempotency_key=key
        )
        session.commit()
    if settings is None:
        return job
    prepared = preparation.prepare_job(
        engine, settings, job_id=job.id, attempt=job.attempt, actor="test"
    )
    return prepared if prepared is not None else reload(engine, job.id)


def reload(engine: Engine, job_id: int) -> Job:
    """The job as stored now."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


@pytest.fixture
def make_request() -> Callable[..., JobCreate]:
    """Build a valid submission, with overrides."""
    return job_request


@pytest.fixture
def submit_job(engine: Engine, settings: Settings) -> Callable[..., Job]:
    """Submit a job and prepare its dataset, so that it is queued (as after the prepare task)."""
    return lambda key=None, **overrides: submit(engine, settings, key, **overrides)


@pytest.fixture
def submit_pending(engine: Engine) -> Callable[..., Job]:
    """Submit a job and leave it pending, as the API does until the prepare task runs."""
    return lambda key=None, **overrides: submit(engine, None, key, **overrides)


@pytest.fixture
def reload_job(engine: Engine) -> Callable[[int], Job]:
    """Read a job as stored now."""
    return lambda job_id: reload(engine, job_id)


@pytest.fixture
def place(engine: Engine, settings: Settings) -> Callable[..., list[int]]:
    """Run one scheduling pass (no start message is sent); the ids of the jobs it placed."""
    from training_platform.scheduling import scheduler

    def run(with_settings: Settings | None = None) -> list[int]:
        return scheduler.schedule(
            engine, with_settings or settings, dispatch=lambda job: None
        ).placed

    return run
