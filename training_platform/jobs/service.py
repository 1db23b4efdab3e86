"""Jobs service: submit, read, cancel, retry and delete jobs. Knows nothing of HTTP or Celery.

Functions flush; the caller owns the transaction and commits (then dispatches).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import delete, func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

import training_platform
from training_platform.backends.base import (
    Backend,
    LaunchContext,
    LaunchPlan,
    get_backend,
    validate_parameters,
)
from training_platform.catalog import rewards
from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry, ModelEntry
from training_platform.compute import service as compute
from training_platform.core.errors import Conflict, InvalidInput, NotFound
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.datasets import formats
from training_platform.datasets import service as datasets
from training_platform.datasets import versions as dataset_versions
from training_platform.datasets.models import DatasetVersion
from training_platform.jobs.dispatch import Dispatcher as Dispatcher  # re-exported
from training_platform.jobs.models import Checkpoint, Job, JobEvent, JobLogChunk, JobMetric
from training_platform.jobs.schemas import QUEUE_FOR_JOBS, AlertRule, JobCreate, JobPolicy
from training_platform.jobs.state import (
    CHECKPOINT,
    SUSPEND,
    TERMINAL,
    WAITING,
    JobStatus,
    StaleJob,
    note,
    transition,
)
from training_platform.monitoring import defaults as alert_defaults
from training_platform.scheduling import service as scheduling
from training_platform.scheduling.placement import capacity_check

WAITING_VALUES = frozenset(s.value for s in WAITING)
SETTLE_ATTEMPTS = 5
T = TypeVar("T")


@dataclass(frozen=True)
class ValidatedJob:
    """A submission that passed every check, with what it resolved to."""

    request: JobCreate
    backend: Backend
    parameters: BaseModel
    model: ModelEntry | None  # None for an evaluation of an endpoint
    dataset: DatasetEntry | None  # None for an algorithm that takes no data (serve)
    dataset_version: DatasetVersion | None = None  # the version it runs on (pinned at submit)


def validate(*, session: Session, request: JobCreate) -> ValidatedJob:
    """Check a submission against the backend and the catalog; InvalidInput names the field."""
    backend, parameters, dataset, version = check_request(session=session, request=request)
    pair = f"{backend.backend}/{backend.algorithm}"
    if getattr(parameters, "endpoint", None) is not None:
        if request.model is not None:
            raise InvalidInput(("body", "model"), f"{pair} of an endpoint takes no model")
        return ValidatedJob(request, backend, parameters, None, dataset, version)
    if request.model is None:
        raise InvalidInput(("body", "model"), f"{pair} needs a model")
    model = catalog.resolve_model(session=session, ref=request.model)
    return ValidatedJob(request, backend, parameters, model, dataset, version)


def _dataset_of(
    session: Session, request: JobCreate, backend: Backend
) -> tuple[DatasetEntry | None, DatasetVersion | None]:
    pair = f"{backend.backend}/{backend.algorithm}"
    if request.validation is not None and not getattr(backend, "validates", False):
        raise InvalidInput(
            ("body", "validation"), f"{pair} does not use a validation split; leave it out"
        )
    if backend.data_task is None:
        if request.dataset is not None:
            raise InvalidInput(("body", "dataset"), f"{pair} takes no dataset; leave it out")
        return None, None
    if request.dataset is None:
        raise InvalidInput(
            ("body", "dataset"), f"{pair} needs a dataset of {backend.data_task} data"
        )
    dataset, version = dataset_versions.resolve(session=session, ref=request.dataset)
    if not formats.can_feed(version.format, backend.data_task):
        fitting = ", ".join(formats.formats_for_task(backend.data_task))
        raise InvalidInput(
            ("body", "dataset"),
            f"dataset {dataset.name!r} has format {version.format!r}; "
            f"{backend.backend}/{backend.algorithm} needs {backend.data_task} data "
            f"(formats: {fitting})",
        )
    return dataset, version


def check_request(
    *, session: Session, request: JobCreate
) -> tuple[Backend, BaseModel, DatasetEntry | None, DatasetVersion | None]:
    """Every check of `validate` but the model's (a pipeline stage may get its model later)."""
    backend = get_backend(request.backend, request.algorithm)
    parameters = validate_parameters(backend, request.hyperparameters, gpus=request.resources.gpus)
    dataset, version = _dataset_of(session, request, backend)
    reward = getattr(parameters, "reward", None)
    if isinstance(reward, str):
        rewards.resolve(session=session, choice=reward, platform_dir="")
    unfit = capacity_check(
        scheduling.demand_of(request.resources.model_dump()),
        scheduling.all_slots(session, include_occupied=True),
    )
    if unfit is not None:  # a job that can never fit is refused, not queued forever
        raise InvalidInput(("body", "resources"), unfit)
    return backend, parameters, dataset, version


def request_hash(request: JobCreate) -> str:
    """Fingerprint of a submission, to tell a replay from a different request."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _normalized_spec(checked: ValidatedJob, rules: Sequence[AlertRule]) -> dict[str, Any]:
    alerts = [rule.model_dump(mode="json") for rule in rules]
    return ({"alerts": alerts} if alerts else {}) | {
        "backend": checked.backend.backend,
        "algorithm": checked.backend.algorithm,
        "model": checked.model.name if checked.model else None,
        "dataset": checked.dataset.name if checked.dataset else None,
        **(
            {"dataset_version": checked.dataset_version.number}
            if checked.dataset_version is not None
            else {}
        ),
        **(
            {"validation": checked.request.validation.model_dump(mode="json", exclude_none=True)}
            if checked.request.validation is not None
            else {}
        ),
        "hyperparameters": checked.parameters.model_dump(mode="json"),
        "resources": checked.request.resources.model_dump(mode="json", exclude_none=True),
        "policy": checked.request.policy.model_dump(mode="json"),
    }


def alert_rules_for(*, session: Session, request: JobCreate) -> list[AlertRule]:
    """The job's own rules; the platform's defaults when the request does not set `alerts`."""
    if "alerts" in request.model_fields_set:
        return list(request.alerts)
    rules, _ = alert_defaults.default_rules(session=session)
    return rules


def policy_of(job: Job) -> JobPolicy:
    """The job's policy (jobs stored before policies existed get the defaults)."""
    return JobPolicy.model_validate(job.spec.get("policy") or {})


def project_of(session: Session, job_id: int) -> int | None:
    """The id of the project a job belongs to (None: none stored, or no such job)."""
    return session.exec(select(Job.project_id).where(col(Job.id) == job_id)).first()


def project_through_job(session: Session, table: Any, row_id: int) -> int | None:
    """The project of a row whose work is a job (its `job_id`: an evaluation, a merge)."""
    return session.exec(
        select(Job.project_id)
        .join(table, col(table.job_id) == col(Job.id))
        .where(col(table.id) == row_id)
    ).first()


def submit(
    *,
    session: Session,
    request: JobCreate,
    actor: str,
    idempotency_key: str | None = None,
    settings: Settings | None = None,
    project_id: int | None = None,
    user_id: int | None = None,
) -> tuple[Job, bool]:
    """Store a new QUEUED job, or return the one an earlier identical request created.

    Returns (job, created). Nothing is written when validation fails. With settings, a GPU
    job is sized first (compute admission): refused when it cannot fit, its prediction kept.
    """
    fingerprint = request_hash(request)
    if idempotency_key is not None:
        earlier = _by_idempotency_key(session, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier, False
    checked = validate(session=session, request=request)
    sized, warning = None, None
    if settings is not None and checked.model is not None:
        sized, warning = compute.admit(
            session=session,
            settings=settings,
            backend=checked.backend.backend,
            algorithm=checked.backend.algorithm,
            model=checked.model,
            parameters=checked.parameters,
            hyperparameters=dict(request.hyperparameters),
            resources=request.resources.model_dump(),
            dataset_id=checked.dataset.id if checked.dataset else None,
            dataset_version=checked.dataset_version.number if checked.dataset_version else None,
        )
    from training_platform.projects.service import check_usable

    for field, entry in (("model", checked.model), ("dataset", checked.dataset)):
        if entry is not None:
            check_usable(
                session=session,
                project_id=project_id,
                field=("body", field),
                kind=field,
                entry=entry,
            )
    spec = _normalized_spec(checked, alert_rules_for(session=session, request=request))
    if project_id is not None:  # as resolved by the caller (request.project, or its work's)
        from training_platform.projects.models import Project

        project = session.get(Project, project_id)
        assert project is not None
        spec["project"] = project.name
    now = utcnow()
    job = Job(
        name=request.name,
        backend=checked.backend.backend,
        algorithm=checked.backend.algorithm,
        model_id=checked.model.id if checked.model else None,
        dataset_id=checked.dataset.id if checked.dataset else None,
        dataset_version=checked.dataset_version.number if checked.dataset_version else None,
        spec=spec,
        priority=request.priority,
        queue=QUEUE_FOR_JOBS,
        status=JobStatus.PENDING.value,
        created_by=actor,
        project_id=project_id,
        user_id=user_id,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        created_at=now,
        updated_at=now,
        # The prepare message is sent right after the commit; recording it here leaves no
        # window in which the supervisor would think it was never sent.
        dispatch_count=1,
        dispatched_at=now,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:
        # Another request with the same key won the race; hand back its job.
        session.rollback()
        if idempotency_key is None:
            raise
        earlier = _by_idempotency_key(session, idempotency_key, fingerprint)
        if earlier is None:
            raise
        return earlier, False
    session.add(
        JobEvent(
            job_id=job.id,  # type: ignore[arg-type]
            attempt=1,
            from_status=None,
            to_status=JobStatus.PENDING.value,
            actor=actor,
            reason=("submitted; the dataset is being prepared" if checked.dataset else "submitted")
            + (f"; memory warning: {warning}" if warning else ""),
            created_at=now,
        )
    )
    if sized is not None:
        compute.record_prediction(
            session=session,
            job_id=job.id,  # type: ignore[arg-type]
            sized=sized,
            backend=job.backend,
            algorithm=job.algorithm,
        )
    session.flush()
    return job, True


def _by_idempotency_key(session: Session, key: str, fingerprint: str) -> Job | None:
    job = session.exec(select(Job).where(Job.idempotency_key == key)).first()
    if job is not None and job.request_hash != fingerprint:
        raise InvalidInput(
            ("header", "Idempotency-Key"),
            f"Idempotency-Key {key!r} was already used for a different request (job {job.id})",
        )
    return job


def run_dir_for(settings: Settings, job: Job) -> Path:
    """Where the current attempt of the job runs: TP_HOME/runs/<job>/attempt-<n>."""
    return attempt_dir(settings, job, job.attempt)


def attempt_dir(settings: Settings, job: Job, attempt: int) -> Path:
    """Where one attempt of the job runs (or ran)."""
    return settings.runs_dir / str(job.id) / f"attempt-{attempt}"


def launch_context(
    *,
    session: Session,
    settings: Settings,
    job_spec: dict[str, Any],
    backend: Backend,
    parameters: BaseModel,
    model: ModelEntry | None,
    dataset_path: Path | None,
    run_dir: Path,
    validation_path: Path | None = None,
    python: str,
    resume_from: Path | None = None,
    devices: tuple[int, ...] = (),
    simulated_devices: bool = False,
) -> LaunchContext:
    """Resolve catalog entries and inputs to what the backend writes into the plan."""
    platform_dir = str(Path(training_platform.__file__).resolve().parent)
    reward = getattr(parameters, "reward", None)
    reward_path, reward_function = (
        rewards.resolve(
            session=session, choice=reward, platform_dir=platform_dir, home=settings.home
        )
        if isinstance(reward, str)
        else (None, None)
    )
    location, is_local = catalog.model_location(settings, model) if model else ("", True)
    endpoint_ref = getattr(parameters, "endpoint", None)
    endpoint, endpoint_key = None, None
    if isinstance(endpoint_ref, str):
        from training_platform.serving.service import launch_view

        endpoint, endpoint_key = launch_view(session=session, settings=settings, ref=endpoint_ref)
    return LaunchContext(
        models=_catalog_models(session, settings, parameters),
        run_dir=str(run_dir),
        python=python,
        model_path=location,
        dataset_path=str(dataset_path) if dataset_path else "",
        validation_path=str(validation_path) if validation_path else None,
        dataset_format=backend.data_task or "",
        model_is_local=is_local,
        gpus=int(job_spec.get("resources", {}).get("gpus", 0)),
        devices=devices,
        simulated_devices=simulated_devices,
        cpu_threads=settings.train_cpu_threads,
        resume_from=str(resume_from) if resume_from else None,
        reward_path=reward_path,
        reward_function=reward_function,
        platform_dir=platform_dir,
        endpoint=endpoint,
        endpoint_key=endpoint_key,
        # Only this node's: a remote host's vLLM (if any) is in its platform environment.
        vllm_python=(settings.resolved_vllm_python or "") if python == sys.executable else "",
    )


def _catalog_models(session: Session, settings: Settings, parameters: BaseModel) -> dict[int, str]:
    """The directories of the catalog models the parameters name by id (a merge's inputs)."""
    named = getattr(parameters, "catalog_models", None)
    if named is None:
        return {}
    found: dict[int, str] = {}
    for model_id in sorted(named()):
        entry = session.get(ModelEntry, model_id)
        if entry is None:
            raise Conflict(f"catalog model {model_id} no longer exists")
        location, is_local = catalog.model_location(settings, entry)
        if not is_local:
            raise InvalidInput(
                ("body", "hyperparameters", "models"),
                f"model {entry.name!r} is a hub id; only local models can be merged",
            )
        found[model_id] = location
    return found


def plan_for_request(
    *, session: Session, settings: Settings, request: JobCreate, python: str
) -> tuple[LaunchPlan, Path]:
    """Dry run: the plan a submission would launch, without storing anything."""
    checked = validate(session=session, request=request)
    run_dir = settings.runs_dir / "<job>" / "attempt-1"
    split = (
        request.validation.model_dump(mode="json", exclude_none=True)
        if request.validation
        else None
    )
    context = launch_context(
        session=session,
        settings=settings,
        job_spec=_normalized_spec(checked, checked.request.alerts),
        backend=checked.backend,
        parameters=checked.parameters,
        model=checked.model,
        dataset_path=(
            datasets.prepared_path(
                settings, checked.dataset_version, checked.backend.data_task, split
            )
            if checked.dataset_version and checked.backend.data_task
            else None
        ),
        validation_path=(
            datasets.prepared_path(
                settings, checked.dataset_version, checked.backend.data_task, split, "validation"
            )
            if split and checked.dataset_version and checked.backend.data_task
            else None
        ),
        run_dir=run_dir,
        python=python,
    )
    return checked.backend.plan(checked.parameters, context), run_dir


def plan_for_job(
    *,
    session: Session,
    settings: Settings,
    job: Job,
    python: str,
    run_dir: str | None = None,
    stage: Callable[[LaunchContext], LaunchContext] | None = None,
) -> LaunchPlan:
    """The plan of the job's current attempt: the launched one if any, else computed now.

    For a remote host, `run_dir` is the run directory there and `stage` moves the inputs
    to the host and rewrites their paths before the backend plans.
    """
    if job.plan is not None:
        return LaunchPlan.from_dict(job.plan)
    backend = get_backend(job.backend, job.algorithm)
    parameters = validate_parameters(
        backend, job.spec["hyperparameters"], gpus=int(job.spec.get("resources", {}).get("gpus", 0))
    )
    model = session.get(ModelEntry, job.model_id) if job.model_id is not None else None
    dataset = session.get(DatasetEntry, job.dataset_id) if job.dataset_id is not None else None
    if (model is None and job.model_id is not None) or (
        dataset is None and backend.data_task is not None
    ):
        raise Conflict(f"job {job.id} names a model or dataset that no longer exists")
    inputs = job.inputs or {}
    prepared = inputs.get("dataset")
    dataset_path = (
        catalog.managed_path(settings.home, prepared["path"])
        if prepared
        else datasets.prepared_path(
            settings,
            dataset_versions.pinned(session=session, entry=dataset, number=job.dataset_version),
            backend.data_task,
        )
        if dataset is not None and backend.data_task is not None
        else None
    )
    held = (prepared or {}).get("validation")
    validation_path = catalog.managed_path(settings.home, held["path"]) if held else None
    resume = inputs.get("resume_from")
    assert job.id is not None
    leases = [
        lease
        for lease in scheduling.active_leases(session=session, job_id=job.id)
        if lease.kind == "gpu"
    ]
    context = launch_context(
        session=session,
        settings=settings,
        job_spec=job.spec,
        backend=backend,
        parameters=parameters,
        model=model,
        dataset_path=dataset_path,
        validation_path=validation_path,
        run_dir=Path(run_dir) if run_dir else run_dir_for(settings, job),
        python=python,
        resume_from=catalog.managed_path(settings.home, resume["path"]) if resume else None,
        devices=tuple(lease.device_index for lease in leases),
        simulated_devices=any(lease.simulated for lease in leases),
    )
    return backend.plan(parameters, stage(context) if stage else context)


def get_job(*, session: Session, job_id: int) -> Job:
    """A job, or NotFound."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


JOB_SORT_KEYS = ("id", "name", "status", "priority", "algorithm", "created_at", "updated_at")


def list_jobs(
    *,
    session: Session,
    statuses: Sequence[JobStatus] = (),
    search: str | None = None,
    algorithms: Sequence[str] = (),
    backends: Sequence[str] = (),
    sort: str = "-id",
    limit: int = 50,
    offset: int = 0,
    projects: set[int] | None = None,
) -> tuple[Sequence[Job], int]:
    """A page of jobs and the total matching: by status, algorithm, backend and a name search,
    of the given projects (None: all; work without a project counts as the default's).

    `sort` is one of JOB_SORT_KEYS, with a leading `-` for descending; ties go newest first.
    """
    conditions: list[Any] = []
    if projects is not None:
        conditions.append(col(Job.project_id).in_(projects) | col(Job.project_id).is_(None))
    if statuses:
        conditions.append(col(Job.status).in_([s.value for s in statuses]))
    if algorithms:
        conditions.append(col(Job.algorithm).in_(list(algorithms)))
    if backends:
        conditions.append(col(Job.backend).in_(list(backends)))
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(func.lower(col(Job.name)).like(f"%{escaped.lower()}%", escape="\\"))
    descending = sort.startswith("-")
    key = sort.removeprefix("-")
    if key not in JOB_SORT_KEYS:
        raise InvalidInput(("query", "sort"), f"sort by one of {', '.join(JOB_SORT_KEYS)}")
    column = col(getattr(Job, key))
    order = [column.desc() if descending else column.asc()]
    if key != "id":
        order.append(col(Job.id).desc())
    total = session.exec(select(func.count()).select_from(Job).where(*conditions)).one()
    page = session.exec(select(Job).where(*conditions).order_by(*order).offset(offset).limit(limit))
    return page.all(), int(total)


def names_of(*, session: Session, jobs: Sequence[Job]) -> dict[str, dict[int, str]]:
    """Model and dataset names for a page of jobs, in two queries."""
    model_ids = {j.model_id for j in jobs}
    dataset_ids = {j.dataset_id for j in jobs}
    models = session.exec(select(ModelEntry).where(col(ModelEntry.id).in_(model_ids))).all()
    datasets = session.exec(select(DatasetEntry).where(col(DatasetEntry.id).in_(dataset_ids))).all()
    return {
        "model": {m.id: m.name for m in models if m.id is not None},
        "dataset": {d.id: d.name for d in datasets if d.id is not None},
    }


def until_settled(
    session: Session,
    change: Callable[[], T],
    stale: tuple[type[Exception], ...] = (StaleJob,),
) -> T:
    """Run a user's state change again, on a fresh read, when another process moved the job
    first (a worker queued it, the supervisor finished it): the user asked about the job, not
    about the version they happened to read. The caller owns the transaction."""
    for remaining in reversed(range(SETTLE_ATTEMPTS)):
        try:
            return change()
        except stale:
            if not remaining:
                raise
            session.rollback()  # expires what was read: the next try reads it again
    raise AssertionError("unreachable")


def cancel(*, session: Session, job_id: int, actor: str) -> Job:
    """Cancel a job: at once if it has no process, else ask its process group to stop.

    Cancelling a failed job whose retry policy has scheduled another attempt calls that
    attempt off.
    """
    job = get_job(session=session, job_id=job_id)
    status = JobStatus(job.status)
    if status is JobStatus.CANCELLING:
        return job
    if status is JobStatus.FAILED and job.retry_at is not None:
        job.retry_at = None
        session.add(job)
        note(session, job, actor=actor, reason="scheduled retry called off")
        return job
    if status in TERMINAL:
        raise Conflict(f"job {job_id} is already {status.value}; there is nothing to cancel")
    has_process = job.pause_mode == SUSPEND or status not in (
        JobStatus.PENDING,
        JobStatus.QUEUED,
        JobStatus.PAUSED,
        JobStatus.RESUMING,
    )
    if not has_process:
        return transition(session, job, JobStatus.CANCELLED, actor=actor, reason="cancelled")
    return transition(
        session,
        job,
        JobStatus.CANCELLING,
        actor=actor,
        reason="cancel requested",
        values={"cancel_requested_at": utcnow()},
    )


def pause(*, session: Session, job_id: int, actor: str, mode: str = CHECKPOINT) -> Job:
    """Ask a running job to checkpoint and stop, or to be suspended in place.

    The supervisor carries it out: it asks the trainer for a checkpoint (or stops the process
    group) and moves the job to PAUSED.
    """
    job = get_job(session=session, job_id=job_id)
    status = JobStatus(job.status)
    if status not in (JobStatus.RUNNING, JobStatus.STALLED):
        raise Conflict(f"job {job_id} is {status.value}; only a running job can be paused")
    if mode == CHECKPOINT and not get_backend(job.backend, job.algorithm).graceful_stop:
        raise Conflict(
            f"{job.backend} runs cannot save a checkpoint on request; pause with mode 'suspend'"
        )
    if mode == SUSPEND and job.runner not in ("local", "ssh"):
        raise Conflict(f"mode 'suspend' needs a local run; job {job_id} runs on {job.runner}")
    reason = (
        "pause requested: checkpoint and stop"
        if mode == CHECKPOINT
        else "pause requested: suspend the process group"
    )
    return transition(
        session,
        job,
        JobStatus.PAUSING,
        actor=actor,
        reason=reason,
        values={"pause_mode": mode, "stop_requested_at": utcnow()},
    )


def resume(*, session: Session, settings: Settings, job_id: int, actor: str) -> Job:
    """Continue a paused job: a suspended run in place, a checkpointed one as a new attempt.

    The new attempt starts from the checkpoint the pause saved, on the same resources, and
    waits for devices like a queued job (status RESUMING until a worker starts it).
    """
    job = get_job(session=session, job_id=job_id)
    status = JobStatus(job.status)
    if status is not JobStatus.PAUSED:
        raise Conflict(f"job {job_id} is {status.value}; only a paused job can be resumed")
    if job.pause_mode == SUSPEND:
        return transition(
            session, job, JobStatus.RESUMING, actor=actor, reason="resume requested: continue"
        )
    checkpoint = latest_checkpoint(session=session, settings=settings, job=job)
    inputs = dict(job.inputs or {})
    inputs.pop("resume_from", None)
    reason = f"resume requested: attempt {job.attempt + 1}"
    if checkpoint is not None:
        inputs["resume_from"] = _resume_input(settings, job, checkpoint)
        reason += f" from the checkpoint at step {checkpoint.step}"
        _forget_after(session, job_id, checkpoint.step)
    else:
        # Paused before its first checkpoint: it starts over, so the old curve goes.
        session.execute(delete(JobMetric).where(col(JobMetric.job_id) == job_id))
        reason += " from the start (the pause came before any checkpoint)"
    return transition(
        session,
        job,
        JobStatus.RESUMING,
        actor=actor,
        reason=reason,
        values={**_new_attempt_values(job), "inputs": inputs, "queued_at": utcnow()},
    )


def _forget_after(session: Session, job_id: int, step: int) -> None:
    """Drop metrics past the checkpoint a new attempt resumes from: that stretch is rerun."""
    session.execute(
        delete(JobMetric).where(col(JobMetric.job_id) == job_id, col(JobMetric.step) > step)
    )


def _resume_input(settings: Settings, job: Job, checkpoint: Checkpoint) -> dict[str, Any]:
    directory = attempt_dir(settings, job, checkpoint.attempt) / checkpoint.path
    return {
        "attempt": checkpoint.attempt,
        "step": checkpoint.step,
        "path": str(directory.relative_to(settings.home)),
    }


def _new_attempt_values(job: Job) -> dict[str, Any]:
    """Columns reset for the next attempt of a job."""
    return {
        "attempt": job.attempt + 1,
        "exit_code": None,
        "error": None,
        "end_cause": None,
        "retry_at": None,
        "pause_mode": None,
        "preemptible": False,
        "preempted_at": None,
        "stop_requested_at": None,
        "last_progress_at": None,
        "outputs": None,
        "plan": None,
        "runner": None,
        "runner_handle": None,
        "node": None,
        "log_offset": 0,
        "metrics_offset": 0,
        "progress_step": None,
        "progress_total": None,
        "cancel_requested_at": None,
        "dispatched_at": None,
        "queued_at": None,
        "started_at": None,
        "finished_at": None,
    }


def latest_checkpoint(*, session: Session, settings: Settings, job: Job) -> Checkpoint | None:
    """The newest checkpoint of any attempt of the job whose files still exist."""
    found = session.exec(
        select(Checkpoint)
        .where(Checkpoint.job_id == job.id, col(Checkpoint.final).is_(False))
        .order_by(col(Checkpoint.step).desc(), col(Checkpoint.attempt).desc())
    ).all()
    for checkpoint in found:
        directory = attempt_dir(settings, job, checkpoint.attempt) / checkpoint.path
        if directory.is_dir():
            return checkpoint
    return None


def retry(
    *,
    session: Session,
    settings: Settings,
    job_id: int,
    actor: str,
    from_checkpoint: bool | None = False,
) -> Job:
    """Queue a new attempt of a failed or cancelled job: from scratch, or from its last checkpoint.

    `from_checkpoint=None` resumes from the newest checkpoint when there is one, else starts over
    (what the retry policy does).

    From scratch clears the old attempt's metrics (the new curve starts at step 0); from a
    checkpoint keeps them up to the checkpoint's step, where the step counter goes on.
    """
    job = get_job(session=session, job_id=job_id)
    status = JobStatus(job.status)
    if status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise Conflict(f"job {job_id} is {status.value}; only failed or cancelled jobs can retry")
    inputs: dict[str, Any] = {}
    reason = f"retry: attempt {job.attempt + 1}"
    checkpoint = (
        None
        if from_checkpoint is False
        else latest_checkpoint(session=session, settings=settings, job=job)
    )
    if from_checkpoint and checkpoint is None:
        raise Conflict(f"job {job_id} has no checkpoint to resume from")
    if checkpoint is not None:
        inputs["resume_from"] = _resume_input(settings, job, checkpoint)
        reason += f", resuming from step {checkpoint.step}"
        _forget_after(session, job_id, checkpoint.step)
    else:
        session.execute(delete(JobMetric).where(col(JobMetric.job_id) == job_id))
    return transition(
        session,
        job,
        JobStatus.PENDING,
        actor=actor,
        reason=reason,
        values={
            **_new_attempt_values(job),
            "inputs": inputs or None,
            "dispatch_count": job.dispatch_count + 1,
            "dispatched_at": utcnow(),
        },
    )


def delete_job(*, session: Session, settings: Settings, job_id: int) -> None:
    """Delete a finished job, its rows and its local run directories."""
    job = get_job(session=session, job_id=job_id)
    if JobStatus(job.status) not in TERMINAL:
        raise Conflict(f"job {job_id} is {job.status}; cancel it before deleting it")
    for table in (JobMetric, JobLogChunk, Checkpoint, JobEvent):
        session.execute(delete(table).where(col(table.job_id) == job_id))
    session.delete(job)
    session.flush()
    job_root = settings.runs_dir / str(job_id)
    if job_root.is_dir():
        shutil.rmtree(job_root, ignore_errors=True)


def record_dispatch(*, session: Session, job: Job) -> Job:
    """Note that a start message is about to be sent (the supervisor resends lost ones)."""
    job.dispatch_count += 1
    job.dispatched_at = utcnow()
    session.add(job)
    session.flush()
    return job


def events(*, session: Session, job_id: int) -> Sequence[JobEvent]:
    """The job's status changes, oldest first."""
    get_job(session=session, job_id=job_id)
    return session.exec(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))
    ).all()


def checkpoints(*, session: Session, job_id: int) -> Sequence[Checkpoint]:
    """The job's checkpoints, oldest first."""
    get_job(session=session, job_id=job_id)
    return session.exec(
        select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(col(Checkpoint.id))
    ).all()


def read_log(
    *, session: Session, job_id: int, attempt: int | None, offset: int, limit: int
) -> tuple[int, int, bytes, bool]:
    """Stored log bytes from offset: (attempt, next_offset, data, complete)."""
    job = get_job(session=session, job_id=job_id)
    attempt = job.attempt if attempt is None else attempt
    if not 1 <= attempt <= job.attempt:
        raise NotFound(f"job {job_id} has no attempt {attempt}")
    chunks = session.exec(
        select(JobLogChunk)
        .where(
            JobLogChunk.job_id == job_id,
            JobLogChunk.attempt == attempt,
            JobLogChunk.offset + func.length(JobLogChunk.data) > offset,
        )
        .order_by(col(JobLogChunk.offset))
    ).all()
    data = bytearray()
    for chunk in chunks:
        start = max(0, offset - chunk.offset)
        data.extend(chunk.data[start:])
        if len(data) >= limit:
            break
    data = data[:limit]
    if data and len(data) == limit:
        # Cut at a line end so that a client never splits a line or a UTF-8 character.
        cut = data.rfind(b"\n")
        if cut >= 0:
            data = data[: cut + 1]
    ended = attempt < job.attempt or JobStatus(job.status) in TERMINAL
    next_offset = offset + len(data)
    stored_end = chunks[-1].offset + len(chunks[-1].data) if chunks else offset
    complete = ended and next_offset >= stored_end
    return attempt, next_offset, bytes(data), complete


def read_log_before(
    *, session: Session, job_id: int, attempt: int | None, before: int, limit: int
) -> tuple[int, int, bytes]:
    """Up to `limit` stored log bytes that end at byte `before`, from the start of a line
    (unless one line is longer than that): (attempt, start offset, data).

    What a page that shows the end of a log reads to show the lines above it."""
    job = get_job(session=session, job_id=job_id)
    attempt = job.attempt if attempt is None else attempt
    if not 1 <= attempt <= job.attempt:
        raise NotFound(f"job {job_id} has no attempt {attempt}")
    size = session.exec(
        select(func.max(JobLogChunk.offset + func.length(JobLogChunk.data))).where(
            JobLogChunk.job_id == job_id, JobLogChunk.attempt == attempt
        )
    ).one()
    size = int(size or 0)
    if before > size:
        raise InvalidInput(
            ("query", "before"),
            f"before {before} is past the end of attempt {attempt}'s log ({size} bytes stored)",
        )
    start = max(0, before - limit)
    chunks = session.exec(
        select(JobLogChunk)
        .where(
            JobLogChunk.job_id == job_id,
            JobLogChunk.attempt == attempt,
            JobLogChunk.offset < before,
            JobLogChunk.offset + func.length(JobLogChunk.data) > start,
        )
        .order_by(col(JobLogChunk.offset))
    ).all()
    data = b"".join(c.data[max(0, start - c.offset) : before - c.offset] for c in chunks)
    if start > 0 and b"\n" in data[:-1]:
        cut = data.index(b"\n") + 1  # the first line is only a part: it starts earlier
        data, start = data[cut:], start + cut
    return attempt, start, data


def read_metrics(
    *,
    session: Session,
    job_id: int,
    since_step: int | None,
    keys: Sequence[str],
    limit: int,
    until_step: int | None = None,
    max_steps: int | None = None,
) -> Sequence[tuple[int, str, float | None]]:
    """Metric values (step, key, value) after since_step (all if None) up to until_step, by
    step then key.

    With max_steps, a long run is thinned to about that many evenly spaced steps (the
    first and last included), so a 100k-step curve still draws fast.
    """
    get_job(session=session, job_id=job_id)
    conditions = _metric_conditions(job_id, since_step, until_step, keys)
    query = select(JobMetric.step, JobMetric.key, JobMetric.value).where(*conditions)
    if max_steps is not None:
        low, high = session.exec(
            select(func.min(JobMetric.step), func.max(JobMetric.step)).where(*conditions)
        ).one()
        if low is not None and high is not None and high - low + 1 > max_steps:
            stride = -(-(high - low + 1) // max_steps)
            query = query.where(
                ((col(JobMetric.step) - low) % stride == 0) | (col(JobMetric.step) == high)
            )
    # Plain rows, not ORM objects: a thinned 100k-step curve is tens of thousands of them.
    rows = session.exec(query.order_by(col(JobMetric.step), col(JobMetric.key)).limit(limit))
    return [(step, key, value) for step, key, value in rows]


def _metric_conditions(
    job_id: int, since_step: int | None, until_step: int | None, keys: Sequence[str]
) -> list[Any]:
    conditions: list[Any] = [col(JobMetric.job_id) == job_id]
    if since_step is not None:
        conditions.append(col(JobMetric.step) > since_step)
    if until_step is not None:
        conditions.append(col(JobMetric.step) <= until_step)
    if keys:
        conditions.append(col(JobMetric.key).in_(list(keys)))
    return conditions


EXPORT_BATCH = 5000


def export_metrics(
    *, engine: Engine, job_id: int, keys: Sequence[str], fmt: str
) -> Iterator[bytes]:
    """Every stored value of a job as CSV or NDJSON, in batches read off a cursor: the whole
    series is never in memory at once. The caller checks the job exists first."""
    columns = (
        col(JobMetric.step),
        col(JobMetric.attempt),
        col(JobMetric.key),
        col(JobMetric.value),
    )
    query = (
        select(*columns)
        .where(*_metric_conditions(job_id, None, None, keys))
        .order_by(col(JobMetric.step), col(JobMetric.key))
    )
    with Session(engine) as session:
        if fmt == "csv":
            yield b"step,attempt,key,value\r\n"
        rows = session.execute(query.execution_options(yield_per=EXPORT_BATCH))
        for batch in rows.partitions():
            yield _export_batch(batch, fmt)


def _export_batch(batch: Sequence[Any], fmt: str) -> bytes:
    if fmt == "ndjson":
        return "".join(
            json.dumps({"step": step, "attempt": attempt, "key": key, "value": value}) + "\n"
            for step, attempt, key, value in batch
        ).encode()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerows(batch)  # a missing value (NaN, infinity) is an empty field
    return out.getvalue().encode()


def metric_keys(*, session: Session, job_id: int) -> list[str]:
    """Every metric key the job has reported."""
    rows = session.exec(select(JobMetric.key).where(JobMetric.job_id == job_id).distinct()).all()
    return sorted(rows)


def log_tail(*, session: Session, job_id: int, attempt: int, lines: int = 30) -> str:
    """The last lines of an attempt's stored log."""
    chunks = session.exec(
        select(JobLogChunk)
        .where(JobLogChunk.job_id == job_id, JobLogChunk.attempt == attempt)
        .order_by(col(JobLogChunk.offset).desc())
        .limit(8)
    ).all()
    data = b"".join(c.data for c in reversed(chunks))
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def metrics_at_steps(
    *, session: Session, job_id: int, steps: set[int]
) -> dict[int, dict[str, float | None]]:
    """The metrics reported at each of the given steps."""
    if not steps:
        return {}
    rows = session.exec(
        select(JobMetric).where(JobMetric.job_id == job_id, col(JobMetric.step).in_(steps))
    ).all()
    found: dict[int, dict[str, float | None]] = {}
    for row in rows:
        found.setdefault(row.step, {})[row.key] = row.value
    return found


def last_metric_values(*, session: Session, job_id: int) -> dict[str, float | None]:
    """The value each metric key had at the last step it was reported."""
    last = (
        select(JobMetric.key, func.max(JobMetric.step).label("step"))
        .where(JobMetric.job_id == job_id)
        .group_by(col(JobMetric.key))
        .subquery()
    )
    rows = session.exec(
        select(JobMetric.key, JobMetric.value)
        .join(
            last,
            (col(JobMetric.key) == last.c.key) & (col(JobMetric.step) == last.c.step),
        )
        .where(JobMetric.job_id == job_id)
    ).all()
    return {key: value for key, value in rows}


def _holds_model(directory: Path) -> bool:
    """A saved model (config.json) or a PEFT adapter (adapter_config.json) is there."""
    return (directory / "config.json").is_file() or (directory / "adapter_config.json").is_file()


def final_model_path(*, session: Session, settings: Settings, job_id: int) -> str:
    """The final model of a succeeded job, relative to TP_HOME (for registering it)."""
    job = get_job(session=session, job_id=job_id)
    model = (job.outputs or {}).get("model")
    if job.status != JobStatus.SUCCEEDED.value or not isinstance(model, str):
        raise InvalidInput(
            ("body", "job_id"), f"job {job_id} has no final model (it is {job.status})"
        )
    directory = run_dir_for(settings, job) / model
    if not _holds_model(directory):
        raise InvalidInput(("body", "job_id"), f"job {job_id}'s model files are gone")
    return str(directory.relative_to(settings.home))


def checkpoint_path(*, session: Session, settings: Settings, job_id: int, step: int) -> str:
    """A job's checkpoint at `step` (its latest attempt's), relative to TP_HOME."""
    job = get_job(session=session, job_id=job_id)
    found = session.exec(
        select(Checkpoint)
        .where(
            Checkpoint.job_id == job_id,
            Checkpoint.step == step,
            col(Checkpoint.final).is_(False),
        )
        .order_by(col(Checkpoint.attempt).desc())
    ).first()
    if found is None:
        steps = sorted({c.step for c in checkpoints(session=session, job_id=job_id) if not c.final})
        have = ", ".join(map(str, steps)) if steps else "none"
        raise InvalidInput(
            ("body", "checkpoint", "step"),
            f"job {job_id} has no checkpoint at step {step} (it has: {have})",
        )
    directory = attempt_dir(settings, job, found.attempt) / found.path
    if not _holds_model(directory):
        raise InvalidInput(
            ("body", "checkpoint"),
            f"job {job_id}'s checkpoint at step {step} is not on this node or its files are gone",
        )
    return str(directory.relative_to(settings.home))


def kept_checkpoint_steps(*, session: Session, settings: Settings, job_id: int) -> list[int]:
    """Steps of the job's checkpoints whose files are still on this node (a trainer deletes
    old ones past its save_total_limit), in order."""
    job = get_job(session=session, job_id=job_id)
    return sorted(
        {
            c.step
            for c in checkpoints(session=session, job_id=job_id)
            if not c.final and _holds_model(attempt_dir(settings, job, c.attempt) / c.path)
        }
    )
