"""Evaluations: submit one as a generation job, store its generations once when the job ends,
score them with any scorer, and compare two evaluations sample by sample.

The generation job is an ordinary job (builtin/evaluate) on the jobs queue: it is scheduled,
leased, watched, cancelled and logged like every other. When it has ended, `collect` (the
evaluation tick) reads its predictions through the job's runner, stores one row per sample and
the first scorer's scores, in one transaction that a compare-and-set on the status guards (two
ticks never store twice). Re-scoring reads the stored rows only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from training_platform.catalog import service as catalog
from training_platform.catalog.models import DatasetEntry, ModelEntry
from training_platform.core import confine
from training_platform.core.errors import Conflict, DomainError, InvalidInput, NotFound
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.datasets import formats
from training_platform.datasets import versions as dataset_versions
from training_platform.evaluation import scoring, stats
from training_platform.evaluation.models import (
    EvalSuite,
    Evaluation,
    EvaluationSample,
    EvaluationScore,
    EvaluationScoring,
    Rubric,
    SuiteRun,
)
from training_platform.evaluation.schemas import (
    EvaluationCreate,
    PairedSample,
    SuiteCreate,
    SuiteRunCreate,
)
from training_platform.jobs import service as jobs
from training_platform.jobs.models import Job
from training_platform.jobs.schemas import JobCreate, JobPolicy
from training_platform.jobs.state import TERMINAL, JobStatus
from training_platform.runners.base import Runner

log = logging.getLogger(__name__)

PENDING, SUCCEEDED, FAILED, CANCELLED = "pending", "succeeded", "failed", "cancelled"
READ_CHUNK = 1 << 20
# Most bytes of generations one evaluation may store (its predictions file).
MAX_PREDICTIONS_BYTES = 512 << 20


# --- submit ----------------------------------------------------------------------------------


def job_model(
    session: Session, settings: Settings, job_id: int, step: int | None = None
) -> ModelEntry:
    """The catalog entry of a job's final model (or of its checkpoint at `step`), registered
    now when it is not yet (as job-N-final, job-N-step-S)."""
    try:
        if step is None:
            path = jobs.final_model_path(session=session, settings=settings, job_id=job_id)
        else:
            path = jobs.checkpoint_path(
                session=session, settings=settings, job_id=job_id, step=step
            )
    except DomainError as error:
        field = ("body", "job") if step is None else ("body", "checkpoint")
        raise InvalidInput(field, error.message) from None
    registered = session.exec(
        select(ModelEntry).where(col(ModelEntry.job_id) == job_id, ModelEntry.path == path)
    ).first()
    if registered is not None:
        return registered
    return catalog.register_model(
        session=session,
        settings=settings,
        name=f"job-{job_id}-final" if step is None else f"job-{job_id}-step-{step}",
        path=None,
        hub_id=None,
        description=f"final model of job {job_id}"
        if step is None
        else f"checkpoint of job {job_id} at step {step}",
        job_output=path,
        job_id=job_id,
    )


def create(
    *,
    session: Session,
    settings: Settings,
    request: EvaluationCreate,
    actor: str,
    job_name: str | None = None,
    policy: JobPolicy | None = None,
    idempotency_key: str | None = None,
    project_id: int | None = None,
    user_id: int | None = None,
) -> tuple[Evaluation, Job]:
    """Store the evaluation and its queued generation job; nothing is written when it is refused.
    The job, and so the evaluation, belongs to `project_id` (request.project, resolved by the
    caller).

    With an idempotency key (a pipeline stage's), a replay returns the evaluation the first
    call created."""
    scorer = scoring.parse(request.scorer)
    if scorer.deferred:
        raise InvalidInput(
            ("body", "scorer"),
            f"{scorer.spec} runs on a worker once the generations are stored: evaluate with "
            "another scorer, then rescore with this one",
        )
    _enough_completions(scorer, request.generation.n, ("body", "scorer"))
    model_ref: int | str | None = request.model
    if request.job is not None:
        model_ref = job_model(session, settings, request.job).id
    elif request.checkpoint is not None:
        ref = request.checkpoint
        model_ref = job_model(session, settings, ref.job, ref.step).id
    generation = request.generation
    if request.endpoint is not None:
        from training_platform.serving.service import get_endpoint

        get_endpoint(session=session, ref=request.endpoint)  # 404 before anything is written
        if generation.engine not in ("auto", "api"):
            raise InvalidInput(
                ("body", "generation", "engine"), "an endpoint is evaluated by the api engine"
            )
    elif generation.engine == "api":
        raise InvalidInput(("body", "generation", "engine"), "the api engine needs an endpoint")
    job_request = JobCreate(
        name=job_name or f"eval {request.name}"[:200],
        backend="builtin",
        algorithm="evaluate",
        model=model_ref,
        dataset=request.dataset,
        validation=request.validation,
        hyperparameters={
            # The program's own running accuracy (its progress line); the platform scores.
            "metric": "numeric_match" if scorer.spec == "numeric" else "exact_match",
            "max_new_tokens": generation.max_new_tokens,
            "max_samples": generation.max_samples,
            "batch_size": generation.batch_size,
            "engine": "api" if request.endpoint is not None else generation.engine,
            "endpoint": request.endpoint,
            "enforce_eager": generation.enforce_eager,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "seed": generation.seed,
            "n": generation.n,
        },
        resources=request.resources,
        priority=request.priority,
        **({"policy": policy} if policy is not None else {}),
    )
    job, created = jobs.submit(
        session=session,
        request=job_request,
        actor=actor,
        idempotency_key=idempotency_key,
        project_id=project_id,
        user_id=user_id,
    )
    if not created:
        earlier = session.exec(select(Evaluation).where(col(Evaluation.job_id) == job.id)).first()
        if earlier is not None:
            return earlier, job
    model = session.get(ModelEntry, job.model_id) if job.model_id is not None else None
    dataset = session.get(DatasetEntry, job.dataset_id)
    assert dataset is not None and dataset.id is not None and job.id is not None
    assert model is not None or request.endpoint is not None
    evaluation = Evaluation(
        name=request.name,
        model_id=job.model_id,
        model_name=model.name if model is not None else str(request.endpoint),
        endpoint=request.endpoint,
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        dataset_version=job.dataset_version,
        job_id=job.id,
        engine=generation.engine,
        params=generation.model_dump()
        | (
            {"validation": request.validation.model_dump(mode="json", exclude_none=True)}
            if request.validation is not None
            else {}
        ),
        scorer=scorer.spec,
        status=PENDING,
        created_by=actor,
    )
    session.add(evaluation)
    session.flush()
    return evaluation, job


def _enough_completions(scorer: scoring.Scorer, n: int, field: tuple[str, ...]) -> None:
    if scorer.k is not None and scorer.k > n:
        raise InvalidInput(
            field,
            f"{scorer.spec} needs at least {scorer.k} completions per prompt; "
            f"the evaluation samples {n} (generation.n)",
        )


# --- collect ---------------------------------------------------------------------------------


def _read_all(runner: Runner, handle: dict[str, Any], stream: Any) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while True:
        chunk = runner.read(handle, stream, offset, READ_CHUNK)
        parts.append(chunk)
        offset += len(chunk)
        if len(chunk) < READ_CHUNK:
            return b"".join(parts)
        if offset > MAX_PREDICTIONS_BYTES:
            raise ValueError(f"more than {MAX_PREDICTIONS_BYTES >> 20} MiB of generations")


@dataclass(frozen=True)
class _Generation:
    idx: int
    prompt: str
    reference: str
    output: str
    labels: dict[str, Any]
    outputs: list[str] | None

    def completions(self) -> list[str]:
        return self.outputs or [self.output]


def _parse_predictions(data: bytes) -> list[_Generation]:
    samples: dict[int, _Generation] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            idx = int(record.get("index", number - 1))
            labels = record.get("labels")
            several = record.get("completions")
            sample = _Generation(
                idx=idx,
                prompt=str(record["prompt"]),
                reference=str(record["answer"]),
                output=str(record["completion"]),
                labels=labels if isinstance(labels, dict) else {},
                outputs=[str(c) for c in several] if isinstance(several, list) else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"predictions line {number} is unreadable: {error}") from error
        samples[idx] = sample
    return [samples[idx] for idx in sorted(samples)]


def _end(session: Session, evaluation: Evaluation, status: str, values: dict[str, Any]) -> bool:
    """Compare-and-set pending -> status; False when another pass got there first."""
    result = session.execute(
        update(Evaluation)
        .where(col(Evaluation.id) == evaluation.id, col(Evaluation.status) == PENDING)
        .values(status=status, finished_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def collect(session: Session, runners: Mapping[str, Runner], evaluation: Evaluation) -> bool:
    """Store the generations of an evaluation whose job has ended; True when it was settled."""
    job = session.get(Job, evaluation.job_id) if evaluation.job_id is not None else None
    if job is None:
        ended = _end(session, evaluation, FAILED, {"error": "its generation job was deleted"})
        session.commit()
        return ended
    status = JobStatus(job.status)
    if status not in TERMINAL:
        return False
    if status is not JobStatus.SUCCEEDED:
        final = CANCELLED if status is JobStatus.CANCELLED else FAILED
        reason = job.error or f"its generation job {job.id} ended {job.status}"
        ended = _end(session, evaluation, final, {"error": reason})
        session.commit()
        return ended
    handle = job.runner_handle or {}
    runner = runners.get(str(handle.get("runner")))
    if runner is None or not runner.owns(handle):
        return False  # another node's run: the worker there collects it
    try:
        samples = _parse_predictions(_read_all(runner, handle, "predictions"))
        results = json.loads(_read_all(runner, handle, "results") or b"{}")
        if not samples:
            raise ValueError("the job wrote no generations")
    except (OSError, ValueError) as error:
        ended = _end(session, evaluation, FAILED, {"error": f"generations unreadable: {error}"})
        session.commit()
        return ended
    scorer = scoring.parse(evaluation.scorer)
    try:
        scores = [scorer.judge(s.completions(), s.reference) for s in samples]
    except ValueError as error:
        ended = _end(session, evaluation, FAILED, {"error": f"cannot score: {error}"})
        session.commit()
        return ended
    summary = {scorer.spec: stats.summarize(scores, binary=scorer.binary).to_dict()}
    values = {"samples": len(samples), "summary": summary, "engine_used": results.get("engine")}
    if not _end(session, evaluation, SUCCEEDED, values):
        session.rollback()
        return False
    assert evaluation.id is not None
    session.execute(
        EvaluationSample.__table__.insert(),  # type: ignore[attr-defined]
        [{**asdict(s), "evaluation_id": evaluation.id} for s in samples],
    )
    _store_scores(session, evaluation.id, scorer.spec, [s.idx for s in samples], scores)
    session.commit()
    log.info("evaluation %s: %d generations stored", evaluation.id, len(samples))
    return True


def _store_scores(
    session: Session,
    evaluation_id: int,
    spec: str,
    idx: Sequence[int],
    scores: Sequence[float],
    details: Sequence[str | None] | None = None,
) -> None:
    session.execute(
        EvaluationScore.__table__.insert(),  # type: ignore[attr-defined]
        [
            {
                "evaluation_id": evaluation_id,
                "scorer": spec,
                "idx": i,
                "score": score,
                "detail": details[n] if details is not None else None,
            }
            for n, (i, score) in enumerate(zip(idx, scores, strict=True))
        ],
    )


def _add_summary(session: Session, evaluation_id: int, spec: str, summary: stats.Summary) -> None:
    """Add one scorer's summary to the evaluation's, read under a row lock (PostgreSQL; on
    SQLite the transaction has written already, which serialises writers) so that two
    scorings finishing together keep both."""
    evaluation = session.exec(
        select(Evaluation)
        .where(col(Evaluation.id) == evaluation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    evaluation.summary = {**evaluation.summary, spec: summary.to_dict()}
    session.add(evaluation)
    session.flush()


def collect_all(session: Session, runners: Mapping[str, Runner]) -> list[int]:
    """Settle every pending evaluation whose job has ended; the ids settled."""
    pending = session.exec(
        select(Evaluation)
        .join(Job, col(Job.id) == col(Evaluation.job_id), isouter=True)
        .where(col(Evaluation.status) == PENDING)
        .where(col(Job.id).is_(None) | col(Job.status).in_([s.value for s in TERMINAL]))
    ).all()
    settled = []
    for evaluation in pending:
        try:
            if collect(session, runners, evaluation):
                settled.append(evaluation.id)
        except Exception:  # one broken evaluation must not stop the others
            session.rollback()
            log.exception("collecting evaluation %s failed", evaluation.id)
    return [i for i in settled if i is not None]


# --- read, score again, compare --------------------------------------------------------------


def get(*, session: Session, evaluation_id: int) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} does not exist")
    return evaluation


def list_evaluations(
    *,
    session: Session,
    status: Sequence[str] | None,
    limit: int,
    offset: int,
    projects: set[int] | None = None,
) -> tuple[Sequence[Evaluation], int]:
    """Evaluations, newest first; of `projects` (their jobs' projects) unless None."""
    from training_platform.projects.service import owned_by

    query = select(Evaluation)
    counted = select(func.count()).select_from(Evaluation)
    if projects is not None:
        mine = owned_by(Job.project_id, projects)
        query = query.join(Job, col(Job.id) == col(Evaluation.job_id)).where(mine)
        counted = counted.join(Job, col(Job.id) == col(Evaluation.job_id)).where(mine)
    if status:
        query = query.where(col(Evaluation.status).in_(status))
        counted = counted.where(col(Evaluation.status).in_(status))
    rows = session.exec(query.order_by(col(Evaluation.id).desc()).limit(limit).offset(offset))
    return rows.all(), int(session.exec(counted).one())


def _succeeded(session: Session, evaluation_id: int) -> Evaluation:
    evaluation = get(session=session, evaluation_id=evaluation_id)
    if evaluation.status != SUCCEEDED:
        raise Conflict(f"evaluation {evaluation_id} is {evaluation.status}; it has no results")
    return evaluation


def _scores(session: Session, evaluation_id: int, spec: str) -> dict[int, float]:
    rows = session.exec(
        select(EvaluationScore.idx, EvaluationScore.score).where(
            col(EvaluationScore.evaluation_id) == evaluation_id,
            col(EvaluationScore.scorer) == spec,
        )
    ).all()
    return {int(idx): float(score) for idx, score in rows}


def rescore(*, session: Session, evaluation_id: int, spec: str, actor: str = "") -> Evaluation:
    """Score the stored generations with another scorer (nothing is generated again).

    A deferred scorer (an uploaded file, an LLM judge) is queued instead: its scoring row is
    stored (or a failed one asked again) and the caller sends `tp.evaluation.score`."""
    scorer = scoring.parse(spec)
    evaluation = _succeeded(session, evaluation_id)
    if scorer.spec in evaluation.summary:
        return evaluation
    _enough_completions(scorer, int(evaluation.params.get("n", 1)), ("body", "scorer"))
    if scorer.deferred:
        _check_deferred(session, scorer)
        row = session.get(EvaluationScoring, (evaluation_id, scorer.spec))
        if row is None:
            session.add(
                EvaluationScoring(
                    evaluation_id=evaluation_id,
                    scorer=scorer.spec,
                    status=QUEUED,
                    requested_by=actor,
                )
            )
        elif row.status == FAILED:
            row.status, row.error, row.done = QUEUED, None, 0
            row.attempt += 1
            row.requested_by, row.requested_at = actor, utcnow()
            row.updated_at = utcnow()
            session.add(row)
        session.flush()
        return evaluation
    samples = _stored(session, evaluation_id)
    scores = [scorer.judge(s.outputs or [s.output], s.reference) for s in samples]
    _store_scores(session, evaluation_id, scorer.spec, [s.idx for s in samples], scores)
    _add_summary(session, evaluation_id, scorer.spec, stats.summarize(scores, binary=scorer.binary))
    return evaluation


def _stored(session: Session, evaluation_id: int) -> Sequence[EvaluationSample]:
    return session.exec(
        select(EvaluationSample)
        .where(col(EvaluationSample.evaluation_id) == evaluation_id)
        .order_by(col(EvaluationSample.idx))
    ).all()


# --- scorers that run on a worker ------------------------------------------------------------

QUEUED, RUNNING = "queued", "running"
# A queued scoring whose message was lost is sent again after this long; a running one whose
# worker has not reported for this long is taken to be lost with it and queued again.
RESEND_AFTER_S = 60.0
LOST_AFTER_S = 900.0


def _check_deferred(session: Session, scorer: scoring.Scorer) -> None:
    """What a deferred scorer names exists; InvalidInput on the scorer otherwise."""
    from training_platform.catalog.models import RewardFileEntry

    field = ("body", "scorer")
    if scorer.deferred == "file":
        if (
            session.exec(
                select(RewardFileEntry).where(col(RewardFileEntry.name) == scorer.target)
            ).first()
            is None
        ):
            raise InvalidInput(
                field, f"no reward file {scorer.target!r}; upload it first (tp rewards upload)"
            )
        return
    from training_platform.serving.models import Endpoint

    if session.exec(select(Endpoint).where(col(Endpoint.name) == scorer.target)).first() is None:
        raise InvalidInput(field, f"no endpoint {scorer.target!r} (tp endpoints list)")
    if session.exec(select(Rubric).where(col(Rubric.name) == scorer.rubric)).first() is None:
        raise InvalidInput(field, f"no rubric {scorer.rubric!r} (tp eval rubrics list)")


def scorings(session: Session, evaluation_ids: Sequence[int]) -> dict[int, list[EvaluationScoring]]:
    """The worker scorings of some evaluations, by evaluation."""
    found: dict[int, list[EvaluationScoring]] = {i: [] for i in evaluation_ids}
    if evaluation_ids:
        rows = session.exec(
            select(EvaluationScoring)
            .where(col(EvaluationScoring.evaluation_id).in_(list(evaluation_ids)))
            .order_by(col(EvaluationScoring.requested_at))
        ).all()
        for row in rows:
            found[row.evaluation_id].append(row)
    return found


def _move(session: Session, row: EvaluationScoring, before: str, after: str, **values: Any) -> bool:
    """Compare-and-set of a scoring's status (and attempt); False when another got there."""
    result = session.execute(
        update(EvaluationScoring)
        .where(
            col(EvaluationScoring.evaluation_id) == row.evaluation_id,
            col(EvaluationScoring.scorer) == row.scorer,
            col(EvaluationScoring.status) == before,
            col(EvaluationScoring.attempt) == row.attempt,
        )
        .values(status=after, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def run_scoring(
    session: Session, settings: Settings, evaluation_id: int, spec: str, *, heartbeat: Any = None
) -> str:
    """Claim a queued scoring, run its scorer here (a worker) and store its scores and summary
    in one transaction; the status it ended in, or "skipped" when it was not queued."""
    from training_platform.evaluation import deferred

    row = session.get(EvaluationScoring, (evaluation_id, spec))
    if row is None or row.status != QUEUED:
        return "skipped"
    if not _move(session, row, QUEUED, RUNNING):
        session.rollback()
        return "skipped"
    session.commit()
    key: str | None = None
    try:
        scorer = scoring.parse(spec)
        samples = _stored(session, evaluation_id)
        items = [
            deferred.Item(prompt=s.prompt, reference=s.reference, output=s.output, labels=s.labels)
            for s in samples
        ]
        details: list[str | None] | None = None
        if scorer.deferred == "file":
            from training_platform.catalog.models import RewardFileEntry

            entry = session.exec(
                select(RewardFileEntry).where(col(RewardFileEntry.name) == scorer.target)
            ).first()
            if entry is None:
                raise deferred.ScoringFailed(f"the reward file {scorer.target!r} was deleted")
            run_as = confine.prepare(settings)
            scores = deferred.run_file(settings.home / entry.path, items, run_as=run_as)
        else:
            from training_platform.serving.service import launch_view

            rubric = session.exec(select(Rubric).where(col(Rubric.name) == scorer.rubric)).first()
            if rubric is None:
                raise deferred.ScoringFailed(f"the rubric {scorer.rubric!r} was deleted")
            view, key = launch_view(session=session, settings=settings, ref=scorer.target)
            judged = deferred.run_judge(
                view, key, rubric.text, rubric.max_score, items, progress=heartbeat
            )
            scores = [score for score, _ in judged]
            details = [reply for _, reply in judged]
    except Exception as error:  # anything: a scoring that raised must not stay "running"
        session.rollback()
        if isinstance(error, DomainError):
            message = error.message
        elif isinstance(error, deferred.ScoringFailed):
            message = str(error)
        else:
            message = f"{type(error).__name__}: {error}"[:1000]
        if key:
            message = message.replace(key, "***")  # never stored or logged, whatever echoed it
        log.warning("scoring %s of evaluation %s failed: %s", spec, evaluation_id, message)
        _move(session, row, RUNNING, FAILED, error=message)
        session.commit()
        return FAILED
    # Stored with the status, or not at all: a scoring another worker took over meanwhile
    # (this one was thought lost) does not store twice.
    if not _move(session, row, RUNNING, SUCCEEDED, done=len(scores)):
        session.rollback()
        return "skipped"
    _store_scores(session, evaluation_id, spec, [s.idx for s in samples], scores, details)
    _add_summary(session, evaluation_id, spec, stats.summarize(scores, binary=False))
    session.commit()
    log.info("evaluation %s: %d samples scored by %s", evaluation_id, len(scores), spec)
    return SUCCEEDED


def beat(session: Session, evaluation_id: int, spec: str, done: int) -> None:
    """A running scoring's progress, which also says its worker is alive."""
    session.execute(
        update(EvaluationScoring)
        .where(
            col(EvaluationScoring.evaluation_id) == evaluation_id,
            col(EvaluationScoring.scorer) == spec,
            col(EvaluationScoring.status) == RUNNING,
        )
        .values(done=done, updated_at=utcnow())
    )
    session.commit()


def stale_scorings(session: Session) -> list[tuple[int, str]]:
    """Scorings to send again: queued ones whose message may be lost, and running ones whose
    worker stopped reporting (queued again as a new attempt)."""
    from datetime import timedelta

    now = utcnow()
    rows = session.exec(
        select(EvaluationScoring).where(
            (
                (col(EvaluationScoring.status) == QUEUED)
                & (col(EvaluationScoring.updated_at) < now - timedelta(seconds=RESEND_AFTER_S))
            )
            | (
                (col(EvaluationScoring.status) == RUNNING)
                & (col(EvaluationScoring.updated_at) < now - timedelta(seconds=LOST_AFTER_S))
            )
        )
    ).all()
    again = []
    for row in rows:
        if row.status == RUNNING:
            moved = _move(session, row, RUNNING, QUEUED, attempt=row.attempt + 1)
        else:
            moved = _move(session, row, QUEUED, QUEUED)  # its clock restarts
        if moved:
            again.append((row.evaluation_id, row.scorer))
    session.commit()
    return again


# --- rubrics ---------------------------------------------------------------------------------


def create_rubric(
    *, session: Session, name: str, text: str, max_score: float, actor: str
) -> Rubric:
    if "{output}" not in text:
        raise InvalidInput(("body", "text"), "a rubric must show the judge the {output}")
    if session.exec(select(Rubric).where(col(Rubric.name) == name)).first() is not None:
        raise Conflict(f"a rubric named {name!r} exists already")
    rubric = Rubric(name=name, text=text, max_score=max_score, created_by=actor)
    session.add(rubric)
    session.flush()
    return rubric


def list_rubrics(*, session: Session) -> Sequence[Rubric]:
    return session.exec(select(Rubric).order_by(col(Rubric.name))).all()


def delete_rubric(*, session: Session, name: str) -> None:
    rubric = session.exec(select(Rubric).where(col(Rubric.name) == name)).first()
    if rubric is None:
        raise NotFound(f"rubric {name!r} does not exist")
    session.delete(rubric)
    session.flush()


NO_LABEL = "(none)"


def breakdown(
    *, session: Session, evaluation_id: int, spec: str | None, label: str | None
) -> tuple[str, list[str], list[tuple[str, stats.Summary]]]:
    """The score by the value of one dataset label: (scorer, the label keys the samples have,
    [(value, summary)] by value; empty without a label). Samples without it form "(none)"."""
    evaluation = _succeeded(session, evaluation_id)
    scorer = scoring.parse(evaluation.scorer if spec is None else spec)
    chosen = scorer.spec
    if chosen not in evaluation.summary:
        raise InvalidInput(
            ("query", "scorer"),
            f"evaluation {evaluation_id} has no {chosen!r} scores yet (rescore it first)",
        )
    rows = session.exec(
        select(EvaluationSample.idx, EvaluationSample.labels).where(
            col(EvaluationSample.evaluation_id) == evaluation_id
        )
    ).all()
    keys = sorted({key for _, labels in rows for key in (labels or {})})
    if label is None:
        return chosen, keys, []
    if label not in keys:
        have = ", ".join(keys) if keys else "none"
        raise InvalidInput(
            ("query", "label"), f"no sample has the label {label!r} (labels: {have})"
        )
    scores = _scores(session, evaluation_id, chosen)
    groups: dict[str, list[float]] = {}
    for idx, labels in rows:
        value = (labels or {}).get(label)
        groups.setdefault(NO_LABEL if value is None else str(value), []).append(scores[idx])
    return (
        chosen,
        keys,
        [
            (value, stats.summarize(got, binary=scorer.binary))
            for value, got in sorted(groups.items())
        ],
    )


def samples(
    *,
    session: Session,
    evaluation_id: int,
    q: str | None,
    limit: int,
    offset: int,
) -> tuple[list[tuple[EvaluationSample, dict[str, float], dict[str, str]]], int]:
    """A page of samples (prompt, reference or output containing q), each with its scores."""
    get(session=session, evaluation_id=evaluation_id)
    where = [col(EvaluationSample.evaluation_id) == evaluation_id]
    if q:
        pattern = f"%{q.replace('%', '').replace('_', '')}%"
        where.append(
            col(EvaluationSample.prompt).ilike(pattern)
            | col(EvaluationSample.output).ilike(pattern)
            | col(EvaluationSample.reference).ilike(pattern)
        )
    total = int(
        session.exec(select(func.count()).select_from(EvaluationSample).where(*where)).one()
    )
    page = session.exec(
        select(EvaluationSample)
        .where(*where)
        .order_by(col(EvaluationSample.idx))
        .limit(limit)
        .offset(offset)
    ).all()
    by_idx: dict[int, dict[str, float]] = {s.idx: {} for s in page}
    details: dict[int, dict[str, str]] = {s.idx: {} for s in page}
    if page:
        rows = session.exec(
            select(EvaluationScore).where(
                col(EvaluationScore.evaluation_id) == evaluation_id,
                col(EvaluationScore.idx).in_(list(by_idx)),
            )
        ).all()
        for row in rows:
            by_idx[row.idx][row.scorer] = row.score
            if row.detail is not None:
                details[row.idx][row.scorer] = row.detail
    return [(s, by_idx[s.idx], details[s.idx]) for s in page], total


def compare(
    *,
    session: Session,
    a_id: int,
    b_id: int,
    spec: str | None,
    change: str | None,
    limit: int,
    offset: int,
) -> tuple[str, stats.Paired, list[PairedSample], int]:
    """B against A on the samples both have: the paired statistics and a page of samples."""
    a = _succeeded(session, a_id)
    b = _succeeded(session, b_id)
    scorer = _comparable(a, [b], spec, ("query", "b"))
    scores_a, scores_b = _scores(session, a_id, scorer.spec), _scores(session, b_id, scorer.spec)
    shared = sorted(set(scores_a) & set(scores_b))
    paired = stats.compare(
        [scores_a[i] for i in shared], [scores_b[i] for i in shared], binary=scorer.binary
    )
    chosen = [
        i for i in shared if change is None or stats.classify(scores_a[i], scores_b[i]) == change
    ]
    page = chosen[offset : offset + limit]
    rows_a = _samples_at(session, a_id, page)
    rows_b = _samples_at(session, b_id, page)
    shown = [
        PairedSample(
            idx=i,
            prompt=rows_a[i].prompt,
            reference=rows_a[i].reference,
            output_a=rows_a[i].output,
            output_b=rows_b[i].output,
            score_a=scores_a[i],
            score_b=scores_b[i],
            change=stats.classify(scores_a[i], scores_b[i]),
        )
        for i in page
    ]
    return scorer.spec, paired, shown, len(chosen)


MAX_CANDIDATES = 50


@dataclass(frozen=True)
class Ranked:
    """One candidate against the baseline, with its p-value adjusted for the others."""

    evaluation: Evaluation
    paired: stats.Paired
    p_adjusted: float | None
    significant: bool


def _comparable(
    baseline: Evaluation, others: Sequence[Evaluation], spec: str | None, loc: tuple[str, ...]
) -> scoring.Scorer:
    """The scorer a comparison uses (`spec`, else the baseline's), once every evaluation ran
    on the baseline's dataset and has its scores; InvalidInput at `loc` or the scorer if not."""
    scorer = scoring.parse(spec or baseline.scorer, ("query", "scorer"))
    for evaluation in (baseline, *others):
        if evaluation.dataset_id != baseline.dataset_id:
            raise InvalidInput(
                loc,
                f"evaluation {evaluation.id} ran on {evaluation.dataset_name}, evaluation "
                f"{baseline.id} on {baseline.dataset_name}: only evaluations of the same "
                "dataset compare",
            )
        if evaluation.params.get("validation") != baseline.params.get("validation"):
            raise InvalidInput(
                loc,
                f"evaluations {baseline.id} and {evaluation.id} scored different rows of "
                f"{baseline.dataset_name} (their validation splits differ)",
            )
        if (evaluation.dataset_version or 1) != (baseline.dataset_version or 1):
            raise InvalidInput(
                loc,
                f"evaluation {evaluation.id} ran on version {evaluation.dataset_version} of "
                f"{evaluation.dataset_name}, evaluation {baseline.id} on version "
                f"{baseline.dataset_version}: samples pair by row, so only evaluations of the "
                "same version compare",
            )
        if scorer.spec not in evaluation.summary:
            raise InvalidInput(
                ("query", "scorer"),
                f"evaluation {evaluation.id} has no {scorer.spec} scores; rescore it first",
            )
    return scorer


def rank(
    *, session: Session, baseline_id: int, candidate_ids: Sequence[int], spec: str | None
) -> tuple[str, Evaluation, list[Ranked]]:
    """N candidates against one baseline on the samples each shares with it, best first.

    Each candidate gets the paired test of `compare`; their p-values are adjusted together
    (Benjamini-Hochberg, scipy) so that testing many candidates does not make a lucky one look
    significant. Scores missing under the scorer are an error, as in `compare`."""
    if not candidate_ids:
        raise InvalidInput(("query", "candidate"), "name at least one candidate")
    if len(set(candidate_ids)) != len(candidate_ids):
        raise InvalidInput(("query", "candidate"), "a candidate is named twice")
    if len(candidate_ids) > MAX_CANDIDATES:
        raise InvalidInput(("query", "candidate"), f"at most {MAX_CANDIDATES} candidates")
    if baseline_id in candidate_ids:
        raise InvalidInput(("query", "candidate"), "the baseline is not its own candidate")
    baseline = _succeeded(session, baseline_id)
    candidates = [_succeeded(session, i) for i in candidate_ids]
    scorer = _comparable(baseline, candidates, spec, ("query", "candidate"))
    assert baseline.id is not None
    base = _scores(session, baseline.id, scorer.spec)
    results = []
    for candidate in candidates:
        assert candidate.id is not None
        got = _scores(session, candidate.id, scorer.spec)
        shared = sorted(set(base) & set(got))
        results.append(
            stats.compare([base[i] for i in shared], [got[i] for i in shared], binary=scorer.binary)
        )
    adjusted = stats.adjust([r.p_value for r in results])
    ranked = [
        Ranked(c, r, p, p is not None and p < stats.SIGNIFICANCE and r.delta not in (None, 0.0))
        for c, r, p in zip(candidates, results, adjusted, strict=True)
    ]
    ranked.sort(key=lambda r: (r.paired.mean_b is None, -(r.paired.mean_b or 0.0)))
    return scorer.spec, baseline, ranked


def _samples_at(session: Session, evaluation_id: int, idx: list[int]) -> dict[int, Any]:
    if not idx:
        return {}
    rows = session.exec(
        select(EvaluationSample).where(
            col(EvaluationSample.evaluation_id) == evaluation_id,
            col(EvaluationSample.idx).in_(idx),
        )
    ).all()
    return {row.idx: row for row in rows}


def delete_evaluation(*, session: Session, evaluation_id: int) -> None:
    """Remove an ended evaluation with its rows (its job stays, with its own log)."""
    evaluation = get(session=session, evaluation_id=evaluation_id)
    if evaluation.status == PENDING:
        raise Conflict(f"evaluation {evaluation_id} is still pending; cancel its job first")
    for table in (EvaluationScoring, EvaluationScore, EvaluationSample):
        session.execute(delete(table).where(col(table.evaluation_id) == evaluation_id))
    session.delete(evaluation)
    session.flush()


def of_job(*, session: Session, job_id: int) -> Evaluation | None:
    """The evaluation a generation job runs for, if any."""
    return session.exec(select(Evaluation).where(col(Evaluation.job_id) == job_id)).first()


def score_of(evaluation: Evaluation, spec: str | None = None) -> float | None:
    """The mean score of a succeeded evaluation under a scorer (its own by default)."""
    summary = evaluation.summary.get(spec or evaluation.scorer) or {}
    mean = summary.get("mean")
    return float(mean) if mean is not None else None


def paired(
    *, session: Session, baseline_id: int, candidate_id: int, spec: str | None
) -> tuple[str, stats.Paired]:
    """The candidate against the baseline on their shared samples (rescored when needed)."""
    baseline = _succeeded(session, baseline_id)
    candidate = _succeeded(session, candidate_id)
    chosen = scoring.parse(spec or baseline.scorer).spec
    for evaluation in (baseline, candidate):
        if chosen not in evaluation.summary:
            rescore(session=session, evaluation_id=evaluation.id, spec=chosen)  # type: ignore[arg-type]
    found, result, _, _ = compare(
        session=session,
        a_id=baseline_id,
        b_id=candidate_id,
        spec=chosen,
        change=None,
        limit=0,
        offset=0,
    )
    return found, result


# --- suites ----------------------------------------------------------------------------------


def create_suite(*, session: Session, request: SuiteCreate, actor: str) -> EvalSuite:
    """Store a suite; each item's dataset must hold prompts with references and its scorer
    must score where the results are stored (not on a worker)."""
    if session.exec(select(EvalSuite).where(col(EvalSuite.name) == request.name)).first():
        raise Conflict(f"a suite named {request.name!r} exists already")
    items = []
    for number, item in enumerate(request.items):
        field = ("body", "items", number)
        try:
            dataset, _ = dataset_versions.resolve(session=session, ref=item.dataset)
        except DomainError as error:
            raise InvalidInput((*field, "dataset"), error.message) from None
        if not formats.can_feed(dataset.format, "rl"):
            raise InvalidInput(
                (*field, "dataset"),
                f"{dataset.name} is {dataset.format} data; a suite needs prompts with "
                f"references ({', '.join(formats.formats_for_task('rl'))})",
            )
        scorer = scoring.parse(item.scorer, (*field, "scorer"))
        if scorer.deferred:
            raise InvalidInput(
                (*field, "scorer"), f"{scorer.spec} runs on a worker: rescore with it instead"
            )
        items.append(
            {"dataset": dataset.name, "scorer": scorer.spec, "max_samples": item.max_samples}
        )
    suite = EvalSuite(
        name=request.name, items=items, description=request.description, created_by=actor
    )
    session.add(suite)
    session.flush()
    return suite


def list_suites(*, session: Session) -> Sequence[EvalSuite]:
    return session.exec(select(EvalSuite).order_by(col(EvalSuite.name))).all()


def get_suite(*, session: Session, name: str) -> EvalSuite:
    suite = session.exec(select(EvalSuite).where(col(EvalSuite.name) == name)).first()
    if suite is None:
        raise NotFound(f"suite {name!r} does not exist")
    return suite


def delete_suite(*, session: Session, name: str) -> None:
    """Delete a suite (its runs and their evaluations stay)."""
    session.delete(get_suite(session=session, name=name))
    session.flush()


def run_suite(
    *,
    session: Session,
    settings: Settings,
    suite_name: str,
    request: SuiteRunCreate,
    actor: str,
    project_id: int | None = None,
    user_id: int | None = None,
) -> tuple[SuiteRun, list[Job]]:
    """One evaluation per item of the suite (of `project_id`), in one transaction: all are
    stored or none."""
    suite = get_suite(session=session, name=suite_name)
    evaluations: list[int] = []
    queued: list[Job] = []
    model_name = ""
    for item in suite.items:
        generation = request.generation.model_copy(
            update={"max_samples": item.get("max_samples") or request.generation.max_samples}
        )
        evaluation, job = create(
            session=session,
            settings=settings,
            request=EvaluationCreate(
                name=f"{request.name}:{item['dataset']}"[:200],
                model=request.model,
                job=request.job,
                checkpoint=request.checkpoint,
                endpoint=request.endpoint,
                dataset=item["dataset"],
                scorer=item["scorer"],
                generation=generation,
                resources=request.resources,
                priority=request.priority,
            ),
            actor=actor,
            project_id=project_id,
            user_id=user_id,
        )
        assert evaluation.id is not None
        evaluations.append(evaluation.id)
        queued.append(job)
        model_name = evaluation.model_name
    run = SuiteRun(
        name=request.name,
        suite=suite.name,
        model_name=model_name,
        evaluation_ids=evaluations,
        created_by=actor,
    )
    session.add(run)
    session.flush()
    return run, queued


def get_suite_run(*, session: Session, run_id: int) -> SuiteRun:
    run = session.get(SuiteRun, run_id)
    if run is None:
        raise NotFound(f"suite run {run_id} does not exist")
    return run


def list_suite_runs(
    *, session: Session, suite: str | None, limit: int, offset: int
) -> tuple[Sequence[SuiteRun], int]:
    query = select(SuiteRun)
    counted = select(func.count()).select_from(SuiteRun)
    if suite:
        query = query.where(col(SuiteRun.suite) == suite)
        counted = counted.where(col(SuiteRun.suite) == suite)
    rows = session.exec(query.order_by(col(SuiteRun.id).desc()).limit(limit).offset(offset))
    return rows.all(), int(session.exec(counted).one())


def suite_run_result(
    session: Session, run: SuiteRun
) -> tuple[str, float | None, list[tuple[Evaluation | None, str]]]:
    """(status, mean of the items' means once all succeeded, (evaluation, scorer) per item)."""
    found = {
        e.id: e
        for e in session.exec(
            select(Evaluation).where(col(Evaluation.id).in_(run.evaluation_ids))
        ).all()
    }
    items = [(found.get(i), found[i].scorer if i in found else "") for i in run.evaluation_ids]
    states = [e.status if e is not None else FAILED for e, _ in items]
    if any(s in (FAILED, CANCELLED) for s in states):
        return FAILED, None, items
    if any(s == PENDING for s in states):
        return PENDING, None, items
    means = [score_of(e) for e, _ in items if e is not None]
    if any(m is None for m in means) or not means:
        return SUCCEEDED, None, items
    return SUCCEEDED, math.fsum(m for m in means if m is not None) / len(means), items
