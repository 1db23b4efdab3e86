"""The pipeline engine: moves stages along as their jobs end, and starts what became due.

`advance` re-reads everything from the database, is idempotent and safe to run in several
processes at once: a stage's job is created in the same transaction as the stage's
compare-and-set to running, under an idempotency key per stage run, so a stage never gets two
jobs; messages are sent only after the commit (the jobs supervisor resends lost ones).
It runs on every supervisor tick and right after each pipeline request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.backends.base import get_backend
from training_platform.catalog import service as catalog
from training_platform.catalog.models import ModelEntry
from training_platform.core.errors import Conflict, DomainError
from training_platform.core.settings import Settings
from training_platform.evaluation import service as evaluations
from training_platform.evaluation import stats
from training_platform.evaluation.models import Evaluation
from training_platform.evaluation.schemas import EvaluationCreate, Generation
from training_platform.jobs import service as jobs
from training_platform.jobs.models import Job
from training_platform.jobs.schemas import JobCreate, JobPolicy
from training_platform.jobs.state import CHECKPOINT, SUSPEND, JobStatus, StaleJob
from training_platform.pipelines import definition as dsl
from training_platform.pipelines import service
from training_platform.pipelines.definition import StageDefinition, StageRef
from training_platform.pipelines.models import Pipeline, PipelineStage, PipelineStageRun
from training_platform.pipelines.state import (
    PIPELINE_TERMINAL,
    STAGE_TERMINAL,
    PipelineStatus,
    StageStatus,
    StaleRow,
    move_pipeline,
    move_stage,
    update_running_stage,
)
from training_platform.surgery import service as surgery
from training_platform.surgery.schemas import MergeCreate, SweepCreate

log = logging.getLogger(__name__)
ENGINE = "pipeline-engine"
MAX_ROUNDS = 250  # each round makes one change; a pipeline has at most 100 stages


class StageCannotStart(DomainError):
    """A stage's inputs could not be resolved, or its job was refused."""


def advance_all(engine: Engine, settings: Settings, dispatcher: jobs.Dispatcher) -> list[int]:
    """Advance every pipeline that has not ended; the ids of those that ended now."""
    with Session(engine) as session:
        ids = session.exec(
            select(Pipeline.id).where(
                col(Pipeline.status).not_in([s.value for s in PIPELINE_TERMINAL])
            )
        ).all()
    ended = []
    for pipeline_id in ids:
        assert pipeline_id is not None
        try:
            pipeline = advance(engine, settings, pipeline_id, dispatcher)
        except Exception:  # one broken pipeline must not stop the others
            log.exception("advancing pipeline %s failed", pipeline_id)
            continue
        if pipeline is not None and PipelineStatus(pipeline.status) in PIPELINE_TERMINAL:
            ended.append(pipeline_id)
    return ended


def advance(
    engine: Engine, settings: Settings, pipeline_id: int, dispatcher: jobs.Dispatcher
) -> Pipeline | None:
    """Bring one pipeline up to date with its stage jobs; returns it as it now stands."""
    for _ in range(MAX_ROUNDS):
        try:
            with Session(engine, expire_on_commit=False) as session:
                changed = _round(session, settings, pipeline_id, dispatcher)
        except (StaleRow, StaleJob):
            continue  # someone else moved something first: read again
        except Conflict as error:
            # A stage another pass moved meanwhile (the API's advance and the tick's both
            # starting it: the idempotent job submit rolls back and the stage reads as running).
            log.info("pipeline %s: %s; reading it again", pipeline_id, error.message)
            continue
        if not changed:
            break
    with Session(engine, expire_on_commit=False) as session:
        return session.get(Pipeline, pipeline_id)


def _round(
    session: Session, settings: Settings, pipeline_id: int, dispatcher: jobs.Dispatcher
) -> bool:
    """One look at the pipeline; True if anything changed (another round may do more)."""
    pipeline = session.get(Pipeline, pipeline_id)
    if pipeline is None or PipelineStatus(pipeline.status) in PIPELINE_TERMINAL:
        return False
    status = PipelineStatus(pipeline.status)
    stages = service.stages_of(session=session, pipeline_id=pipeline_id)
    by_name = {s.name: s for s in stages}
    for stage in stages:
        if stage.status == StageStatus.RUNNING.value and _follow_job(
            session, settings, pipeline, stage, status, dispatcher
        ):
            return True
    if status is PipelineStatus.CANCELLING:
        signal = service.stop_stage_jobs(session=session, pipeline=pipeline, actor=ENGINE)
        session.commit()
        for job in signal:
            send_safely(dispatcher.request_cancel, job)
    for stage in stages:
        if stage.status != StageStatus.PENDING.value:
            continue
        upstream = [by_name[d] for d in stage.depends_on]
        blocked = next((u for u in upstream if u.status in _BLOCKING), None)
        if blocked is not None:
            why = (
                f"upstream stage {blocked.name!r} was skipped"
                if blocked.status == StageStatus.SKIPPED.value
                else f"upstream stage {blocked.name!r} {blocked.status}"
            )
            move_stage(
                session,
                stage,
                StageStatus.SKIPPED,
                actor=ENGINE,
                reason=why,
                values={"reason": why},
            )
            session.commit()
            return True
        ready = all(u.status == StageStatus.SUCCEEDED.value for u in upstream)
        if ready and status is PipelineStatus.RUNNING:
            _start(session, settings, pipeline, stage, by_name, dispatcher)
            return True
    if all(StageStatus(s.status) in STAGE_TERMINAL for s in stages):
        _finish(session, pipeline, stages)
        return True
    return False


_BLOCKING = frozenset(
    {StageStatus.FAILED.value, StageStatus.SKIPPED.value, StageStatus.CANCELLED.value}
)


def send_safely(action: Any, job: Job) -> None:
    try:
        action(job)
    except Exception as error:  # the job is stored; the supervisor resends or enforces
        log.warning("job %s: message not sent (%s); the supervisor will see to it", job.id, error)


# --- running stages -----------------------------------------------------------------------


def _follow_job(
    session: Session,
    settings: Settings,
    pipeline: Pipeline,
    stage: PipelineStage,
    status: PipelineStatus,
    dispatcher: jobs.Dispatcher,
) -> bool:
    """Move a running stage on when its job ended; hold or release the job as the pipeline is
    paused or running. True if the stage moved."""
    job = session.get(Job, stage.job_id) if stage.job_id is not None else None
    if job is None:
        reason = "its job was deleted"
        _fail(session, stage, reason)
        return True
    job_status = JobStatus(job.status)
    if stage.kind == "merge":
        sweep = surgery.sweep_named(
            session=session, name=service.output_model_name(pipeline.id or 0, stage.name, stage.run)
        )
        if sweep is not None:
            return _follow_sweep(session, stage, sweep, job)
    if job_status is JobStatus.SUCCEEDED and stage.kind == "merge":
        return _follow_merge(session, settings, stage, job)
    if job_status is JobStatus.SUCCEEDED and stage.kind in ("evaluate", "select"):
        evaluation = evaluations.of_job(session=session, job_id=job.id)  # type: ignore[arg-type]
        if evaluation is not None:
            return _follow_evaluation(session, settings, pipeline, stage, evaluation, dispatcher)
    if job_status is JobStatus.SUCCEEDED:
        try:
            outputs = _outputs(session, settings, pipeline, stage, job)
        except DomainError as error:
            session.rollback()
            session.refresh(stage)
            reason = f"job {job.id} succeeded but {error.message}"
            move_stage(
                session,
                stage,
                StageStatus.FAILED,
                actor=ENGINE,
                reason=reason,
                values={"reason": reason},
            )
        else:
            move_stage(
                session,
                stage,
                StageStatus.SUCCEEDED,
                actor=ENGINE,
                reason=f"job {job.id} succeeded",
                values={"outputs": outputs, "reason": None},
            )
        session.commit()
        return True
    if job_status is JobStatus.FAILED and job.retry_at is None:
        first_line = (job.error or "no error recorded").strip().splitlines()[0]
        reason = f"job {job.id} failed: {first_line}"
        _fail(session, stage, reason)
        return True
    if job_status is JobStatus.CANCELLED:
        reason = f"job {job.id} was cancelled"
        move_stage(
            session,
            stage,
            StageStatus.CANCELLED,
            actor=ENGINE,
            reason=reason,
            values={"reason": reason},
        )
        session.commit()
        return True
    actor = service.job_actor(pipeline.id)  # type: ignore[arg-type]
    if status is PipelineStatus.PAUSED and job_status in (JobStatus.RUNNING, JobStatus.STALLED):
        _hold(session, job, actor)
    elif (
        status is PipelineStatus.RUNNING
        and job_status is JobStatus.PAUSED
        and service.paused_by(session=session, job=job, actor=actor)
    ):
        try:
            jobs.resume(session=session, settings=settings, job_id=job.id, actor=actor)  # type: ignore[arg-type]
            session.commit()
        except Conflict:
            session.rollback()
        else:
            send_safely(lambda _job: dispatcher.request_schedule(), job)
    return False


def _hold(session: Session, job: Job, actor: str) -> None:
    """Pause a stage job of a paused pipeline: checkpoint and stop if its trainer can, else
    suspend it in place (local runs); a job that can do neither runs on."""
    graceful = get_backend(job.backend, job.algorithm).graceful_stop
    mode = CHECKPOINT if graceful else SUSPEND
    if mode == SUSPEND and job.runner != "local":
        return
    try:
        jobs.pause(session=session, job_id=job.id, actor=actor, mode=mode)  # type: ignore[arg-type]
        session.commit()
    except Conflict:
        session.rollback()


def _outputs(
    session: Session, settings: Settings, pipeline: Pipeline, stage: PipelineStage, job: Job
) -> dict[str, Any]:
    """What a succeeded stage hands on: its job, its final model (registered in the catalog
    under pipeline-<id>.<stage>), and the last value of each metric."""
    assert job.id is not None and pipeline.id is not None
    metrics = jobs.last_metric_values(session=session, job_id=job.id)
    outputs: dict[str, Any] = {"job": job.id, "metrics": metrics}
    if stage.kind == "evaluate":
        for key in ("accuracy", "correct", "total"):
            if metrics.get(key) is None:
                raise DomainError(f"it reported no {key}")
        outputs.update(
            accuracy=metrics["accuracy"],
            correct=int(metrics["correct"] or 0),
            total=int(metrics["total"] or 0),
        )
        return outputs
    try:
        path = jobs.final_model_path(session=session, settings=settings, job_id=job.id)
    except DomainError as error:
        raise DomainError(f"its model cannot be handed on: {error.message}") from None
    name = service.output_model_name(pipeline.id, stage.name, stage.run)
    entry = session.exec(select(ModelEntry).where(ModelEntry.name == name)).first()
    if entry is None:
        entry = catalog.register_model(
            session=session,
            settings=settings,
            name=name,
            path=None,
            hub_id=None,
            description=f"final model of stage {stage.name} of pipeline {pipeline.id} "
            f"({pipeline.name}), job {job.id}",
            job_output=path,
            job_id=job.id,
        )
    elif entry.job_id != job.id:
        raise DomainError(f"a model named {name!r} exists already (not from job {job.id})")
    outputs["checkpoint"] = entry.name
    return outputs


# --- starting stages ----------------------------------------------------------------------


def _value(by_name: Mapping[str, PipelineStage], ref: StageRef) -> Any:
    outputs = by_name[ref.stage].outputs or {}
    if ref.output.startswith("metrics."):
        key = ref.output[len("metrics.") :]
        metrics = outputs.get("metrics") or {}
        if metrics.get(key) is None:
            reported = ", ".join(sorted(metrics)) or "none"
            raise StageCannotStart(
                f"{ref}: stage {ref.stage!r} reported no value for {key!r} (reported: {reported})"
            )
        return metrics[key]
    if outputs.get(ref.output) is None:
        raise StageCannotStart(f"{ref}: stage {ref.stage!r} has no output {ref.output!r}")
    return outputs[ref.output]


def resolve(
    stage: StageDefinition, by_name: Mapping[str, PipelineStage]
) -> tuple[dict[str, Any], list[str]]:
    """The stage's job request with upstream outputs filled in, and its conditions that do
    not hold (as sentences)."""
    request = dsl.job_request(stage)
    model = dsl.whole_ref(request.get("model"))
    if model is not None:
        request["model"] = _value(by_name, model)
    hyperparameters = dict(request.get("hyperparameters") or {})
    for key, value in hyperparameters.items():
        ref = dsl.whole_ref(value)
        if ref is not None:
            hyperparameters[key] = _value(by_name, ref)
    request["hyperparameters"] = hyperparameters
    unmet = []
    for condition in stage.when:
        sides = []
        for side in (condition.left, condition.right):
            ref = dsl.whole_ref(side)
            sides.append((str(ref), float(_value(by_name, ref))) if ref else (None, float(side)))
        (left_ref, left), (right_ref, right) = sides
        if not dsl.compare(left, condition.op, right):
            shown_left = f"{left_ref} = {left:g}" if left_ref else f"{left:g}"
            shown_right = f"{right_ref} = {right:g}" if right_ref else f"{right:g}"
            unmet.append(f"{shown_left} {condition.op} {shown_right} does not hold")
    return request, unmet


def _start(
    session: Session,
    settings: Settings,
    pipeline: Pipeline,
    stage: PipelineStage,
    by_name: Mapping[str, PipelineStage],
    dispatcher: jobs.Dispatcher,
) -> None:
    """Start a stage whose dependencies succeeded: skip it if a condition fails, else create
    its job (pending, at the pipeline's priority) in the transaction that marks it running."""
    assert pipeline.id is not None and stage.id is not None
    actor = service.job_actor(pipeline.id)
    definition = StageDefinition.model_validate(stage.spec)
    if stage.kind == "gate":
        _gate(session, stage, definition, by_name)
        return
    outputs: dict[str, Any] | None = None
    others: list[Job] = []  # a sweep's other candidates' jobs, sent with the stage's own
    try:
        request, unmet = resolve(definition, by_name)
        if unmet:
            reason = "condition not met: " + "; ".join(unmet)
            move_stage(
                session,
                stage,
                StageStatus.SKIPPED,
                actor=ENGINE,
                reason=reason,
                values={"reason": reason, "skipped_by_condition": True},
            )
            session.commit()
            return
        key = service.stage_key(pipeline.id, stage.name, stage.run)
        if stage.kind == "merge" and definition.merge is not None and definition.merge.sweep:
            template = _merge_request(pipeline, stage, definition.merge, by_name)
            sweep = definition.merge.sweep
            _, candidates = surgery.create_sweep(
                session=session,
                settings=settings,
                request=SweepCreate.model_validate(
                    {
                        "name": template.name,
                        "merge": template.model_dump(mode="json", by_alias=True),
                        "grid": sweep.grid,
                        "evaluate": sweep.evaluate.model_dump(mode="json"),
                        "mode": sweep.mode,
                        "priority": pipeline.priority,
                    }
                ),
                actor=actor,
            )
            job, others = candidates[0], candidates[1:]
            created = True
        elif stage.kind == "merge":
            assert definition.merge is not None
            _, job = surgery.create(
                session=session,
                settings=settings,
                request=_merge_request(pipeline, stage, definition.merge, by_name),
                actor=actor,
                job_name=service.job_name(pipeline.name, stage.name),
                policy=definition.merge.policy,
                idempotency_key=key,
                project_id=pipeline.project_id,
                user_id=pipeline.user_id,
            )
            created = job.status == JobStatus.PENDING.value
        elif stage.kind == "select":
            assert definition.select is not None
            outputs = _candidates(session, settings, definition, by_name)
            job = _evaluate_candidate(session, settings, pipeline, stage, definition, outputs, 0)
            created = job.status == JobStatus.PENDING.value
        elif stage.kind == "evaluate":
            _, job = evaluations.create(
                session=session,
                settings=settings,
                request=_evaluation_request(pipeline, stage, definition, request),
                actor=actor,
                job_name=service.job_name(pipeline.name, stage.name),
                policy=JobPolicy.model_validate(request.get("policy") or {}),
                idempotency_key=key,
                project_id=pipeline.project_id,
                user_id=pipeline.user_id,
            )
            created = job.status == JobStatus.PENDING.value
        else:
            job_request = JobCreate.model_validate(
                {
                    **request,
                    "name": service.job_name(pipeline.name, stage.name),
                    "priority": pipeline.priority,
                }
            )
            job, created = jobs.submit(
                session=session,
                request=job_request,
                actor=actor,
                idempotency_key=key,
                settings=settings,
                project_id=pipeline.project_id,
                user_id=pipeline.user_id,
            )
    except (DomainError, ValidationError) as error:
        session.rollback()
        session.refresh(stage)
        message = getattr(error, "message", None) or str(error)
        reason = f"could not start: {message}"
        _fail(session, stage, reason)
        return
    move_stage(
        session,
        stage,
        StageStatus.RUNNING,
        actor=ENGINE,
        reason=f"dependencies succeeded; job {job.id} submitted",
        values={"job_id": job.id, "reason": None, "outputs": outputs},
    )
    session.add(PipelineStageRun(stage_id=stage.id, run=stage.run, job_id=job.id))
    session.commit()
    if created:
        send_safely(dispatcher.dispatch, job)
    for other in others:
        send_safely(dispatcher.dispatch, other)


# --- merges ---------------------------------------------------------------------------------


def _merge_request(
    pipeline: Pipeline,
    stage: PipelineStage,
    step: dsl.MergeStep,
    by_name: Mapping[str, PipelineStage],
) -> MergeCreate:
    """The merge a merge stage runs, its upstream checkpoints filled in."""
    assert pipeline.id is not None

    def model(value: str | int) -> str | int:
        ref = dsl.whole_ref(value)
        return _value(by_name, ref) if ref is not None else value

    body = step.model_dump(mode="json", by_alias=True, exclude={"policy", "sweep"})
    body["base"] = {"model": model(step.base)} if step.base is not None else None
    body["models"] = [
        {**item, "model": model(original.model)}
        for item, original in zip(body["models"], step.models, strict=True)
    ]
    body["name"] = service.output_model_name(pipeline.id, stage.name, stage.run)
    body["description"] = f"merge stage {stage.name} of pipeline {pipeline.id} ({pipeline.name})"
    body["priority"] = pipeline.priority
    return MergeCreate.model_validate(body)


def _follow_merge(session: Session, settings: Settings, stage: PipelineStage, job: Job) -> bool:
    """Move a merge stage on once its merge's model is registered (by this pass, or by the
    surgery pass that may have come first)."""
    assert job.id is not None
    merge = surgery.of_job(session=session, job_id=job.id)
    if merge is None:
        _fail(session, stage, f"job {job.id} runs no merge")
        return True
    if merge.status == surgery.PENDING:
        surgery.collect(session, settings, merge, job)
        session.refresh(merge)
    if merge.status != surgery.SUCCEEDED:
        _fail(session, stage, f"merge {merge.id} {merge.status}: {merge.error}")
        return True
    entry = session.get(ModelEntry, merge.model_id) if merge.model_id is not None else None
    if entry is None:
        _fail(session, stage, f"merge {merge.id}'s model is gone from the catalog")
        return True
    metrics = jobs.last_metric_values(session=session, job_id=job.id)
    move_stage(
        session,
        stage,
        StageStatus.SUCCEEDED,
        actor=ENGINE,
        reason=f"merge {merge.id} registered model {entry.name!r}",
        values={
            "outputs": {"job": job.id, "checkpoint": entry.name, "metrics": metrics},
            "reason": None,
        },
    )
    session.commit()
    return True


def _follow_sweep(session: Session, stage: PipelineStage, sweep: Any, job: Job) -> bool:
    """Move a sweeping merge stage on once its sweep has ended (whatever its first
    candidate's job did: the others may still win)."""
    if sweep.status == surgery.PENDING:
        return False
    if sweep.status != surgery.SUCCEEDED:
        _fail(session, stage, f"sweep {sweep.id} {sweep.status}: {sweep.error}")
        return True
    best = surgery.leaderboard(sweep)[0]
    move_stage(
        session,
        stage,
        StageStatus.SUCCEEDED,
        actor=ENGINE,
        reason=f"sweep {sweep.id}: the best of {len(sweep.candidates)} is {best.name}",
        values={
            "outputs": {
                "job": job.id,
                "checkpoint": sweep.name,
                "score": best.score,
                "metrics": {"score": best.score},
            },
            "reason": None,
        },
    )
    session.commit()
    return True


# --- evaluations, gates and selections --------------------------------------------------


def _evaluation_request(
    pipeline: Pipeline,
    stage: PipelineStage,
    definition: StageDefinition,
    request: Mapping[str, Any],
    model: int | str | None = None,
) -> EvaluationCreate:
    """The evaluation an evaluate stage (or a select candidate) runs, from its job request."""
    hyper = dict(request.get("hyperparameters") or {})
    if definition.evaluate is not None:
        scorer = definition.evaluate.scorer
    elif definition.select is not None:
        scorer = definition.select.scorer
    else:  # an evaluate stage written as a job: its rule metric
        scorer = "numeric" if hyper.get("metric", "numeric_match") == "numeric_match" else "exact"
    generation = {
        key: hyper[key]
        for key in ("max_new_tokens", "max_samples", "batch_size", "engine", "temperature")
        if hyper.get(key) is not None
    }
    return EvaluationCreate.model_validate(
        {
            "name": service.job_name(pipeline.name, stage.name),
            "model": model if model is not None else request["model"],
            "dataset": request["dataset"],
            "scorer": scorer,
            "generation": Generation.model_validate(generation),
            "resources": request.get("resources") or {},
            "priority": pipeline.priority,
        }
    )


def _candidates(
    session: Session,
    settings: Settings,
    definition: StageDefinition,
    by_name: Mapping[str, PipelineStage],
) -> dict[str, Any]:
    """A select stage's candidates: the job whose checkpoints compete, and their steps
    (default: every checkpoint still on disk)."""
    select_step = definition.select
    assert select_step is not None
    ref = dsl.whole_ref(select_step.job)
    source = int(_value(by_name, ref) if ref is not None else select_step.job)
    saved = jobs.kept_checkpoint_steps(session=session, settings=settings, job_id=source)
    if not saved:
        raise StageCannotStart(f"job {source} kept no checkpoints to choose from")
    steps = select_step.steps or saved
    missing = sorted(set(steps) - set(saved))
    if missing:
        raise StageCannotStart(
            f"job {source} has no checkpoint at step(s) {', '.join(map(str, missing))}; "
            f"it kept {', '.join(map(str, saved))}"
        )
    return {"job": source, "candidates": [{"step": step} for step in sorted(set(steps))]}


def _evaluate_candidate(
    session: Session,
    settings: Settings,
    pipeline: Pipeline,
    stage: PipelineStage,
    definition: StageDefinition,
    state: dict[str, Any],
    index: int,
) -> Job:
    """Submit the evaluation of candidate `index` (its checkpoint registered as
    job-N-step-S); records its id in `state`."""
    select_step = definition.select
    assert select_step is not None and pipeline.id is not None
    candidate = state["candidates"][index]
    model = evaluations.job_model(session, settings, int(state["job"]), int(candidate["step"]))
    request = {
        "dataset": select_step.dataset,
        "hyperparameters": select_step.model_dump(
            include={"max_new_tokens", "max_samples", "batch_size", "engine"}
        ),
        "resources": select_step.resources.model_dump(),
    }
    evaluation, job = evaluations.create(
        session=session,
        settings=settings,
        request=_evaluation_request(pipeline, stage, definition, request, model=model.id),
        actor=service.job_actor(pipeline.id),
        job_name=service.job_name(pipeline.name, f"{stage.name} step {candidate['step']}"),
        policy=select_step.policy,
        idempotency_key=f"{service.stage_key(pipeline.id, stage.name, stage.run)}-c{index}",
        project_id=pipeline.project_id,
        user_id=pipeline.user_id,
    )
    candidate.update(model=model.name, evaluation=evaluation.id)
    return job


def _follow_evaluation(
    session: Session,
    settings: Settings,
    pipeline: Pipeline,
    stage: PipelineStage,
    evaluation: Evaluation,
    dispatcher: jobs.Dispatcher,
) -> bool:
    """Move an evaluate or select stage on once its evaluation's results are stored."""
    if evaluation.status == evaluations.PENDING:
        return False  # its generations are collected by the evaluation pass
    if evaluation.status != evaluations.SUCCEEDED:
        reason = f"evaluation {evaluation.id} {evaluation.status}: {evaluation.error}"
        _fail(session, stage, reason)
        return True
    score = evaluations.score_of(evaluation)
    if stage.kind == "evaluate":
        assert evaluation.job_id is not None
        metrics = jobs.last_metric_values(session=session, job_id=evaluation.job_id)
        outputs = {
            "job": evaluation.job_id,
            "metrics": metrics,
            "evaluation": evaluation.id,
            "score": score,
            "scorer": evaluation.scorer,
            "accuracy": metrics.get("accuracy", score),
            "correct": int(metrics.get("correct") or 0),
            "total": int(metrics.get("total") or evaluation.samples),
        }
        move_stage(
            session,
            stage,
            StageStatus.SUCCEEDED,
            actor=ENGINE,
            reason=f"evaluation {evaluation.id}: {evaluation.scorer} {score}",
            values={"outputs": outputs, "reason": None},
        )
        session.commit()
        return True
    state = dict(stage.outputs or {})
    candidates = [dict(c) for c in state.get("candidates", [])]
    index = next(i for i, c in enumerate(candidates) if c.get("evaluation") == evaluation.id)
    candidates[index]["score"] = score
    state["candidates"] = candidates
    definition = StageDefinition.model_validate(stage.spec)
    if index + 1 < len(candidates):
        job = _evaluate_candidate(session, settings, pipeline, stage, definition, state, index + 1)
        update_running_stage(
            session,
            stage,
            actor=ENGINE,
            reason=f"step {candidates[index]['step']} scored {score}; evaluating step "
            f"{candidates[index + 1]['step']} (job {job.id})",
            values={"job_id": job.id, "outputs": state},
        )
        session.commit()
        if job.status == JobStatus.PENDING.value:
            send_safely(dispatcher.dispatch, job)
        return True
    scored = [c for c in candidates if c.get("score") is not None]
    if not scored:
        reason = "no candidate has a score"
        _fail(session, stage, reason)
        return True
    # The best score; a tie goes to the later step (more training for the same score).
    best = max(scored, key=lambda c: (c["score"], c["step"]))
    try:
        path = jobs.checkpoint_path(
            session=session, settings=settings, job_id=int(state["job"]), step=int(best["step"])
        )
        name = service.output_model_name(pipeline.id, stage.name, stage.run)  # type: ignore[arg-type]
        entry = session.exec(select(ModelEntry).where(ModelEntry.name == name)).first()
        if entry is None:
            entry = catalog.register_model(
                session=session,
                settings=settings,
                name=name,
                path=None,
                hub_id=None,
                description=f"best checkpoint (step {best['step']}, {evaluation.scorer} "
                f"{best['score']}) of job {state['job']}, chosen by stage {stage.name} of "
                f"pipeline {pipeline.id}",
                job_output=path,
                job_id=int(state["job"]),
            )
    except DomainError as error:
        session.rollback()
        session.refresh(stage)
        reason = f"the best checkpoint cannot be registered: {error.message}"
        _fail(session, stage, reason)
        return True
    outputs = {
        **state,
        "checkpoint": entry.name,
        "step": int(best["step"]),
        "score": best["score"],
        "evaluation": int(best["evaluation"]),
    }
    shown = ", ".join(f"step {c['step']}: {c.get('score')}" for c in candidates)
    move_stage(
        session,
        stage,
        StageStatus.SUCCEEDED,
        actor=ENGINE,
        reason=f"best: step {best['step']} ({shown}); registered as {entry.name}",
        values={"outputs": outputs, "reason": None},
    )
    session.commit()
    return True


def _fail(session: Session, stage: PipelineStage, reason: str) -> None:
    move_stage(
        session, stage, StageStatus.FAILED, actor=ENGINE, reason=reason, values={"reason": reason}
    )
    session.commit()


def _gate(
    session: Session,
    stage: PipelineStage,
    definition: StageDefinition,
    by_name: Mapping[str, PipelineStage],
) -> None:
    """Compare each candidate with its baseline now: succeed, or fail with the figures."""
    gate = definition.gate
    assert gate is not None
    move_stage(session, stage, StageStatus.RUNNING, actor=ENGINE, reason="comparing")
    compared: list[tuple[int, int, str, Any]] = []
    try:
        for baseline_value, candidate_value in zip(*gate.pairs(), strict=True):
            baseline_ref = dsl.whole_ref(baseline_value)
            candidate_ref = dsl.whole_ref(candidate_value)
            assert baseline_ref is not None and candidate_ref is not None  # checked on submit
            baseline = int(_value(by_name, baseline_ref))
            candidate = int(_value(by_name, candidate_ref))
            scorer, result = evaluations.paired(
                session=session, baseline_id=baseline, candidate_id=candidate, spec=gate.scorer
            )
            compared.append((baseline, candidate, scorer, result))
    except DomainError as error:
        session.rollback()
        session.refresh(stage)
        reason = f"cannot compare: {error.message}"
        _fail(session, stage, reason)
        return
    # Several pairs (a guard suite): their p-values are adjusted together, so that more
    # datasets do not mean more chances of a false alarm.
    adjusted = stats.adjust([r.p_value for _, _, _, r in compared])
    figures, regressions = [], []
    for (baseline, candidate, scorer, result), p_value in zip(compared, adjusted, strict=True):
        text = (
            f"{scorer} {result.mean_b} vs baseline {result.mean_a} on {result.n} shared samples "
            f"(evaluations {candidate} vs {baseline}; delta {result.delta}, {result.test} "
            f"p={p_value}{' adjusted' if len(compared) > 1 else ''}; {result.regressed} "
            f"regressed, {result.improved} improved)"
        )
        figures.append(text)
        if (
            result.delta is not None
            and result.delta < -gate.max_drop
            and p_value is not None
            and p_value < gate.alpha
        ):
            regressions.append(text)
    worst = min(
        range(len(compared)),
        key=lambda i: compared[i][3].delta if compared[i][3].delta is not None else 0.0,
    )
    _, _, scorer, result = compared[worst]
    outputs = {
        "delta": result.delta,
        "p_value": adjusted[worst],
        "improved": sum(r.improved for _, _, _, r in compared),
        "regressed": sum(r.regressed for _, _, _, r in compared),
        "scorer": scorer,
        "test": result.test,
        "n": sum(r.n for _, _, _, r in compared),
        "baseline": compared[worst][0],
        "candidate": compared[worst][1],
        "pairs": len(compared),
    }
    if regressions:
        reason = (
            f"the candidate regressed significantly: {'; '.join(regressions)}; allowed drop "
            f"{gate.max_drop:g}, alpha {gate.alpha:g}"
        )
        move_stage(
            session,
            stage,
            StageStatus.FAILED,
            actor=ENGINE,
            reason=reason,
            values={"reason": reason, "outputs": outputs},
        )
    else:
        move_stage(
            session,
            stage,
            StageStatus.SUCCEEDED,
            actor=ENGINE,
            reason=f"no significant regression: {'; '.join(figures)}",
            values={"outputs": outputs, "reason": None},
        )
    session.commit()


def _finish(session: Session, pipeline: Pipeline, stages: list[PipelineStage]) -> None:
    """End a pipeline whose stages all ended: cancelled, failed, or succeeded."""
    failed = [s for s in stages if s.status == StageStatus.FAILED.value]
    cancelled = [s for s in stages if s.status == StageStatus.CANCELLED.value]
    if pipeline.status == PipelineStatus.CANCELLING.value:
        target, reason = PipelineStatus.CANCELLED, "cancelled; every stage job has stopped"
    elif failed:
        target = PipelineStatus.FAILED
        reason = "; ".join(f"stage {s.name!r} failed: {s.reason}" for s in failed)
    elif cancelled:
        target = PipelineStatus.CANCELLED
        reason = "; ".join(f"stage {s.name!r} cancelled: {s.reason}" for s in cancelled)
    else:
        target = PipelineStatus.SUCCEEDED
        skipped = [s.name for s in stages if s.status == StageStatus.SKIPPED.value]
        reason = "every stage succeeded" + (
            f" (skipped by their conditions: {', '.join(skipped)})" if skipped else ""
        )
    values = {"error": reason} if target is not PipelineStatus.SUCCEEDED else {}
    move_pipeline(session, pipeline, target, actor=ENGINE, reason=reason, values=values)
    session.commit()
