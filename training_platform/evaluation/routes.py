"""HTTP routes of the evaluation context: parse, call the service, commit, then dispatch."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import Path as PathParam
from fastapi import Query, status
from sqlmodel import Session

from training_platform.api.deps import (
    CurrentToken,
    DispatcherDep,
    IdPath,
    OffsetQuery,
    SessionDep,
    SettingsDep,
    api_router,
    project_scoped,
)
from training_platform.auth.service import Caller
from training_platform.core.types import DB_INT_MAX
from training_platform.evaluation import scoring, service
from training_platform.evaluation.models import (
    EvalSuite,
    Evaluation,
    EvaluationScoring,
    Rubric,
    SuiteRun,
)
from training_platform.evaluation.schemas import (
    BreakdownPublic,
    ComparisonPublic,
    EvaluationCreate,
    EvaluationPublic,
    EvaluationsPublic,
    LabelGroup,
    RankedCandidate,
    RankingPublic,
    Rescore,
    RubricCreate,
    RubricPublic,
    SamplePublic,
    SamplesPublic,
    ScoringPublic,
    SuiteCreate,
    SuitePublic,
    SuiteRunCreate,
    SuiteRunItem,
    SuiteRunPublic,
    SuiteRunsPublic,
)
from training_platform.jobs import service as jobs_service

log = logging.getLogger(__name__)


def _project_of(session: Session, evaluation_id: int) -> int | None:
    return jobs_service.project_through_job(session, Evaluation, evaluation_id)


router = api_router(
    "/evaluations",
    tags=["evaluations"],
    scoped=project_scoped("evaluation_id", "evaluation", _project_of),
)
IdQuery = Annotated[int, Query(ge=1, le=DB_INT_MAX)]


def to_public(
    evaluation: Evaluation, scorings: list[EvaluationScoring] | None = None
) -> EvaluationPublic:
    assert evaluation.id is not None
    return EvaluationPublic(
        id=evaluation.id,
        name=evaluation.name,
        model=evaluation.model_name,
        model_id=evaluation.model_id,
        endpoint=evaluation.endpoint,
        dataset=evaluation.dataset_name,
        dataset_id=evaluation.dataset_id,
        dataset_version=evaluation.dataset_version,
        job_id=evaluation.job_id,
        engine=evaluation.engine,
        engine_used=evaluation.engine_used,
        params=evaluation.params,
        scorer=evaluation.scorer,
        summary=evaluation.summary,
        status=evaluation.status,
        error=evaluation.error,
        samples=evaluation.samples,
        created_by=evaluation.created_by,
        created_at=evaluation.created_at,
        finished_at=evaluation.finished_at,
        scorings=[
            ScoringPublic.model_validate(row, from_attributes=True) for row in scorings or []
        ],
    )


def _with_scorings(session: SessionDep, evaluation: Evaluation) -> EvaluationPublic:
    assert evaluation.id is not None
    return to_public(evaluation, service.scorings(session, [evaluation.id])[evaluation.id])


def _rubric(rubric: Rubric) -> RubricPublic:
    return RubricPublic.model_validate(rubric, from_attributes=True)


@router.post("", status_code=status.HTTP_201_CREATED)
def create_evaluation(
    body: EvaluationCreate,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> EvaluationPublic:
    """Evaluate a model: its generation job is queued; results follow when it ends."""
    from training_platform.projects.service import project_for_submit

    project = project_for_submit(session=session, caller=token, name=body.project)
    evaluation, job = service.create(
        session=session,
        settings=settings,
        request=body,
        actor=token.actor,
        project_id=project.id,
        user_id=token.user_id,
    )
    session.commit()
    try:
        dispatcher.dispatch(job)
    except Exception as error:  # stored; the supervisor resends the message
        log.warning("evaluation job %s: start message not sent (%s)", job.id, error)
    return to_public(evaluation)


@router.get("")
def list_evaluations(
    session: SessionDep,
    token: CurrentToken,
    evaluation_status: Annotated[
        list[Literal["pending", "succeeded", "failed", "cancelled"]] | None,
        Query(alias="status"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: OffsetQuery = 0,
) -> EvaluationsPublic:
    """Evaluations of the caller's projects (an admin: all), newest first."""
    from training_platform.projects.service import visible_project_ids

    rows, count = service.list_evaluations(
        session=session,
        status=evaluation_status,
        limit=limit,
        offset=offset,
        projects=visible_project_ids(session=session, caller=token),
    )
    found = service.scorings(session, [e.id for e in rows if e.id is not None])
    return EvaluationsPublic(items=[to_public(e, found.get(e.id or 0)) for e in rows], total=count)


@router.get("/scorers")
def scorers(_: CurrentToken) -> dict[str, str]:
    """Every scorer spec and what it measures."""
    return scoring.describe()


@router.get("/rubrics")
def list_rubrics(session: SessionDep, _: CurrentToken) -> list[RubricPublic]:
    """The rubrics an LLM judge can be asked (judge:ENDPOINT:RUBRIC)."""
    return [_rubric(r) for r in service.list_rubrics(session=session)]


@router.post("/rubrics", status_code=status.HTTP_201_CREATED)
def create_rubric(body: RubricCreate, session: SessionDep, token: CurrentToken) -> RubricPublic:
    """Store a rubric: the question an LLM judge is asked about each sample."""
    rubric = service.create_rubric(
        session=session,
        name=body.name,
        text=body.text,
        max_score=body.max_score,
        actor=token.actor,
    )
    session.commit()
    return _rubric(rubric)


@router.delete("/rubrics/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rubric(
    name: Annotated[str, PathParam(min_length=1, max_length=200)],
    session: SessionDep,
    _: CurrentToken,
) -> None:
    """Delete a rubric (scores it gave stay)."""
    service.delete_rubric(session=session, name=name)
    session.commit()


def _suite(suite: EvalSuite) -> SuitePublic:
    return SuitePublic.model_validate(suite, from_attributes=True)


def _suite_run(session: SessionDep, run: SuiteRun) -> SuiteRunPublic:
    assert run.id is not None
    state, mean, items = service.suite_run_result(session, run)
    return SuiteRunPublic(
        id=run.id,
        name=run.name,
        suite=run.suite,
        model=run.model_name,
        status=state,
        mean=mean,
        items=[
            SuiteRunItem(
                dataset=evaluation.dataset_name if evaluation else "(deleted)",
                scorer=scorer,
                evaluation=evaluation_id,
                status=evaluation.status if evaluation else "failed",
                summary=evaluation.summary.get(scorer) if evaluation else None,
            )
            for evaluation_id, (evaluation, scorer) in zip(run.evaluation_ids, items, strict=True)
        ],
        created_by=run.created_by,
        created_at=run.created_at,
    )


@router.get("/suites")
def list_suites(session: SessionDep, _: CurrentToken) -> list[SuitePublic]:
    """Suites: named sets of datasets, each with its scorer."""
    return [_suite(s) for s in service.list_suites(session=session)]


@router.post("/suites", status_code=status.HTTP_201_CREATED)
def create_suite(body: SuiteCreate, session: SessionDep, token: CurrentToken) -> SuitePublic:
    """Store a suite."""
    suite = service.create_suite(session=session, request=body, actor=token.actor)
    session.commit()
    return _suite(suite)


@router.delete("/suites/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_suite(
    name: Annotated[str, PathParam(min_length=1, max_length=200)],
    session: SessionDep,
    _: CurrentToken,
) -> None:
    """Delete a suite (its runs and their evaluations stay)."""
    service.delete_suite(session=session, name=name)
    session.commit()


@router.post("/suites/{name}/runs", status_code=status.HTTP_201_CREATED)
def run_suite(
    name: Annotated[str, PathParam(min_length=1, max_length=200)],
    body: SuiteRunCreate,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    dispatcher: DispatcherDep,
) -> SuiteRunPublic:
    """Evaluate a model on every dataset of the suite: one evaluation (and its generation
    job) per dataset, all stored together or none."""
    from training_platform.projects.service import project_for_submit

    project = project_for_submit(session=session, caller=token, name=body.project)
    run, jobs = service.run_suite(
        session=session,
        settings=settings,
        suite_name=name,
        request=body,
        actor=token.actor,
        project_id=project.id,
        user_id=token.user_id,
    )
    session.commit()
    for job in jobs:
        try:
            dispatcher.dispatch(job)
        except Exception as error:  # stored; the supervisor resends the message
            log.warning("evaluation job %s: start message not sent (%s)", job.id, error)
    return _suite_run(session, run)


@router.get("/suite-runs")
def list_suite_runs(
    session: SessionDep,
    _: CurrentToken,
    suite: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: OffsetQuery = 0,
) -> SuiteRunsPublic:
    """Suite runs, newest first, each with its datasets' results."""
    rows, count = service.list_suite_runs(session=session, suite=suite, limit=limit, offset=offset)
    return SuiteRunsPublic(items=[_suite_run(session, r) for r in rows], total=count)


@router.get("/suite-runs/{run_id}")
def get_suite_run(run_id: IdPath, session: SessionDep, _: CurrentToken) -> SuiteRunPublic:
    """One suite run: each dataset's evaluation and score, and their mean once all are in."""
    return _suite_run(session, service.get_suite_run(session=session, run_id=run_id))


def _visible(session: Session, caller: Caller, ids: list[int]) -> None:
    """404 for an evaluation of a project the caller does not see (as by id in the path)."""
    from training_platform.projects.service import check_visible

    for evaluation_id in ids:
        project_id = _project_of(session, evaluation_id)
        what = f"evaluation {evaluation_id}"
        check_visible(session=session, caller=caller, project_id=project_id, what=what)


@router.get("/compare")
def compare(
    session: SessionDep,
    token: CurrentToken,
    a: IdQuery,
    b: IdQuery,
    scorer: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    change: Annotated[Literal["improved", "regressed", "unchanged"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: OffsetQuery = 0,
) -> ComparisonPublic:
    """B against A on their shared samples: counts, delta and paired test; a page of samples
    (both outputs side by side), optionally only those that improved, regressed or did not
    change."""
    _visible(session, token, [a, b])
    spec, paired, shown, count = service.compare(
        session=session, a_id=a, b_id=b, spec=scorer, change=change, limit=limit, offset=offset
    )
    return ComparisonPublic(
        a=a, b=b, scorer=spec, stats=paired.to_dict(), samples=shown, total=count
    )


@router.get("/rank")
def rank(
    session: SessionDep,
    token: CurrentToken,
    baseline: IdQuery,
    candidate: Annotated[list[Annotated[int, Query(ge=1, le=DB_INT_MAX)]], Query()],
    scorer: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
) -> RankingPublic:
    """N candidates (`candidate`, repeated) against one baseline on the samples each shares
    with it, best first: each with the paired test of a compare and its p-value adjusted over
    all candidates (Benjamini-Hochberg)."""
    _visible(session, token, [baseline, *candidate])
    spec, base, ranked = service.rank(
        session=session, baseline_id=baseline, candidate_ids=candidate, spec=scorer
    )
    assert base.id is not None
    return RankingPublic(
        baseline=base.id,
        baseline_name=base.name,
        baseline_mean=service.score_of(base, spec),
        scorer=spec,
        candidates=[
            RankedCandidate(
                evaluation=r.evaluation.id or 0,
                name=r.evaluation.name,
                model=r.evaluation.model_name,
                stats=r.paired.to_dict(),
                p_adjusted=r.p_adjusted,
                significant=r.significant,
            )
            for r in ranked
        ],
    )


@router.get("/{evaluation_id}")
def get_evaluation(evaluation_id: IdPath, session: SessionDep, _: CurrentToken) -> EvaluationPublic:
    """One evaluation with its summary per scorer (mean, standard error, 95% interval)."""
    return _with_scorings(session, service.get(session=session, evaluation_id=evaluation_id))


@router.get("/{evaluation_id}/samples")
def evaluation_samples(
    evaluation_id: IdPath,
    session: SessionDep,
    _: CurrentToken,
    q: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: OffsetQuery = 0,
) -> SamplesPublic:
    """A page of samples with every score they have; q searches prompt, reference and output."""
    rows, count = service.samples(
        session=session, evaluation_id=evaluation_id, q=q, limit=limit, offset=offset
    )
    return SamplesPublic(
        items=[
            SamplePublic(
                idx=s.idx,
                prompt=s.prompt,
                reference=s.reference,
                output=s.output,
                outputs=s.outputs,
                labels=s.labels,
                scores=scores,
                details=details,
            )
            for s, scores, details in rows
        ],
        total=count,
    )


@router.get("/{evaluation_id}/breakdown")
def evaluation_breakdown(
    evaluation_id: IdPath,
    session: SessionDep,
    _: CurrentToken,
    label: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    scorer: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
) -> BreakdownPublic:
    """The score (mean, standard error, 95% interval) by the value of one dataset label; the
    label keys the samples have, to choose from."""
    spec, keys, groups = service.breakdown(
        session=session, evaluation_id=evaluation_id, spec=scorer, label=label
    )
    return BreakdownPublic(
        scorer=spec,
        label=label,
        labels=keys,
        groups=[LabelGroup(value=value, **summary.to_dict()) for value, summary in groups],
    )


@router.post("/{evaluation_id}/rescore")
def rescore(
    evaluation_id: IdPath, body: Rescore, session: SessionDep, token: CurrentToken
) -> EvaluationPublic:
    """Score the stored generations with another scorer; nothing is generated again. An
    uploaded file or an LLM judge scores on a worker: the answer lists it in `scorings`
    (queued), and its summary appears when it has succeeded."""
    evaluation = service.rescore(
        session=session, evaluation_id=evaluation_id, spec=body.scorer, actor=token.actor
    )
    session.commit()
    scorer = scoring.parse(body.scorer)
    if scorer.deferred and scorer.spec not in evaluation.summary:
        from training_platform.evaluation.tasks import send_scoring

        try:
            send_scoring(evaluation_id, scorer.spec)
        except Exception as error:  # stored; the evaluation tick sends it again
            log.warning(
                "scoring %s of %s: message not sent (%s)", body.scorer, evaluation_id, error
            )
    return _with_scorings(session, evaluation)


@router.delete("/{evaluation_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_evaluation(evaluation_id: IdPath, session: SessionDep, _: CurrentToken) -> None:
    """Delete an ended evaluation with its samples and scores (its job stays)."""
    service.delete_evaluation(session=session, evaluation_id=evaluation_id)
    session.commit()
