"""The jobs context's Celery tasks, called in-process on the settings a worker reads."""

from __future__ import annotations

from sqlmodel import Session, col, select

from training_platform.core.settings import reset_settings_cache
from training_platform.jobs import tasks
from training_platform.jobs.models import JobEvent


def test_events_name_the_worker_by_its_node_name(  # type: ignore[no-untyped-def]
    engine, settings, submit_pending, monkeypatch
) -> None:
    # Defect: events said worker:<hostname> although TP_NODE_NAME names the node.
    monkeypatch.setenv("TP_HOME", str(settings.home))
    monkeypatch.setenv("TP_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("TP_NODE_NAME", "gpu-box-7")
    reset_settings_cache()
    try:
        job = submit_pending()
        assert tasks.prepare_job(job.id, job.attempt) == "queued"
    finally:
        reset_settings_cache()
    with Session(engine) as session:
        actors = session.exec(
            select(JobEvent.actor).where(JobEvent.job_id == job.id).order_by(col(JobEvent.id))
        ).all()
    assert actors == ["test", "worker:gpu-box-7"]
