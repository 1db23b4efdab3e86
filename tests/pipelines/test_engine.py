"""The pipeline engine, step by step, on SQLite and PostgreSQL.

Stage jobs are real jobs made by the jobs service; here their endings are set through the job
state machine (as the supervisor would after the process exits) so that every branch of the
engine is decided quickly. tests/e2e/test_pipelines.py runs pipelines for real through the queue.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.catalog.models import ModelEntry
from training_platform.core.errors import Conflict, InvalidInput
from training_platform.core.settings import Settings
from training_platform.evaluation.models import Evaluation
from training_platform.jobs import service as jobs
from training_platform.jobs.models import Job, JobMetric
from training_platform.jobs.state import JobStatus, transition
from training_platform.pipelines import engine as pipeline_engine
from training_platform.pipelines import service
from training_platform.pipelines.schemas import PipelineSubmit

SFT = {
    "algorithm": "sft",
    "model": "tiny-qwen2",
    "dataset": "tiny-sft",
    "hyperparameters": {"max_steps": 3},
}


class Sent:
    """Collects what the engine asks the queue to do (the Celery transport is not under test)."""

    def __init__(self) -> None:
        self.dispatched: list[int] = []
        self.cancelled: list[int] = []
        self.schedules = 0

    def dispatch(self, job: Job) -> None:
        assert job.id is not None
        self.dispatched.append(job.id)

    def request_cancel(self, job: Job) -> None:
        assert job.id is not None
        self.cancelled.append(job.id)

    def request_schedule(self) -> None:
        self.schedules += 1


@pytest.fixture
def sent() -> Sent:
    return Sent()


def _submit(engine: Engine, stages: dict[str, Any], **extra: Any) -> int:
    with Session(engine, expire_on_commit=False) as session:
        pipeline, created = service.submit(
            session=session,
            request=PipelineSubmit.model_validate(
                {"definition": {"name": "p", "stages": stages, **extra}}
            ),
            actor="test",
        )
        session.commit()
    assert created and pipeline.id is not None
    return pipeline.id


def _advance(engine: Engine, settings: Settings, sent: Sent, pipeline_id: int) -> str:
    pipeline = pipeline_engine.advance(engine, settings, pipeline_id, sent)
    assert pipeline is not None
    return pipeline.status


def _stages(engine: Engine, pipeline_id: int) -> dict[str, Any]:
    with Session(engine, expire_on_commit=False) as session:
        return {s.name: s for s in service.stages_of(session=session, pipeline_id=pipeline_id)}


def _job(engine: Engine, job_id: int) -> Job:
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _end(
    engine: Engine,
    settings: Settings,
    job_id: int,
    status: JobStatus,
    metrics: dict[str, float] | None = None,
    model: bool = True,
) -> None:
    """Walk a stage's job to its end as a worker and the supervisor would."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        for step in (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING):
            job = transition(session, job, step, actor="test", reason="t")
        values: dict[str, Any] = {"exit_code": 0 if status is JobStatus.SUCCEEDED else 1}
        if status is JobStatus.SUCCEEDED and model:
            directory = jobs.run_dir_for(settings, job) / "model"
            directory.mkdir(parents=True)
            (directory / "config.json").write_text("{}")
            values["outputs"] = {"model": "model"}
        if status is JobStatus.FAILED:
            values["error"] = "training process exited with code 1\nTraceback..."
        for step, (key, value) in enumerate((metrics or {}).items()):
            session.add(JobMetric(job_id=job_id, attempt=1, step=step + 1, key=key, value=value))
        transition(session, job, status, actor="test", reason="t", values=values)
        # An evaluation's job: its results stored as the evaluation pass would.
        evaluation = session.exec(select(Evaluation).where(Evaluation.job_id == job_id)).first()
        if evaluation is not None:
            evaluation.status = "succeeded" if status is JobStatus.SUCCEEDED else "failed"
            mean = (metrics or {}).get("accuracy")
            evaluation.summary = {evaluation.scorer: {"mean": mean, "n": 5}}
            session.add(evaluation)
        session.commit()


def test_a_chain_runs_stage_by_stage_handing_on_the_checkpoint(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    pipeline_id = _submit(
        engine,
        {
            "sft": {"job": SFT},
            "sft2": {
                "depends_on": ["sft"],
                "job": {**SFT, "model": "${stages.sft.outputs.checkpoint}"},
            },
            "eval": {
                "depends_on": ["sft2"],
                "evaluate": {
                    "model": "${stages.sft2.outputs.checkpoint}",
                    "dataset": "tiny-math-eval",
                },
            },
        },
        priority=8,
    )
    assert _advance(engine, settings, sent, pipeline_id) == "running"
    stages = _stages(engine, pipeline_id)
    assert [stages[n].status for n in ("sft", "sft2", "eval")] == ["running", "pending", "pending"]
    first = _job(engine, stages["sft"].job_id)
    assert first.priority == 8 and first.status == "pending" and first.name == "p / sft"
    assert sent.dispatched == [first.id]
    _advance(engine, settings, sent, pipeline_id)
    assert sent.dispatched == [first.id]  # idempotent: no second job, no second message

    _end(engine, settings, first.id, JobStatus.SUCCEEDED, {"loss": 1.5})  # type: ignore[arg-type]
    _advance(engine, settings, sent, pipeline_id)
    stages = _stages(engine, pipeline_id)
    assert stages["sft"].status == "succeeded"
    assert stages["sft"].outputs == {
        "job": first.id,
        "metrics": {"loss": 1.5},
        "checkpoint": f"pipeline-{pipeline_id}.sft",
    }
    second = _job(engine, stages["sft2"].job_id)
    with Session(engine) as session:
        produced = session.exec(
            select(ModelEntry).where(ModelEntry.name == f"pipeline-{pipeline_id}.sft")
        ).one()
        assert produced.job_id == first.id and produced.source == "job"
        assert second.model_id == produced.id
        lineage = service.lineage(session=session, job_id=second.id)  # type: ignore[arg-type]
    assert lineage["pipeline"] == {"id": pipeline_id, "name": "p", "stage": "sft2", "run": 1}
    assert lineage["model"]["produced_by"]["job_id"] == first.id
    assert lineage["model"]["produced_by"]["stage"] == "sft"

    _end(engine, settings, second.id, JobStatus.SUCCEEDED)  # type: ignore[arg-type]
    _advance(engine, settings, sent, pipeline_id)
    evaluation = _job(engine, _stages(engine, pipeline_id)["eval"].job_id)
    assert (evaluation.backend, evaluation.algorithm) == ("builtin", "evaluate")
    assert evaluation.spec["hyperparameters"]["metric"] == "numeric_match"
    _end(
        engine,
        settings,
        evaluation.id,
        JobStatus.SUCCEEDED,
        {"accuracy": 0.25, "correct": 2, "total": 8},
        model=False,
    )  # type: ignore[arg-type]
    assert _advance(engine, settings, sent, pipeline_id) == "succeeded"
    outputs = _stages(engine, pipeline_id)["eval"].outputs
    assert (outputs["accuracy"], outputs["correct"], outputs["total"]) == (0.25, 2, 8)


def test_a_failed_middle_stage_skips_its_dependents_and_retry_reruns_only_it_and_what_follows(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    pipeline_id = _submit(
        engine,
        {
            "a": {"job": SFT},
            "b": {"depends_on": ["a"], "job": {**SFT, "model": "${stages.a.outputs.checkpoint}"}},
            "c": {"depends_on": ["b"], "job": {**SFT, "model": "${stages.b.outputs.checkpoint}"}},
        },
    )
    _advance(engine, settings, sent, pipeline_id)
    a_job = _stages(engine, pipeline_id)["a"].job_id
    _end(engine, settings, a_job, JobStatus.SUCCEEDED)
    _advance(engine, settings, sent, pipeline_id)
    b_job = _stages(engine, pipeline_id)["b"].job_id
    _end(engine, settings, b_job, JobStatus.FAILED)
    assert _advance(engine, settings, sent, pipeline_id) == "failed"
    stages = _stages(engine, pipeline_id)
    assert [stages[n].status for n in "abc"] == ["succeeded", "failed", "skipped"]
    assert "exited with code 1" in stages["b"].reason
    assert stages["c"].reason == "upstream stage 'b' failed"

    with (
        Session(engine) as session,
        pytest.raises(InvalidInput, match="depends on 'b', which is failed"),
    ):
        service.retry(session=session, pipeline_id=pipeline_id, actor="test", from_stage="c")
    with Session(engine) as session:
        service.retry(session=session, pipeline_id=pipeline_id, actor="test", from_stage="b")
        session.commit()
    assert _advance(engine, settings, sent, pipeline_id) == "running"
    stages = _stages(engine, pipeline_id)
    assert stages["a"].job_id == a_job and stages["a"].run == 1  # reused, not rerun
    assert stages["b"].run == 2 and stages["b"].job_id not in (None, b_job)
    assert stages["c"].status == "pending"
    _end(engine, settings, stages["b"].job_id, JobStatus.SUCCEEDED)
    _advance(engine, settings, sent, pipeline_id)
    stages = _stages(engine, pipeline_id)
    assert stages["b"].outputs["checkpoint"] == f"pipeline-{pipeline_id}.b.r2"
    _end(engine, settings, stages["c"].job_id, JobStatus.SUCCEEDED)
    assert _advance(engine, settings, sent, pipeline_id) == "succeeded"
    with Session(engine) as session:
        made = session.exec(select(Job).where(col(Job.name).like("p / %"))).all()
        runs = service.runs_of(session=session, stage_ids=[s.id for s in stages.values()])
    assert sorted(j.name for j in made) == ["p / a", "p / b", "p / b", "p / c"]
    assert runs[stages["b"].id] == [b_job, stages["b"].job_id]


def test_a_diamond_starts_both_branches_together_and_the_join_after_both(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    pipeline_id = _submit(
        engine,
        {
            "a": {"job": SFT},
            "b": {"depends_on": ["a"], "job": SFT},
            "c": {"depends_on": ["a"], "job": SFT},
            "d": {"depends_on": ["b", "c"], "job": SFT},
        },
    )
    _advance(engine, settings, sent, pipeline_id)
    _end(engine, settings, _stages(engine, pipeline_id)["a"].job_id, JobStatus.SUCCEEDED)
    _advance(engine, settings, sent, pipeline_id)
    stages = _stages(engine, pipeline_id)
    assert (stages["b"].status, stages["c"].status, stages["d"].status) == (
        "running",
        "running",
        "pending",
    )
    _end(engine, settings, stages["b"].job_id, JobStatus.SUCCEEDED)
    _advance(engine, settings, sent, pipeline_id)
    assert _stages(engine, pipeline_id)["d"].status == "pending"  # c still runs
    _end(engine, settings, stages["c"].job_id, JobStatus.SUCCEEDED)
    _advance(engine, settings, sent, pipeline_id)
    assert _stages(engine, pipeline_id)["d"].status == "running"


def test_a_condition_that_does_not_hold_skips_the_stage_without_failing_the_pipeline(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    pipeline_id = _submit(
        engine,
        {
            "eval": {"evaluate": {"model": "tiny-qwen2", "dataset": "tiny-math-eval"}},
            "more": {
                "depends_on": ["eval"],
                "when": [{"left": "${stages.eval.outputs.accuracy}", "op": ">=", "right": 0.5}],
                "job": SFT,
            },
            "after": {"depends_on": ["more"], "job": SFT},
        },
    )
    _advance(engine, settings, sent, pipeline_id)
    job_id = _stages(engine, pipeline_id)["eval"].job_id
    _end(
        engine,
        settings,
        job_id,
        JobStatus.SUCCEEDED,
        {"accuracy": 0.2, "correct": 1, "total": 5},
        model=False,
    )
    assert _advance(engine, settings, sent, pipeline_id) == "succeeded"
    stages = _stages(engine, pipeline_id)
    assert stages["more"].skipped_by_condition
    assert stages["more"].reason == (
        "condition not met: ${stages.eval.outputs.accuracy} = 0.2 >= 0.5 does not hold"
    )
    assert stages["after"].status == "skipped" and not stages["after"].skipped_by_condition


def test_a_stage_job_waiting_for_its_policy_retry_keeps_the_stage_running(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    pipeline_id = _submit(engine, {"a": {"job": {**SFT, "policy": {"max_attempts": 3}}}})
    _advance(engine, settings, sent, pipeline_id)
    job_id = _stages(engine, pipeline_id)["a"].job_id
    assert _job(engine, job_id).spec["policy"]["max_attempts"] == 3
    _end(engine, settings, job_id, JobStatus.FAILED)
    with Session(engine) as session:
        job = session.get(Job, job_id)
        job.retry_at = job.finished_at  # what the policy sets for a retryable failure
        session.add(job)
        session.commit()
    _advance(engine, settings, sent, pipeline_id)
    assert _stages(engine, pipeline_id)["a"].status == "running"


def test_cancel_stops_running_stage_jobs_and_ends_cancelled(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    pipeline_id = _submit(engine, {"a": {"job": SFT}, "b": {"depends_on": ["a"], "job": SFT}})
    _advance(engine, settings, sent, pipeline_id)
    job_id = _stages(engine, pipeline_id)["a"].job_id
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        for step in (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING):
            job = transition(session, job, step, actor="test", reason="t")
        session.commit()
        pipeline, signal = service.cancel(session=session, pipeline_id=pipeline_id, actor="token:t")
        session.commit()
    assert [j.id for j in signal] == [job_id] and pipeline.status == "cancelling"
    assert _advance(engine, settings, sent, pipeline_id) == "cancelling"  # the process still runs
    assert _stages(engine, pipeline_id)["b"].status == "cancelled"
    with Session(engine, expire_on_commit=False) as session:
        transition(session, session.get(Job, job_id), JobStatus.CANCELLED, actor="test", reason="t")
        session.commit()
    assert _advance(engine, settings, sent, pipeline_id) == "cancelled"
    with Session(engine) as session, pytest.raises(Conflict):
        service.cancel(session=session, pipeline_id=pipeline_id, actor="t")


def test_a_paused_pipeline_starts_nothing_until_resumed(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    pipeline_id = _submit(engine, {"a": {"job": SFT}, "b": {"depends_on": ["a"], "job": SFT}})
    _advance(engine, settings, sent, pipeline_id)
    with Session(engine) as session:
        service.pause(session=session, pipeline_id=pipeline_id, actor="t")
        session.commit()
    _end(engine, settings, _stages(engine, pipeline_id)["a"].job_id, JobStatus.SUCCEEDED)
    assert _advance(engine, settings, sent, pipeline_id) == "paused"
    assert _stages(engine, pipeline_id)["b"].status == "pending"
    with Session(engine) as session:
        service.resume(session=session, pipeline_id=pipeline_id, actor="t")
        session.commit()
    _advance(engine, settings, sent, pipeline_id)
    assert _stages(engine, pipeline_id)["b"].status == "running"


def test_a_stage_whose_resolved_job_is_refused_fails_with_the_reason(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    pipeline_id = _submit(
        engine,
        {
            "eval": {"evaluate": {"model": "tiny-qwen2", "dataset": "tiny-math-eval"}},
            "sft": {
                "depends_on": ["eval"],
                "job": {
                    **SFT,
                    "hyperparameters": {
                        "max_steps": "${stages.eval.outputs.total}",
                        "learning_rate": "${stages.eval.outputs.metrics.missing}",
                    },
                },
            },
        },
    )
    _advance(engine, settings, sent, pipeline_id)
    job_id = _stages(engine, pipeline_id)["eval"].job_id
    _end(
        engine,
        settings,
        job_id,
        JobStatus.SUCCEEDED,
        {"accuracy": 0.0, "correct": 0, "total": 4},
        model=False,
    )
    assert _advance(engine, settings, sent, pipeline_id) == "failed"
    assert "reported no value for 'missing'" in _stages(engine, pipeline_id)["sft"].reason


@pytest.mark.parametrize(
    ("stage", "loc", "message"),
    [
        ({"job": {**SFT, "dataset": "nope"}}, ("job", "dataset"), "unknown dataset 'nope'"),
        ({"job": {**SFT, "dataset": "tiny-math"}}, ("job", "dataset"), "needs sft data"),
        (
            {"job": {**SFT, "hyperparameters": {"max_steps": 0}}},
            ("job", "hyperparameters", "max_steps"),
            "greater than or equal to 1",
        ),
        ({"job": {**SFT, "algorithm": "nope"}}, ("job", "algorithm"), "does not support 'nope'"),
        ({"job": {**SFT, "model": "nope"}}, ("job", "model"), "unknown model 'nope'"),
        (
            {"evaluate": {"model": "tiny-qwen2", "dataset": "tiny-prefs"}},
            ("evaluate", "dataset"),
            "needs rl data",
        ),
        (
            {"evaluate": {"model": "tiny-qwen2", "dataset": "tiny-math-eval", "metric": "bleu"}},
            ("evaluate", "metric"),
            "exact_match",
        ),
        (
            {"evaluate": {"model": "tiny-qwen2", "dataset": "tiny-math-eval", "scorer": "x"}},
            ("evaluate", "scorer"),
            "unknown scorer",
        ),
        (
            {"select": {"job": 1, "dataset": "tiny-math-eval", "scorer": "judge:e:r"}},
            ("select", "scorer"),
            "runs on a worker",
        ),
        (
            {"select": {"job": 1, "dataset": "tiny-prefs"}},
            ("select", "dataset"),
            "needs prompt/answer data",
        ),
        ({"select": {"job": 1, "dataset": "nope"}}, ("select", "dataset"), "unknown dataset"),
        (
            {"select": {"job": 999, "dataset": "tiny-math-eval"}},
            ("select", "job"),
            "job 999 not found",
        ),
        (
            {"select": {"job": "42", "dataset": "tiny-math-eval"}},
            ("select", "job"),
            "give a reference such as ${stages.sft.outputs.job}, or a job id",
        ),
        (
            {"gate": {"baseline": "3", "candidate": "4"}},
            ("gate", "baseline"),
            "give a reference such as ${stages.eval.outputs.evaluation}",
        ),
        (
            {"gate": {"baseline": "a", "candidate": "b", "scorer": "regex:("}},
            ("gate", "scorer"),
            "does not compile",
        ),
        (
            {"gate": {"baseline": "a", "candidate": "b"}},
            ("gate", "baseline"),
            "give a reference",
        ),
    ],
)
def test_stages_are_checked_against_their_backend_and_the_catalog_on_submit(
    engine: Engine, stage: dict[str, Any], loc: tuple[str, ...], message: str
) -> None:
    with Session(engine) as session, pytest.raises(InvalidInput) as error:
        service.submit(
            session=session,
            request=PipelineSubmit.model_validate(
                {"definition": {"name": "p", "stages": {"s": stage}}}
            ),
            actor="t",
        )
    assert error.value.loc == ("body", "definition", "stages", "s", *loc)
    assert message in error.value.message
    with Session(engine) as session:
        assert service.list_pipelines(session=session)[1] == 0  # nothing half-written


def test_a_number_cannot_feed_an_integer_hyperparameter(engine: Engine) -> None:
    stages = {
        "eval": {"evaluate": {"model": "tiny-qwen2", "dataset": "tiny-math-eval"}},
        "sft": {
            "depends_on": ["eval"],
            "job": {**SFT, "hyperparameters": {"max_steps": "${stages.eval.outputs.accuracy}"}},
        },
    }
    with Session(engine) as session, pytest.raises(InvalidInput) as error:
        service.submit(
            session=session,
            request=PipelineSubmit.model_validate({"definition": {"name": "p", "stages": stages}}),
            actor="t",
        )
    assert error.value.loc[-2:] == ("hyperparameters", "max_steps")
    assert "type mismatch" in error.value.message and "an integer" in error.value.message


def test_the_same_idempotency_key_never_makes_two_pipelines(engine: Engine) -> None:
    request = PipelineSubmit.model_validate({"template": "sft-dpo", "parameters": {"sft_steps": 2}})
    with Session(engine) as session:
        first, created = service.submit(
            session=session, request=request, actor="t", idempotency_key="k"
        )
        session.commit()
        again, created_again = service.submit(
            session=session, request=request, actor="t", idempotency_key="k"
        )
    assert created and not created_again and again.id == first.id
    other = PipelineSubmit.model_validate({"template": "sft-dpo"})
    with Session(engine) as session, pytest.raises(InvalidInput, match="already used"):
        service.submit(session=session, request=other, actor="t", idempotency_key="k")


def test_pausing_a_pipeline_pauses_its_running_stage_job_and_resume_resumes_it(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    pipeline_id = _submit(engine, {"a": {"job": SFT}})
    _advance(engine, settings, sent, pipeline_id)
    job_id = _stages(engine, pipeline_id)["a"].job_id
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        for step in (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING):
            job = transition(session, job, step, actor="test", reason="t")
        session.commit()
        service.pause(session=session, pipeline_id=pipeline_id, actor="t")
        session.commit()
    _advance(engine, settings, sent, pipeline_id)
    held = _job(engine, job_id)
    assert (held.status, held.pause_mode) == ("pausing", "checkpoint")  # TRL checkpoints and stops
    with Session(engine, expire_on_commit=False) as session:
        transition(session, session.get(Job, job_id), JobStatus.PAUSED, actor="test", reason="t")
        session.commit()
        service.resume(session=session, pipeline_id=pipeline_id, actor="t")
        session.commit()
    _advance(engine, settings, sent, pipeline_id)
    assert _job(engine, job_id).status == "resuming" and sent.schedules == 1
    # A job paused by someone else stays paused when the pipeline runs on.
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        for step in (JobStatus.STARTING, JobStatus.RUNNING):
            job = transition(session, job, step, actor="test", reason="t")
        jobs.pause(session=session, job_id=job_id, actor="token:someone")
        transition(session, session.get(Job, job_id), JobStatus.PAUSED, actor="test", reason="t")
        session.commit()
    _advance(engine, settings, sent, pipeline_id)
    assert _job(engine, job_id).status == "paused"


def _scored(engine: Engine, job_id: int, passes: list[int]) -> None:
    """The stored per-sample scores of an evaluation stage's evaluation (numeric)."""
    from training_platform.evaluation.models import EvaluationScore

    with Session(engine) as session:
        evaluation = session.exec(select(Evaluation).where(Evaluation.job_id == job_id)).one()
        for idx, score in enumerate(passes):
            session.add(
                EvaluationScore(
                    evaluation_id=evaluation.id, scorer="numeric", idx=idx, score=float(score)
                )
            )
        evaluation.samples = len(passes)
        session.add(evaluation)
        session.commit()


def test_a_gate_over_a_guard_suite_fails_when_one_pair_regresses(
    engine: Engine, settings: Settings, sent: Sent
) -> None:
    evaluate = {"model": "tiny-qwen2", "dataset": "tiny-math-eval"}
    names = ("base_a", "new_a", "base_b", "new_b")
    ref = "${stages.%s.outputs.evaluation}"
    stages: dict[str, Any] = {name: {"evaluate": evaluate} for name in names}
    stages["gate"] = {
        "depends_on": list(names),
        "gate": {
            "baseline": [ref % "base_a", ref % "base_b"],
            "candidate": [ref % "new_a", ref % "new_b"],
        },
    }
    uneven = {"baseline": [ref % "base_a"], "candidate": [ref % "new_a", ref % "new_b"]}
    with pytest.raises(InvalidInput, match="as many evaluations") as raised:
        _submit(engine, {**stages, "gate": {**stages["gate"], "gate": uneven}})
    assert "gate" in raised.value.loc
    pipeline_id = _submit(engine, stages)
    _advance(engine, settings, sent, pipeline_id)
    found = _stages(engine, pipeline_id)
    # Dataset a: unchanged; dataset b: 30 of 40 right before, 10 after.
    passes = {
        "base_a": [1] * 30 + [0] * 10,
        "new_a": [1] * 30 + [0] * 10,
        "base_b": [1] * 30 + [0] * 10,
        "new_b": [1] * 10 + [0] * 30,
    }
    for name in names:
        job_id = found[name].job_id
        accuracy = sum(passes[name]) / 40
        _end(engine, settings, job_id, JobStatus.SUCCEEDED, {"accuracy": accuracy}, model=False)
        _scored(engine, job_id, passes[name])
    _advance(engine, settings, sent, pipeline_id)
    assert _advance(engine, settings, sent, pipeline_id) == "failed"
    gate = _stages(engine, pipeline_id)["gate"]
    assert gate.status == "failed"
    assert "the candidate regressed significantly" in gate.reason
    with Session(engine) as session:
        new_b = session.exec(
            select(Evaluation).where(Evaluation.job_id == found["new_b"].job_id)
        ).one()
    assert f"evaluations {new_b.id} vs" in gate.reason and "adjusted" in gate.reason
    assert gate.outputs["pairs"] == 2 and gate.outputs["candidate"] == new_b.id
    assert gate.outputs["delta"] == pytest.approx(-0.5) and gate.outputs["regressed"] == 20
