"""Jobs service: submission, idempotency, bad input that writes nothing, cancel/retry/delete."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func
from sqlmodel import Session, select

from training_platform.core.errors import Conflict, InvalidInput, NotFound
from training_platform.jobs import service
from training_platform.jobs.models import Job, JobEvent, JobMetric
from training_platform.jobs.schemas import JobCreate
from training_platform.jobs.state import JobStatus, transition


def _rows(engine: Any, table: Any) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def test_submit_stores_a_pending_job_with_its_normalized_spec(engine, submit_pending) -> None:  # type: ignore[no-untyped-def]
    job = submit_pending(priority=7, hyperparameters={"max_steps": 5, "learning_rate": 0.001})
    assert job.status == "pending" and job.attempt == 1 and job.version == 1
    assert job.queue == "training" and job.priority == 7
    assert job.spec["model"] == "tiny-qwen2" and job.spec["dataset"] == "tiny-sft"
    # Defaults are filled in at submission, so the job is reproducible later.
    assert job.spec["hyperparameters"]["learning_rate"] == 0.001
    assert job.spec["hyperparameters"]["per_device_train_batch_size"] == 8
    assert job.spec["resources"] == {"gpus": 0}
    assert job.dispatch_count == 1 and job.dispatched_at is not None
    assert _rows(engine, JobEvent) == 1


def test_preparation_records_the_prepared_dataset_and_queues(
    engine, settings, submit_pending
) -> None:  # type: ignore[no-untyped-def]
    from training_platform.jobs import preparation

    job = submit_pending()
    queued = preparation.prepare_job(engine, settings, job_id=job.id, attempt=1, actor="w")
    # Queued, with no start message yet: the scheduler sends it with the devices.
    assert queued is not None and queued.status == "queued" and queued.dispatch_count == 1
    assert queued.dispatched_at is None
    dataset = queued.inputs["dataset"]
    assert (dataset["task"], dataset["rows"], dataset["source"]["name"]) == ("sft", 400, "tiny-sft")
    assert (settings.home / dataset["path"]).is_file() and len(dataset["sha256"]) == 64
    # A second delivery of the prepare message does nothing.
    assert preparation.prepare_job(engine, settings, job_id=job.id, attempt=1, actor="w") is None


def test_preparation_that_fails_ends_the_job_failed(
    engine, settings, submit_pending, reload_job
) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from training_platform.catalog.models import DatasetEntry
    from training_platform.datasets.models import DatasetVersion
    from training_platform.jobs import preparation

    job = submit_pending()
    with Session(
        engine
    ) as session:  # the file under the entry changed into rows that no longer fit
        entry = session.get(DatasetEntry, job.dataset_id)
        broken = settings.home / "datasets" / "broken.jsonl"
        broken.write_text('{"messages": "not a list"}\n')
        for table, key in (
            (DatasetEntry, DatasetEntry.id),
            (DatasetVersion, DatasetVersion.dataset_id),
        ):
            session.execute(
                update(table)
                .where(key == entry.id)
                .values(path="datasets/broken.jsonl", sha256="0" * 64)
            )
        session.commit()
    assert preparation.prepare_job(engine, settings, job_id=job.id, attempt=1, actor="w") is None
    stored = reload_job(job.id)
    assert stored.status == "failed"
    assert "row 1: 'messages' must be a non-empty list" in stored.error


def test_names_with_shell_metacharacters_are_kept_verbatim(submit_job, reload_job) -> None:  # type: ignore[no-untyped-def]
    for name in ("a; rm -rf ~", "$(id)", "`reboot` && echo 'x' | sh", "名前 ✓"):
        assert reload_job(submit_job(name=name).id).name == name


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "", "at least 1 character"),
        ("name", "   ", "must not be empty"),
        ("name", "x" * 201, "at most 200"),
        ("name", "bad\nname", "control characters"),
        ("name", "bad\x00name", "control characters"),
        ("name", "evil\u202ename", "control characters"),
        ("priority", 10, "less than or equal to 9"),
        ("priority", -1, "greater than or equal to 0"),
        ("resources", {"gpus": -1}, "greater than or equal to 0"),
        ("resources", {"gpus": 1, "cpus": 4}, "Extra inputs"),
    ],
)
def test_bad_fields_are_refused_by_the_schema(
    field: str, value: Any, message: str, make_request
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as error:
        make_request(**{field: value})
    assert error.value.errors()[0]["loc"][0] == field
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "loc", "message"),
    [
        ({"backend": "nope"}, ("body", "backend"), "unknown backend 'nope'; available: builtin"),
        (
            {"backend": "verl", "algorithm": "dpo"},
            ("body", "algorithm"),
            "backend 'verl' does not support 'dpo'; use backend 'trl'",
        ),
        ({"algorithm": "dpo"}, ("body", "dataset"), "trl/dpo needs preference data"),
        ({"model": "gpt-17"}, ("body", "model"), "unknown model 'gpt-17'; available: tiny-qwen2"),
        ({"dataset": "nope"}, ("body", "dataset"), "unknown dataset 'nope'"),
        (
            {"dataset": "tiny-prefs"},
            ("body", "dataset"),
            "has format 'preference'; trl/sft needs sft data",
        ),
        (
            {"hyperparameters": {"learning_rate": -1}},
            ("body", "hyperparameters", "learning_rate"),
            "greater than 0",
        ),
        (
            {"hyperparameters": {"max_steps": 10**12}},
            ("body", "hyperparameters", "max_steps"),
            "less than or equal to 10000000",
        ),
        (
            {"hyperparameters": {"per_device_train_batch_size": 0}},
            ("body", "hyperparameters", "per_device_train_batch_size"),
            "greater than or equal to 1",
        ),
        (
            {"hyperparameters": {"learning_rat": 0.1}},
            ("body", "hyperparameters", "learning_rat"),
            "Extra inputs are not permitted",
        ),
    ],
)
def test_bad_requests_name_the_field_and_write_nothing(  # type: ignore[no-untyped-def]
    engine, make_request, overrides, loc, message
) -> None:
    with Session(engine) as session, pytest.raises(InvalidInput) as error:
        service.submit(session=session, request=make_request(**overrides), actor="test")
    assert error.value.loc == loc
    assert message in error.value.message
    assert _rows(engine, Job) == 0 and _rows(engine, JobEvent) == 0


def test_same_idempotency_key_gives_the_same_job(engine, submit_job) -> None:  # type: ignore[no-untyped-def]
    first = submit_job(key="k-1")
    second = submit_job(key="k-1")
    assert first.id == second.id
    assert _rows(engine, Job) == 1


def test_idempotency_key_reused_for_another_request_is_refused(engine, submit_job) -> None:  # type: ignore[no-untyped-def]
    submit_job(key="k-2")
    with pytest.raises(InvalidInput) as error:
        submit_job(key="k-2", name="something else")
    assert error.value.loc == ("header", "Idempotency-Key")
    assert _rows(engine, Job) == 1


def test_concurrent_submissions_with_one_key_create_one_job(engine, make_request) -> None:  # type: ignore[no-untyped-def]
    ids: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        try:
            barrier.wait()
            with Session(engine, expire_on_commit=False) as session:
                job, _ = service.submit(
                    session=session, request=make_request(), actor="t", idempotency_key="race"
                )
                session.commit()
                ids.append(job.id)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(ids)) == 1 and len(ids) == 6
    assert _rows(engine, Job) == 1


def test_list_filters_by_status_and_pages_newest_first(engine, submit_job) -> None:  # type: ignore[no-untyped-def]
    jobs = [submit_job(name=f"job {i}") for i in range(5)]
    with Session(engine, expire_on_commit=False) as session:
        service.cancel(session=session, job_id=jobs[1].id, actor="t")
        session.commit()
        page, total = service.list_jobs(session=session, limit=2, offset=1)
        assert total == 5 and [j.name for j in page] == ["job 3", "job 2"]
        cancelled, count = service.list_jobs(session=session, statuses=[JobStatus.CANCELLED])
        assert count == 1 and cancelled[0].id == jobs[1].id


def _move(engine: Any, job_id: int, *path: JobStatus) -> None:
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        for target in path:
            transition(session, job, target, actor="test", reason="test")
        session.commit()


def test_cancel_a_queued_job_ends_it_at_once(engine, submit_job, reload_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    with Session(engine) as session:
        assert service.cancel(session=session, job_id=job.id, actor="t").status == "cancelled"
        session.commit()
    assert reload_job(job.id).finished_at is not None


def test_cancel_a_running_job_asks_it_to_stop(engine, submit_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    _move(engine, job.id, JobStatus.STARTING, JobStatus.RUNNING)
    with Session(engine) as session:
        cancelled = service.cancel(session=session, job_id=job.id, actor="t")
        assert cancelled.status == "cancelling" and cancelled.cancel_requested_at is not None
        # Asking twice is not an error.
        assert service.cancel(session=session, job_id=job.id, actor="t").status == "cancelling"


def test_cancel_a_finished_job_is_a_conflict(engine, submit_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    _move(engine, job.id, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    with Session(engine) as session, pytest.raises(Conflict, match="already succeeded"):
        service.cancel(session=session, job_id=job.id, actor="t")


def test_retry_starts_a_new_attempt_from_scratch(engine, settings, submit_job, reload_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    _move(engine, job.id, JobStatus.STARTING, JobStatus.RUNNING)
    with Session(engine) as session:
        session.add(JobMetric(job_id=job.id, attempt=1, step=1, key="loss", value=2.0))
        session.commit()
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job.id)
        transition(session, job, JobStatus.FAILED, actor="t", reason="t", values={"exit_code": 3})
        session.commit()
        retried = service.retry(session=session, settings=settings, job_id=job.id, actor="t")
        session.commit()
    assert (retried.status, retried.attempt, retried.exit_code) == ("pending", 2, None)
    assert retried.dispatch_count == 2 and retried.inputs is None
    assert _rows(engine, JobMetric) == 0


def test_retry_of_a_queued_or_succeeded_job_is_refused(engine, settings, submit_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    with Session(engine) as session, pytest.raises(Conflict, match="only failed or cancelled"):
        service.retry(session=session, settings=settings, job_id=job.id, actor="t")


def test_delete_only_finished_jobs(engine, settings, submit_job) -> None:  # type: ignore[no-untyped-def]
    job = submit_job()
    with Session(engine) as session, pytest.raises(Conflict, match="cancel it before"):
        service.delete_job(session=session, settings=settings, job_id=job.id)
    run_dir = service.run_dir_for(settings, job)
    run_dir.mkdir(parents=True)
    with Session(engine) as session:
        service.cancel(session=session, job_id=job.id, actor="t")
        session.commit()
        service.delete_job(session=session, settings=settings, job_id=job.id)
        session.commit()
    assert _rows(engine, Job) == 0 and _rows(engine, JobEvent) == 0
    assert not run_dir.exists()
    with Session(engine) as session, pytest.raises(NotFound):
        service.get_job(session=session, job_id=job.id)


def test_ids_are_never_reused_after_delete(engine, settings, submit_job) -> None:  # type: ignore[no-untyped-def]
    first = submit_job()
    with Session(engine) as session:
        service.cancel(session=session, job_id=first.id, actor="t")
        session.commit()
        service.delete_job(session=session, settings=settings, job_id=first.id)
        session.commit()
    assert submit_job().id > first.id


def test_dry_run_plan_stores_nothing(engine, settings, make_request) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        plan, run_dir = service.plan_for_request(
            session=session, settings=settings, request=make_request(), python="/usr/bin/python3"
        )
    assert plan.argv[:3] == ("/usr/bin/python3", "-m", "training_platform.trainers.trl_train")
    assert _rows(engine, Job) == 0 and not run_dir.exists()
    assert str(settings.home) in plan.files["train_config.json"]


def test_job_create_refuses_unknown_top_level_fields() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        JobCreate.model_validate(
            {"name": "x", "algorithm": "sft", "model": "m", "dataset": "d", "shell": "rm -rf /"}
        )
