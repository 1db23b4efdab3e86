"""Fixtures for scheduling tests: a simulated inventory, jobs that ask for GPUs."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.core.settings import Settings
from training_platform.jobs import preparation, service
from training_platform.jobs.models import Job
from training_platform.jobs.schemas import JobCreate
from training_platform.projects import service as projects
from training_platform.scheduling import scheduler
from training_platform.scheduling.models import DeviceLease
from training_platform.scheduling.service import refresh_local


@pytest.fixture
def simulate(engine: Engine, settings: Settings) -> Callable[..., Settings]:
    """Record a simulated inventory for this node; returns the settings that describe it."""

    def record(spec: str = "4", **overrides: Any) -> Settings:
        simulated = settings.model_copy(update={"simulated_gpus": spec, **overrides})
        refresh_local(engine, simulated)
        return simulated

    return record


@pytest.fixture
def gpu_job(engine: Engine, settings: Settings) -> Callable[..., Job]:
    """Submit and prepare an SFT job asking for `gpus` (queued, not placed)."""

    def submit(
        gpus: int,
        priority: int = 5,
        name: str | None = None,
        project: str | None = None,
        user_id: int | None = None,
        **resources: Any,
    ) -> Job:
        request = JobCreate.model_validate(
            {
                "name": name or f"{gpus} gpu(s) p{priority}",
                "algorithm": "sft",
                "model": "tiny-qwen2",
                "dataset": "tiny-sft",
                "priority": priority,
                "hyperparameters": {"max_steps": 1},
                "resources": {"gpus": gpus, **resources},
            }
        )
        with Session(engine, expire_on_commit=False) as session:
            project_id = projects.get_project(session=session, name=project).id if project else None
            job, _ = service.submit(
                session=session,
                request=request,
                actor="test",
                project_id=project_id,
                user_id=user_id,
            )
            session.commit()
        queued = preparation.prepare_job(engine, settings, job_id=job.id, attempt=1, actor="t")
        assert queued is not None
        return queued

    return submit


@pytest.fixture
def run_pass(engine: Engine) -> Callable[[Settings], scheduler.PassReport]:
    """One scheduling pass that sends no message."""
    return lambda with_settings: scheduler.schedule(engine, with_settings, dispatch=lambda j: None)


@pytest.fixture
def leases(engine: Engine) -> Callable[..., list[DeviceLease]]:
    """Lease history, optionally of one job or only the active ones."""

    def read(job_id: int | None = None, active: bool = False) -> list[DeviceLease]:
        with Session(engine) as session:
            query = select(DeviceLease).order_by(col(DeviceLease.id))
            if job_id is not None:
                query = query.where(DeviceLease.job_id == job_id)
            if active:
                query = query.where(col(DeviceLease.released_at).is_(None))
            return list(session.exec(query).all())

    return read


def no_device_held_twice(history: list[DeviceLease]) -> None:
    """Assert that on every device the lease intervals never overlap."""
    by_device: dict[tuple[str, str, int], list[DeviceLease]] = {}
    for lease in history:
        by_device.setdefault((lease.host, lease.kind, lease.device_index), []).append(lease)
    for device, held in by_device.items():
        held.sort(key=lambda lease: lease.acquired_at)
        assert sum(1 for lease in held if lease.released_at is None) <= 1, device
        for before, after in itertools.pairwise(held):
            assert before.released_at is not None, (device, before.job_id, after.job_id)
            assert before.released_at <= after.acquired_at, (device, before.job_id, after.job_id)


@pytest.fixture
def check_history() -> Callable[[list[DeviceLease]], None]:
    """The no-overlap check, as a fixture."""
    return no_device_held_twice


@pytest.fixture
def reload_job(engine: Engine) -> Callable[[int], Job]:
    """A job as stored now."""

    def read(job_id: int) -> Job:
        with Session(engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    return read
