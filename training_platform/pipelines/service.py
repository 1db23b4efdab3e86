"""Pipelines service: submit, read, cancel, pause, resume and retry pipelines; lineage of jobs.

Functions flush; the caller commits, then lets the engine (pipelines/engine.py) advance the
pipeline, which starts stage jobs and finishes the pipeline. Knows nothing of HTTP or Celery.
"""

from __future__ import annotations

import copy
import hashlib
import json
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry, ModelEntry
from training_platform.core.errors import Conflict, InvalidInput, NotFound
from training_platform.datasets import formats
from training_platform.datasets import versions as dataset_versions
from training_platform.evaluation import scoring
from training_platform.jobs import service as jobs
from training_platform.jobs.models import Job, JobEvent
from training_platform.jobs.schemas import JobCreate
from training_platform.pipelines import definition as dsl
from training_platform.pipelines import templates
from training_platform.pipelines.definition import PipelineDefinition, StageDefinition
from training_platform.pipelines.models import (
    Pipeline,
    PipelineEvent,
    PipelineStage,
    PipelineStageRun,
)
from training_platform.pipelines.schemas import PipelineSubmit
from training_platform.pipelines.state import (
    PIPELINE_TERMINAL,
    PipelineStatus,
    StageStatus,
    move_pipeline,
    move_stage,
)

NAME_LIMIT = 200


def job_actor(pipeline_id: int) -> str:
    """How a pipeline signs the jobs it creates, pauses and resumes."""
    return f"pipeline:{pipeline_id}"


def job_name(pipeline_name: str, stage: str) -> str:
    """The name of a stage's job: `<pipeline> / <stage>`."""
    suffix = f" / {stage}"
    return pipeline_name[: NAME_LIMIT - len(suffix)] + suffix


def stage_key(pipeline_id: int, stage: str, run: int) -> str:
    """The idempotency key of a stage run's job: one job per run, however often it is tried."""
    return f"pipeline-{pipeline_id}-{stage}-run-{run}"


def output_model_name(pipeline_id: int, stage: str, run: int) -> str:
    """The catalog name of a stage's final model: pipeline-<id>.<stage>[.r<run>]."""
    return f"pipeline-{pipeline_id}.{stage}" + (f".r{run}" if run > 1 else "")


# --- definitions --------------------------------------------------------------------------


def load_source(request: PipelineSubmit) -> tuple[dict[str, Any], str | None]:
    """The decoded definition of a submission and the template it came from, if any."""
    if request.template is not None:
        try:
            return copy.deepcopy(templates.get(request.template).data), request.template
        except NotFound as error:
            raise InvalidInput(("body", "template"), error.message) from None
    if request.yaml is not None:
        import yaml  # here: only a YAML submission needs it, not every start of the API

        try:
            data = yaml.safe_load(request.yaml)
        except yaml.YAMLError as error:
            raise InvalidInput(("body", "yaml"), f"not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise InvalidInput(("body", "yaml"), "a pipeline definition must be a mapping")
        return data, None
    assert request.definition is not None
    return copy.deepcopy(request.definition), None


def prepare(*, session: Session, request: PipelineSubmit) -> tuple[PipelineDefinition, str | None]:
    """A submission's definition, overrides applied, every check passed (graph, references,
    and each stage against its backend and the catalog)."""
    data, template = load_source(request)
    if request.name is not None:
        data["name"] = request.name
    if request.priority is not None:
        data["priority"] = request.priority
    definition = dsl.parse(data, request.parameters)
    for name, stage in definition.stages.items():
        check_stage(session=session, pipeline=definition, name=name, stage=stage)
    _pin_datasets(session, definition)
    return definition, template


def _pin_datasets(session: Session, definition: PipelineDefinition) -> None:
    """Name each dataset as `name@N`, the version current at submit: a stage that starts later
    runs on what the pipeline was submitted with, whatever is uploaded meanwhile."""

    def pinned(ref: Any) -> Any:
        if not isinstance(ref, str | int) or dsl.whole_ref(ref) is not None:
            return ref
        entry, version = dataset_versions.resolve(session=session, ref=ref)
        return f"{entry.name}@{version.number}"

    for stage in definition.stages.values():
        if stage.job is not None and stage.job.get("dataset") is not None:
            stage.job["dataset"] = pinned(stage.job["dataset"])
        for step in (stage.evaluate, stage.select):
            if step is not None:
                step.dataset = pinned(step.dataset)
        if stage.merge is not None and stage.merge.sweep is not None:
            stage.merge.sweep.evaluate.dataset = pinned(stage.merge.sweep.evaluate.dataset)


def _stage_error(name: str, loc: Sequence[str | int], message: str) -> InvalidInput:
    return InvalidInput((*dsl.ROOT, "stages", name, *loc), f"stage {name!r}: {message}")


def _number_kind(annotation: Any) -> str:
    """integer, number or other: what a hyperparameter field takes, for reference checks."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _number_kind(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {_number_kind(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else "other"
    if annotation is int:
        return dsl.INTEGER
    if annotation is float:
        return dsl.NUMBER
    return "other"


def check_stage(
    *, session: Session, pipeline: PipelineDefinition, name: str, stage: StageDefinition
) -> None:
    """Check one stage as its job would be checked, leaving out what upstream stages supply."""
    if stage.gate is not None or stage.select is not None:
        _check_step(session, name, stage)
        return
    if stage.merge is not None:
        _check_merge(session, name, stage.merge)
        return
    if stage.evaluate is not None:
        try:
            scoring.parse(stage.evaluate.scorer)
        except InvalidInput as error:
            raise _stage_error(name, ("evaluate", "scorer"), error.message) from None
    request = copy.deepcopy(dsl.job_request(stage))
    model_from_upstream = dsl.whole_ref(request.get("model")) is not None
    if model_from_upstream:
        request["model"] = "upstream"  # resolved when the stage starts
    deferred: dict[str, dsl.StageRef] = {}
    hyperparameters = request.get("hyperparameters")
    if isinstance(hyperparameters, dict):
        for key, value in list(hyperparameters.items()):
            ref = dsl.whole_ref(value)
            if ref is not None:
                deferred[key] = ref
                del hyperparameters[key]
    try:
        job = JobCreate.model_validate(
            {
                **request,
                "name": job_name(pipeline.name, name),
                "priority": pipeline.priority,
            }
        )
    except ValidationError as error:
        first = error.errors()[0]
        raise _stage_error(
            name, dsl.request_loc(stage, tuple(first["loc"])), first["msg"]
        ) from None
    try:
        backend, *_ = jobs.check_request(session=session, request=job)
        if not model_from_upstream:
            if job.model is None:
                raise InvalidInput(("body", "model"), "a stage needs a model or an upstream")
            catalog.resolve_model(session=session, ref=job.model)
    except InvalidInput as error:
        loc = error.loc[1:] if error.loc[:1] == ("body",) else error.loc
        raise _stage_error(name, dsl.request_loc(stage, loc), error.message) from None
    fields = backend.parameters.model_fields
    for key, ref in deferred.items():
        loc = dsl.request_loc(stage, ("hyperparameters", key))
        if key not in fields:
            raise _stage_error(
                name,
                loc,
                f"{backend.backend}/{backend.algorithm} has no hyperparameter {key!r}",
            )
        wants = _number_kind(fields[key].annotation)
        upstream = pipeline.stages[ref.stage]
        gives = dsl.output_type(dsl.kind_of(upstream), ref.output)
        if wants == "other" or (wants == dsl.INTEGER and gives != dsl.INTEGER):
            raise _stage_error(
                name,
                loc,
                f"type mismatch: {ref} is a {gives}, {key} takes "
                f"{'an integer' if wants == dsl.INTEGER else 'no number'}",
            )


def _check_merge(session: Session, name: str, step: dsl.MergeStep) -> None:
    """A merge stage's method rules, and the models it names directly (not upstream ones)."""
    from training_platform.backends.builtin.merge import method_errors

    inputs = [m.model_dump(include={"weight", "density", "gamma", "epsilon"}) for m in step.models]
    shared: dict[str, Any] = step.parameters.given()
    for axis in step.sweep.grid if step.sweep is not None else {}:
        # What the sweep sets is given, for each candidate.
        parts = axis.split(".")
        if len(parts) == 1:
            shared[axis] = 0.5
        elif len(parts) == 3 and parts[1].isdigit() and int(parts[1]) < len(inputs):
            inputs[int(parts[1])][parts[2]] = 0.5
    errors = method_errors(step.method, step.base is not None, inputs, shared)
    if errors:
        loc, message = errors[0]
        raise _stage_error(name, ("merge", *loc), message)
    if step.sweep is not None:
        from training_platform.surgery import service as surgery
        from training_platform.surgery.schemas import SweepCreate

        template = step.model_dump(mode="json", by_alias=True, exclude={"sweep", "policy"})
        template["base"] = {"model": step.base} if step.base is not None else None
        try:
            request = SweepCreate.model_validate(
                {
                    "name": "sweep",
                    "merge": template,
                    "grid": step.sweep.grid,
                    "evaluate": step.sweep.evaluate.model_dump(mode="json"),
                }
            )
            surgery.check_sweep(session=session, request=request)
        except InvalidInput as error:
            where = error.loc[1:] if error.loc[:1] == ("body",) else error.loc
            raise _stage_error(name, ("merge", "sweep", *where), error.message) from None
        except ValidationError as error:
            first = error.errors()[0]
            raise _stage_error(name, ("merge", "sweep", *first["loc"]), first["msg"]) from None
    for loc, value in step.model_fields_with_refs():
        if dsl.whole_ref(value) is not None:
            continue
        try:
            catalog.resolve_model(session=session, ref=value)
        except InvalidInput as error:
            raise _stage_error(name, ("merge", *loc), error.message) from None


def _check_step(session: Session, name: str, stage: StageDefinition) -> None:
    """A gate's scorer; a select's scorer, dataset (prompt/answer data) and job."""
    step: Any = stage.gate if stage.gate is not None else stage.select
    field = "gate" if stage.gate is not None else "select"
    try:
        if step.scorer is not None:
            scoring.parse(step.scorer)
    except InvalidInput as error:
        raise _stage_error(name, (field, "scorer"), error.message) from None
    if stage.select is None:
        return
    try:
        dataset, _ = dataset_versions.resolve(session=session, ref=stage.select.dataset)
    except InvalidInput as error:
        raise _stage_error(name, ("select", "dataset"), error.message) from None
    if not formats.can_feed(dataset.format, "rl"):
        raise _stage_error(
            name,
            ("select", "dataset"),
            f"dataset {dataset.name!r} has format {dataset.format!r}; "
            "an evaluation needs prompt/answer data",
        )
    if isinstance(stage.select.job, int) and session.get(Job, stage.select.job) is None:
        raise _stage_error(name, ("select", "job"), f"job {stage.select.job} not found")


def request_hash(request: PipelineSubmit) -> str:
    """Fingerprint of a submission, to tell a replay from a different request."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit(
    *,
    session: Session,
    request: PipelineSubmit,
    actor: str,
    idempotency_key: str | None = None,
    project_id: int | None = None,
    user_id: int | None = None,
) -> tuple[Pipeline, bool]:
    """Store a running pipeline with its stages pending (its work of `project_id`, resolved
    by the caller from request.project); the engine starts the first stages.

    Returns (pipeline, created). Nothing is written when a check fails.
    """
    fingerprint = request_hash(request)
    if idempotency_key is not None:
        earlier = _by_idempotency_key(session, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier, False
    definition, template = prepare(session=session, request=request)
    order = dsl.topological_order(definition.stages)
    pipeline = Pipeline(
        name=definition.name,
        description=definition.description,
        definition=definition.model_dump(mode="json"),
        parameters=dict(definition.parameters),
        template=template,
        priority=definition.priority,
        status=PipelineStatus.RUNNING.value,
        created_by=actor,
        project_id=project_id,
        user_id=user_id,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
    )
    session.add(pipeline)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        earlier = _by_idempotency_key(session, idempotency_key, fingerprint)
        if earlier is None:
            raise
        return earlier, False
    assert pipeline.id is not None
    for position, name in enumerate(order):
        stage = definition.stages[name]
        session.add(
            PipelineStage(
                pipeline_id=pipeline.id,
                name=name,
                kind=dsl.kind_of(stage),
                position=position,
                depends_on=list(stage.depends_on),
                spec=stage.model_dump(mode="json"),
                status=StageStatus.PENDING.value,
            )
        )
    session.add(
        PipelineEvent(
            pipeline_id=pipeline.id,
            to_status=PipelineStatus.RUNNING.value,
            actor=actor,
            reason=f"submitted with {len(order)} stage(s)"
            + (f" from template {template}" if template else ""),
        )
    )
    session.flush()
    return pipeline, True


def _by_idempotency_key(session: Session, key: str, fingerprint: str) -> Pipeline | None:
    pipeline = session.exec(select(Pipeline).where(Pipeline.idempotency_key == key)).first()
    if pipeline is not None and pipeline.request_hash != fingerprint:
        raise InvalidInput(
            ("header", "Idempotency-Key"),
            f"Idempotency-Key {key!r} was already used for a different request "
            f"(pipeline {pipeline.id})",
        )
    return pipeline


# --- reading ------------------------------------------------------------------------------


def get_pipeline(*, session: Session, pipeline_id: int) -> Pipeline:
    """A pipeline, or NotFound."""
    pipeline = session.get(Pipeline, pipeline_id)
    if pipeline is None:
        raise NotFound(f"pipeline {pipeline_id} not found")
    return pipeline


def list_pipelines(
    *,
    session: Session,
    statuses: Sequence[PipelineStatus] = (),
    limit: int = 50,
    offset: int = 0,
    projects: set[int] | None = None,
) -> tuple[Sequence[Pipeline], int]:
    """A page of pipelines (of `projects` unless None), newest first, and the total matching."""
    from training_platform.projects.service import owned_by

    mine = owned_by(Pipeline.project_id, projects)
    query = select(Pipeline).where(mine)
    counter = select(func.count()).select_from(Pipeline).where(mine)
    if statuses:
        values = [s.value for s in statuses]
        query = query.where(col(Pipeline.status).in_(values))
        counter = counter.where(col(Pipeline.status).in_(values))
    total = session.exec(counter).one()
    page = session.exec(query.order_by(col(Pipeline.id).desc()).offset(offset).limit(limit)).all()
    return page, int(total)


def stages_of(*, session: Session, pipeline_id: int) -> list[PipelineStage]:
    """The pipeline's stages in topological order."""
    return list(
        session.exec(
            select(PipelineStage)
            .where(PipelineStage.pipeline_id == pipeline_id)
            .order_by(col(PipelineStage.position))
        ).all()
    )


def stage_counts(*, session: Session, pipeline_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """For each pipeline, how many stages are in each status."""
    if not pipeline_ids:
        return {}
    rows = session.exec(
        select(PipelineStage.pipeline_id, PipelineStage.status, func.count())
        .where(col(PipelineStage.pipeline_id).in_(list(pipeline_ids)))
        .group_by(col(PipelineStage.pipeline_id), col(PipelineStage.status))
    ).all()
    counts: dict[int, dict[str, int]] = {}
    for pipeline_id, status, count in rows:
        counts.setdefault(pipeline_id, {})[status] = int(count)
    return counts


def runs_of(*, session: Session, stage_ids: Sequence[int]) -> dict[int, list[int]]:
    """The jobs that ran each stage, oldest first."""
    if not stage_ids:
        return {}
    rows = session.exec(
        select(PipelineStageRun)
        .where(col(PipelineStageRun.stage_id).in_(list(stage_ids)))
        .order_by(col(PipelineStageRun.run))
    ).all()
    found: dict[int, list[int]] = {}
    for row in rows:
        if row.job_id is not None:
            found.setdefault(row.stage_id, []).append(row.job_id)
    return found


def events(*, session: Session, pipeline_id: int) -> Sequence[PipelineEvent]:
    """Status changes of the pipeline and its stages, oldest first."""
    get_pipeline(session=session, pipeline_id=pipeline_id)
    return session.exec(
        select(PipelineEvent)
        .where(PipelineEvent.pipeline_id == pipeline_id)
        .order_by(col(PipelineEvent.id))
    ).all()


KEY_METRICS = {
    "evaluate": ("accuracy",),
    "train": ("reward", "reward/mean", "critic/score/mean", "loss", "train/loss"),
}


def key_metric(
    stage: PipelineStage, live: dict[str, float | None]
) -> tuple[str, float | None] | None:
    """The number a stage is judged by: accuracy for evaluations, reward for RL, else loss.

    `live` holds the last values of the stage's job (for a stage still running)."""
    metrics = (stage.outputs or {}).get("metrics") or live
    for key in KEY_METRICS.get(stage.kind, ()):
        if key in metrics:
            return key, metrics[key]
    return None


# --- control ------------------------------------------------------------------------------


def cancel(*, session: Session, pipeline_id: int, actor: str) -> tuple[Pipeline, list[Job]]:
    """Cancel a pipeline: pending stages are cancelled, running stages' jobs are cancelled.

    Returns the pipeline and the jobs whose processes must be signalled (after the commit).
    The engine ends the pipeline CANCELLED once every stage job has stopped.
    """
    pipeline = get_pipeline(session=session, pipeline_id=pipeline_id)
    status = PipelineStatus(pipeline.status)
    if status is PipelineStatus.CANCELLING:
        return pipeline, []
    if status in PIPELINE_TERMINAL:
        raise Conflict(f"pipeline {pipeline_id} is already {status.value}; nothing to cancel")
    move_pipeline(
        session, pipeline, PipelineStatus.CANCELLING, actor=actor, reason="cancel requested"
    )
    return pipeline, stop_stage_jobs(session=session, pipeline=pipeline, actor=actor)


def stop_stage_jobs(*, session: Session, pipeline: Pipeline, actor: str) -> list[Job]:
    """Cancel pending stages and the jobs of running ones; the jobs to signal."""
    assert pipeline.id is not None
    signal: list[Job] = []
    for stage in stages_of(session=session, pipeline_id=pipeline.id):
        if stage.status == StageStatus.PENDING.value:
            move_stage(
                session, stage, StageStatus.CANCELLED, actor=actor, reason="pipeline cancelled"
            )
        elif stage.status == StageStatus.RUNNING.value and stage.job_id is not None:
            job = session.get(Job, stage.job_id)
            if job is None or job.status in ("succeeded", "cancelled", "cancelling"):
                continue
            if job.status == "failed" and job.retry_at is None:
                continue
            job = jobs.cancel(session=session, job_id=stage.job_id, actor=actor)
            if job.status == "cancelling":
                signal.append(job)
    return signal


def pause(*, session: Session, pipeline_id: int, actor: str) -> Pipeline:
    """Hold a pipeline: no stage starts, and its running stage jobs are paused (checkpoint
    and stop where the trainer can, else suspended in place) as soon as they run."""
    pipeline = get_pipeline(session=session, pipeline_id=pipeline_id)
    if pipeline.status != PipelineStatus.RUNNING.value:
        raise Conflict(f"pipeline {pipeline_id} is {pipeline.status}; only a running one can pause")
    return move_pipeline(session, pipeline, PipelineStatus.PAUSED, actor=actor, reason="paused")


def resume(*, session: Session, pipeline_id: int, actor: str) -> Pipeline:
    """Let a paused pipeline go on: the jobs it paused resume, pending stages may start."""
    pipeline = get_pipeline(session=session, pipeline_id=pipeline_id)
    if pipeline.status != PipelineStatus.PAUSED.value:
        raise Conflict(f"pipeline {pipeline_id} is {pipeline.status}; only a paused one resumes")
    return move_pipeline(session, pipeline, PipelineStatus.RUNNING, actor=actor, reason="resumed")


def retry(
    *, session: Session, pipeline_id: int, actor: str, from_stage: str | None = None
) -> Pipeline:
    """Run a failed or cancelled pipeline again from a stage, keeping what succeeded upstream.

    With `from_stage`, that stage and everything downstream of it run again; without, every
    stage that did not succeed and everything downstream of those. Succeeded stages outside
    that set keep their outputs and are not rerun.
    """
    pipeline = get_pipeline(session=session, pipeline_id=pipeline_id)
    status = PipelineStatus(pipeline.status)
    if status not in (PipelineStatus.FAILED, PipelineStatus.CANCELLED):
        raise Conflict(
            f"pipeline {pipeline_id} is {status.value}; only a failed or cancelled one can retry"
        )
    stages = stages_of(session=session, pipeline_id=pipeline_id)
    by_name = {s.name: s for s in stages}
    graph = {s.name: StageDefinition.model_validate(s.spec) for s in stages}
    if from_stage is not None:
        if from_stage not in by_name:
            raise InvalidInput(
                ("body", "from_stage"),
                f"pipeline {pipeline_id} has no stage {from_stage!r}; stages: {', '.join(by_name)}",
            )
        for upstream in sorted(dsl.ancestors(graph, from_stage)):
            if by_name[upstream].status != StageStatus.SUCCEEDED.value:
                raise InvalidInput(
                    ("body", "from_stage"),
                    f"stage {from_stage!r} depends on {upstream!r}, which is "
                    f"{by_name[upstream].status}: retry from {upstream!r} instead",
                )
        rerun = {from_stage} | dsl.descendants(graph, from_stage)
    else:
        unfinished = {s.name for s in stages if s.status != StageStatus.SUCCEEDED.value}
        rerun = set(unfinished)
        for name in unfinished:
            rerun |= dsl.descendants(graph, name)
    if not rerun:
        raise Conflict(f"every stage of pipeline {pipeline_id} succeeded; nothing to retry")
    for stage in stages:
        if stage.name in rerun:
            move_stage(
                session,
                stage,
                StageStatus.PENDING,
                actor=actor,
                reason=f"retry: run {stage.run + 1}",
                values={
                    "run": stage.run + 1,
                    "job_id": None,
                    "outputs": None,
                    "reason": None,
                    "skipped_by_condition": False,
                    "started_at": None,
                    "finished_at": None,
                },
            )
    where = f"from stage {from_stage!r}" if from_stage else "of the stages that did not succeed"
    return move_pipeline(
        session,
        pipeline,
        PipelineStatus.RUNNING,
        actor=actor,
        reason=f"retry {where}: {', '.join(s.name for s in stages if s.name in rerun)}",
        values={"error": None, "finished_at": None},
    )


# --- lineage ------------------------------------------------------------------------------


def stage_of_job(*, session: Session, job_id: int) -> tuple[Pipeline, PipelineStage, int] | None:
    """The pipeline, stage and run a job ran, if a pipeline created it."""
    run = session.exec(select(PipelineStageRun).where(PipelineStageRun.job_id == job_id)).first()
    if run is None:
        return None
    stage = session.get(PipelineStage, run.stage_id)
    pipeline = session.get(Pipeline, stage.pipeline_id) if stage else None
    if stage is None or pipeline is None:
        return None
    return pipeline, stage, run.run


def _origin(session: Session, job_id: int | None) -> dict[str, Any] | None:
    if job_id is None:
        return None
    origin: dict[str, Any] = {"job_id": job_id}
    job = session.get(Job, job_id)
    if job is not None:
        origin.update(job_name=job.name, algorithm=job.algorithm, status=job.status)
    found = stage_of_job(session=session, job_id=job_id)
    if found is not None:
        pipeline, stage, run = found
        origin.update(pipeline_id=pipeline.id, pipeline=pipeline.name, stage=stage.name, run=run)
    return origin


def lineage(*, session: Session, job_id: int) -> dict[str, Any]:
    """Where a job's model and data came from, which stage ran it, and what it produced."""
    job = jobs.get_job(session=session, job_id=job_id)
    model = session.get(ModelEntry, job.model_id) if job.model_id is not None else None
    dataset = session.get(DatasetEntry, job.dataset_id) if job.dataset_id is not None else None
    prepared = dict((job.inputs or {}).get("dataset") or {})
    prepared.pop("path", None)
    prepared.pop("source", None)
    found = stage_of_job(session=session, job_id=job_id)
    produced = session.exec(select(ModelEntry).where(ModelEntry.job_id == job_id)).all()
    registered = {m.path.rsplit("/", 1)[-1]: m.name for m in produced}
    artifacts = []
    for checkpoint in jobs.checkpoints(session=session, job_id=job_id):
        name = registered.get(checkpoint.path.rsplit("/", 1)[-1])
        artifacts.append(
            {
                "kind": "model" if checkpoint.final else "checkpoint",
                "step": checkpoint.step,
                "attempt": checkpoint.attempt,
                "path": checkpoint.path,
                "registered_as": name,
            }
        )
    consumers = []
    if produced:
        ids = [m.id for m in produced]
        for consumer in session.exec(
            select(Job).where(col(Job.model_id).in_(ids)).order_by(col(Job.id))
        ).all():
            consumers.append(
                {"job_id": consumer.id, "name": consumer.name, "algorithm": consumer.algorithm}
            )
    resumed = (job.inputs or {}).get("resume_from")
    return {
        "job": {
            "id": job.id,
            "name": job.name,
            "backend": job.backend,
            "algorithm": job.algorithm,
            "status": job.status,
            "attempt": job.attempt,
        },
        "pipeline": (
            {
                "id": found[0].id,
                "name": found[0].name,
                "stage": found[1].name,
                "run": found[2],
            }
            if found
            else None
        ),
        "model": {
            "id": job.model_id,
            "name": model.name if model else None,
            "source": model.source if model else None,
            "produced_by": _origin(session, model.job_id) if model else None,
        },
        "dataset": {
            "id": job.dataset_id,
            "name": dataset.name if dataset else None,
            "format": dataset.format if dataset else None,
            "sha256": dataset.sha256 if dataset else None,
            "rows": dataset.rows if dataset else None,
            "prepared": prepared or None,
        },
        "resumed_from": ({k: v for k, v in resumed.items() if k != "path"} if resumed else None),
        "artifacts": artifacts,
        "consumers": consumers,
    }


def paused_by(*, session: Session, job: Job, actor: str) -> bool:
    """Whether the job's last pause was asked for by `actor`."""
    event = session.exec(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.to_status == "pausing")
        .order_by(col(JobEvent.id).desc())
    ).first()
    return event is not None and event.actor == actor
