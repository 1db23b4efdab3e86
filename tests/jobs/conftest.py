"""Fixtures for jobs tests: every job is made through the services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from training_platform.jobs import service
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


def submit(engine: Engine, key: str | None = None, **overrides: Any) -> Job:
    """Submit and commit a job."""
    with Session(engine, expire_on_commit=False) as session:
        job, _ = service.submit(
            session=session, request=job_request(**overrides), actor="test", idempotency_key=key
        )
        session.commit()
        return job


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
def submit_job(engine: Engine) -> Callable[..., Job]:
    """Submit and commit a job on the test database."""
    return lambda key=None, **overrides: submit(engine, key, **overrides)


@pytest.fixture
def reload_job(engine: Engine) -> Callable[[int], Job]:
    """Read a job as stored now."""
    return lambda job_id: reload(engine, job_id)
