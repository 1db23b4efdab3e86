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


def test_a_verl_sft_example_longer_than_max_length_fails_the_job_before_it_is_queued(  # type: ignore[no-untyped-def]
    submit_job,
) -> None:
    # verl raises on such a row mid-run (truncation "error"), after the job holds GPUs.
    hyperparameters = {"total_steps": 5, "device": "cpu", "max_length": 16}
    job = submit_job(backend="verl", hyperparameters=hyperparameters)
    assert job.status == "failed"
    assert "hyperparameters.max_length: the longest example (row " in job.error
    assert "over max_length 16" in job.error
    assert job.plan is None and job.started_at is None

    cut = submit_job(backend="verl", hyperparameters={**hyperparameters, "truncation": "right"})
    fits = submit_job(backend="verl", hyperparameters={**hyperparameters, "max_length": 256})
    assert (cut.status, fits.status) == ("queued", "queued")


def test_a_start_task_ends_as_its_job_did_for_flower(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Cancelled, paused, requeued and failed jobs' start tasks end with the job's end as a task
    event and no task-succeeded (Ignore); a success or a skipped message is a plain result."""
    import pytest
    from celery.exceptions import Ignore

    from training_platform.jobs.execution import Outcome

    sent: list[tuple[str, dict]] = []  # type: ignore[type-arg]
    monkeypatch.setattr(tasks.run_job, "send_event", lambda kind, **f: sent.append((kind, f)))
    monkeypatch.setitem(tasks.app.conf, "worker_send_task_events", True)
    for status, event in (
        ("cancelled", "task-cancelled"),
        ("paused", "task-paused"),
        ("queued", "task-requeued"),
        ("failed", "task-failed"),
    ):
        with pytest.raises(Ignore):
            tasks._ended(tasks.run_job, Outcome(3, "finished", status))
        assert sent.pop() == (
            event,
            {"result": f"finished:{status}"}
            | ({"exception": "job 3 failed (its events say why)"} if status == "failed" else {}),
        )
    assert tasks._ended(tasks.run_job, Outcome(3, "finished", "succeeded")) == "finished:succeeded"
    assert tasks._ended(tasks.run_job, Outcome(3, "skipped")) == "skipped:None"
    assert sent == []
