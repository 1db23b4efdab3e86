"""Collecting an evaluation when its job ends, on SQLite and PostgreSQL: stored once, failures
carried over, re-scoring and comparing from the stored rows. The generation itself runs for
real in tests/e2e/test_evaluation.py; here the run directory holds what the program writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from training_platform.core.errors import Conflict, InvalidInput
from training_platform.evaluation import service
from training_platform.evaluation.models import Evaluation, EvaluationSample, EvaluationScore
from training_platform.evaluation.schemas import EvaluationCreate
from training_platform.jobs.models import Job
from training_platform.runners.local import LocalRunner

NODE = "eval-node"


def _submit(engine: Any, settings: Any, name: str = "e") -> int:
    with Session(engine) as session:
        request = EvaluationCreate(
            name=name, model="tiny-qwen2", dataset="tiny-math-eval", scorer="numeric"
        )
        evaluation, _ = service.create(
            session=session, settings=settings, request=request, actor="test"
        )
        session.commit()
        assert evaluation.id is not None
        return evaluation.id


def _end_job(engine: Any, evaluation_id: int, status: str, run_dir: Path, **values: Any) -> None:
    with Session(engine) as session:
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None
        handle = {"runner": "local", "node": NODE, "run_dir": str(run_dir), "pid": 1}
        session.execute(
            update(Job)
            .where(col(Job.id) == evaluation.job_id)
            .values(status=status, runner_handle=handle, **values)
        )
        session.commit()


def _write_run(run_dir: Path, outputs: list[str]) -> None:
    run_dir.mkdir(parents=True)
    with (run_dir / "predictions.jsonl").open("w") as handle:
        for index, output in enumerate(outputs):
            record = {"index": index, "prompt": f"What is {index} + 1?", "answer": str(index + 1)}
            labels = {"difficulty": "hard" if index % 2 else "easy"} if index < 3 else {}
            record.update(completion=output, correct=False, labels=labels)
            handle.write(json.dumps(record) + "\n")
    (run_dir / "results.json").write_text(json.dumps({"engine": "transformers"}))


def _collect(engine: Any) -> list[int]:
    with Session(engine) as session:
        return service.collect_all(session, {"local": LocalRunner(node=NODE)})


def test_generations_are_stored_once_and_scored(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first, second = _submit(engine, settings, "a"), _submit(engine, settings, "b")
    assert _collect(engine) == []  # their jobs have not ended
    _write_run(tmp_path / "a", ["1", "so 2", "no", "4"])
    _write_run(tmp_path / "b", ["1", "9", "3", "\\boxed{4}"])
    _end_job(engine, first, "succeeded", tmp_path / "a")
    _end_job(engine, second, "succeeded", tmp_path / "b")
    assert sorted(_collect(engine)) == [first, second]
    assert _collect(engine) == []  # settled: nothing is stored twice
    with Session(engine) as session:
        evaluation = session.get(Evaluation, first)
        assert evaluation is not None and evaluation.status == "succeeded"
        assert evaluation.samples == 4 and evaluation.engine_used == "transformers"
        assert evaluation.summary["numeric"]["mean"] == pytest.approx(0.75)
        stored = session.exec(
            select(func.count())
            .select_from(EvaluationSample)
            .where(col(EvaluationSample.evaluation_id) == first)
        ).one()
        assert stored == 4
        # Scored again from the stored rows: a second scorer, the first one's rows untouched.
        service.rescore(session=session, evaluation_id=first, spec="exact")
        service.rescore(session=session, evaluation_id=first, spec="exact")  # once only
        session.commit()
        scores = session.exec(
            select(EvaluationScore.scorer, func.count())
            .where(col(EvaluationScore.evaluation_id) == first)
            .group_by(col(EvaluationScore.scorer))
        ).all()
        assert dict(scores) == {"numeric": 4, "exact": 4}
        spec, paired, shown, total = service.compare(
            session=session, a_id=first, b_id=second, spec=None, change="regressed",
            limit=10, offset=0,
        )  # fmt: skip
        assert spec == "numeric"
        assert (paired.improved, paired.regressed, paired.unchanged) == (1, 1, 2)
        assert total == 1 and shown[0].idx == 1 and shown[0].output_b == "9"
        # By a dataset label: outputs "1", "so 2", "no", "4" -> easy 0 and 2, hard 1, none 3.
        spec, keys, groups = service.breakdown(
            session=session, evaluation_id=first, spec=None, label="difficulty"
        )
        assert (spec, keys) == ("numeric", ["difficulty"])
        by_value = {value: (summary.n, summary.mean) for value, summary in groups}
        assert by_value == {"easy": (2, 0.5), "hard": (1, 1.0), "(none)": (1, 1.0)}
        for bad, field in ((dict(label="tenant"), "label"), (dict(spec="bleu"), "scorer")):
            with pytest.raises(InvalidInput) as raised:
                service.breakdown(
                    session=session,
                    evaluation_id=first,
                    **{"spec": None, "label": "difficulty", **bad},  # type: ignore[arg-type]
                )
            assert raised.value.loc[-1] == field


def test_a_failed_or_cancelled_job_ends_its_evaluation_with_the_reason(
    engine, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    failed, cancelled = _submit(engine, settings, "f"), _submit(engine, settings, "c")
    _end_job(engine, failed, "failed", tmp_path / "f", error="out of memory")
    _end_job(engine, cancelled, "cancelled", tmp_path / "c")
    assert sorted(_collect(engine)) == [failed, cancelled]
    with Session(engine) as session:
        first = session.get(Evaluation, failed)
        second = session.get(Evaluation, cancelled)
        assert first is not None and second is not None
        assert (first.status, first.error) == ("failed", "out of memory")
        assert second.status == "cancelled" and "cancelled" in (second.error or "")
        with pytest.raises(Conflict, match="has no results"):
            service.rescore(session=session, evaluation_id=failed, spec="exact")


def test_a_job_that_wrote_no_generations_fails_its_evaluation(
    engine, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    evaluation_id = _submit(engine, settings)
    (tmp_path / "empty").mkdir()
    _end_job(engine, evaluation_id, "succeeded", tmp_path / "empty")
    assert _collect(engine) == [evaluation_id]
    with Session(engine) as session:
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None and evaluation.status == "failed"
        assert "wrote no generations" in (evaluation.error or "")


def test_a_refused_request_stores_nothing(engine, settings) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        jobs_before = session.exec(select(func.count()).select_from(Job)).one()
        for request, field in (
            (dict(model="tiny-qwen2", dataset="no-such-data"), "dataset"),
            (dict(model="tiny-qwen2", dataset="tiny-math-eval", scorer="regex:("), "scorer"),
            (dict(job=99999, dataset="tiny-math-eval"), "job"),
        ):
            with pytest.raises(InvalidInput) as raised:
                service.create(
                    session=session,
                    settings=settings,
                    request=EvaluationCreate(name="x", **request),
                    actor="test",
                )
            assert raised.value.loc[-1] == field
            session.rollback()
        assert session.exec(select(func.count()).select_from(Job)).one() == jobs_before
        assert session.exec(select(func.count()).select_from(Evaluation)).one() == 0


def test_a_checkpoint_is_evaluated_as_its_own_catalog_model(engine, settings) -> None:  # type: ignore[no-untyped-def]
    from training_platform.catalog.models import ModelEntry
    from training_platform.jobs import service as jobs
    from training_platform.jobs.models import Checkpoint

    trained = _submit(engine, settings, "the job that trained")
    with Session(engine) as session:
        job = session.get(Job, session.get(Evaluation, trained).job_id)  # type: ignore[union-attr]
        assert job is not None and job.id is not None
        run_dir = jobs.attempt_dir(settings, job, job.attempt)
        for step in (2, 4):
            (run_dir / f"checkpoints/checkpoint-{step}").mkdir(parents=True)
            (run_dir / f"checkpoints/checkpoint-{step}/config.json").write_text("{}")
            session.add(
                Checkpoint(
                    job_id=job.id,
                    attempt=job.attempt,
                    step=step,
                    path=f"checkpoints/checkpoint-{step}",
                )
            )
        (run_dir / "model").mkdir()
        (run_dir / "model/config.json").write_text("{}")
        session.add(
            Checkpoint(job_id=job.id, attempt=job.attempt, step=5, path="model", final=True)
        )
        job.status, job.outputs = "succeeded", {"model": "model"}
        session.add(job)
        session.commit()
        job_id = job.id

    def evaluate(**target: Any) -> str:
        with Session(engine) as session:
            request = EvaluationCreate(name="ckpt", dataset="tiny-math-eval", **target)
            evaluation, _ = service.create(
                session=session, settings=settings, request=request, actor="test"
            )
            session.commit()
            return evaluation.model_name

    checkpoint = {"job": job_id, "step": 4}
    assert evaluate(checkpoint=checkpoint) == f"job-{job_id}-step-4"
    assert evaluate(checkpoint=checkpoint) == f"job-{job_id}-step-4"  # registered once
    assert evaluate(job=job_id) == f"job-{job_id}-final"  # not taken for the checkpoint
    with Session(engine) as session:
        entries = session.exec(select(ModelEntry).where(ModelEntry.job_id == job_id)).all()
        assert sorted(e.name for e in entries) == [f"job-{job_id}-final", f"job-{job_id}-step-4"]
        with pytest.raises(InvalidInput) as raised:
            service.create(
                session=session,
                settings=settings,
                request=EvaluationCreate(
                    name="x", dataset="tiny-math-eval", checkpoint={"job": job_id, "step": 3}
                ),
                actor="test",
            )
        assert raised.value.loc[-1] == "checkpoint"
        assert "no checkpoint at step 3 (it has: 2, 4)" in raised.value.message


def test_candidates_are_ranked_against_a_baseline_with_adjusted_p_values(
    engine, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # 24 questions: the baseline answers 6; "better" answers all, "same" what the baseline
    # does, "worse" none.
    n = 24
    right = [str(i + 1) for i in range(n)]
    outputs = {
        "base": right[:6] + ["x"] * (n - 6),
        "better": right,
        "same": right[:6] + ["y"] * (n - 6),
        "worse": ["z"] * n,
    }
    ids = {}
    for name, written in outputs.items():
        ids[name] = _submit(engine, settings, name)
        _write_run(tmp_path / name, written)
        _end_job(engine, ids[name], "succeeded", tmp_path / name)
    assert len(_collect(engine)) == 4
    with Session(engine) as session:
        candidates = [ids["worse"], ids["same"], ids["better"]]
        spec, base, ranked = service.rank(
            session=session, baseline_id=ids["base"], candidate_ids=candidates, spec=None
        )
        assert spec == "numeric" and base.id == ids["base"]
        assert [r.evaluation.id for r in ranked] == [ids["better"], ids["same"], ids["worse"]]
        better, same, worse = ranked
        assert (better.paired.improved, better.paired.regressed) == (18, 0)
        assert better.significant and worse.significant and not same.significant
        assert same.paired.p_value == 1.0 and same.p_adjusted == 1.0
        # Adjusted over three tests: never below the raw p-value.
        assert better.p_adjusted is not None and better.paired.p_value is not None
        assert better.p_adjusted >= better.paired.p_value
        # Each candidate's figures are those of a compare of the pair alone.
        _, alone, _, _ = service.compare(
            session=session, a_id=ids["base"], b_id=ids["worse"], spec=None, change=None,
            limit=1, offset=0,
        )  # fmt: skip
        assert worse.paired == alone
        for bad in ([], [ids["better"], ids["better"]], [ids["base"]]):
            with pytest.raises(InvalidInput) as raised:
                service.rank(session=session, baseline_id=ids["base"], candidate_ids=bad, spec=None)
            assert raised.value.loc == ("query", "candidate")
        with pytest.raises(InvalidInput) as raised:
            service.rank(
                session=session, baseline_id=ids["base"], candidate_ids=candidates, spec="bleu"
            )
        assert raised.value.loc == ("query", "scorer")


def test_pass_at_k_scores_the_stored_completions_and_needs_enough(
    engine, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        request = EvaluationCreate.model_validate(
            {
                "name": "sampled", "model": "tiny-qwen2", "dataset": "tiny-math-eval",
                "scorer": "pass@2:numeric", "generation": {"n": 3, "temperature": 0.8},
            }
        )  # fmt: skip
        evaluation, _ = service.create(
            session=session, settings=settings, request=request, actor="test"
        )
        session.commit()
        evaluation_id = evaluation.id
        assert evaluation_id is not None and evaluation.params["n"] == 3
        too_many = EvaluationCreate.model_validate(
            {**request.model_dump(), "name": "x", "scorer": "pass@4:numeric"}
        )
        with pytest.raises(InvalidInput, match="needs at least 4 completions") as raised:
            service.create(session=session, settings=settings, request=too_many, actor="test")
        assert raised.value.loc == ("body", "scorer")
        on_a_worker = EvaluationCreate.model_validate(
            {**request.model_dump(), "name": "x", "scorer": "file:mine"}
        )
        with pytest.raises(InvalidInput, match="runs on a worker once the generations"):
            service.create(session=session, settings=settings, request=on_a_worker, actor="t")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    draws = [["1", "x", "y"], ["2", "2", "y"], ["x", "y", "z"]]  # answers 1, 2, 3
    with (run_dir / "predictions.jsonl").open("w") as handle:
        for index, completions in enumerate(draws):
            record = {"index": index, "prompt": "p", "answer": str(index + 1)}
            record.update(completion=completions[0], completions=completions)
            handle.write(json.dumps(record) + "\n")
    _end_job(engine, evaluation_id, "succeeded", run_dir)
    assert _collect(engine) == [evaluation_id]
    with Session(engine) as session:
        stored = session.get(Evaluation, evaluation_id)
        assert stored is not None and stored.status == "succeeded", stored
        # pass@2 of 3 with 1, 2 and 0 passing: 2/3, 1, 0.
        assert stored.summary["pass@2:numeric"]["mean"] == pytest.approx((2 / 3 + 1 + 0) / 3)
        rows = service.samples(session=session, evaluation_id=evaluation_id, q=None, limit=9,
                               offset=0)[0]  # fmt: skip
        assert [s.outputs for s, _, _ in rows] == draws
        # Rescored from the stored completions: pass@1 is the mean pass rate; plain scorers
        # judge the first completion.
        service.rescore(session=session, evaluation_id=evaluation_id, spec="pass@1:numeric")
        service.rescore(session=session, evaluation_id=evaluation_id, spec="numeric")
        assert stored.summary["pass@1:numeric"]["mean"] == pytest.approx((1 / 3 + 2 / 3) / 3)
        assert stored.summary["numeric"]["mean"] == pytest.approx(2 / 3)
        with pytest.raises(InvalidInput, match="needs at least 5"):
            service.rescore(session=session, evaluation_id=evaluation_id, spec="pass@5:numeric")


REWARD_FILE = b"""
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    # Partial credit: 1 for the answer, 0.25 for any digit, else 0.
    if solution_str.strip() == ground_truth:
        return 1.0
    return 0.25 if any(c.isdigit() for c in solution_str) else 0.0
"""


def _failed_scoring(
    session: Session, settings: Any, evaluation_id: int, name: str, source: bytes
) -> Any:
    """Upload a reward file, rescore with it and run the scoring, which must fail; its row."""
    from training_platform.catalog import rewards
    from training_platform.evaluation.models import EvaluationScoring

    rewards.register(session=session, home=settings.home, name=name, source=source)
    service.rescore(session=session, evaluation_id=evaluation_id, spec=f"file:{name}")
    session.commit()
    assert service.run_scoring(session, settings, evaluation_id, f"file:{name}") == "failed"
    row = session.get(EvaluationScoring, (evaluation_id, f"file:{name}"))
    assert row is not None
    return row


def test_an_uploaded_reward_file_scores_on_a_worker_once(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from training_platform.catalog import rewards
    from training_platform.evaluation.models import EvaluationScoring

    evaluation_id = _submit(engine, settings)
    _write_run(tmp_path / "run", ["1", "so 2", "no", "4"])
    _end_job(engine, evaluation_id, "succeeded", tmp_path / "run")
    assert _collect(engine) == [evaluation_id]
    with Session(engine) as session:
        with pytest.raises(InvalidInput, match="upload it first") as raised:
            service.rescore(session=session, evaluation_id=evaluation_id, spec="file:partial")
        assert raised.value.loc == ("body", "scorer")
        rewards.register(session=session, home=settings.home, name="partial", source=REWARD_FILE)
        service.rescore(
            session=session, evaluation_id=evaluation_id, spec="file:partial", actor="t"
        )
        session.commit()
        queued = session.get(EvaluationScoring, (evaluation_id, "file:partial"))
        assert queued is not None and (queued.status, queued.attempt) == ("queued", 1)
        assert "file:partial" not in session.get(Evaluation, evaluation_id).summary  # type: ignore[union-attr]
    with Session(engine) as session:
        assert service.run_scoring(session, settings, evaluation_id, "file:partial") == "succeeded"
    with Session(engine) as session:  # delivered twice: scored once
        assert service.run_scoring(session, settings, evaluation_id, "file:partial") == "skipped"
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None
        # outputs "1", "so 2", "no", "4" against 1..4: 1, 0.25, 0, 1
        assert evaluation.summary["file:partial"]["mean"] == pytest.approx(2.25 / 4)
        assert evaluation.summary["numeric"]["mean"] == pytest.approx(0.75)  # kept
        rows, _ = service.samples(
            session=session, evaluation_id=evaluation_id, q=None, limit=9, offset=0
        )
        assert [scores["file:partial"] for _, scores, _ in rows] == [1.0, 0.25, 0.0, 1.0]

    # A file that fails on a sample fails the scoring with the sample and the reason; asked
    # again, it is a new attempt.
    broken = b"def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
    broken += b"    return 1 / len(solution_str.replace('no', ''))\n"
    with Session(engine) as session:
        failed = _failed_scoring(session, settings, evaluation_id, "broken", broken)
        assert failed.error is not None
        assert "sample 2: ZeroDivisionError" in failed.error, failed.error
        service.rescore(session=session, evaluation_id=evaluation_id, spec="file:broken")
        session.commit()
        session.refresh(failed)
        assert (failed.status, failed.attempt, failed.error) == ("queued", 2, None)


def test_a_lost_scoring_is_sent_again_as_a_new_attempt(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from training_platform.catalog import rewards
    from training_platform.core.types import utcnow
    from training_platform.evaluation.models import EvaluationScoring

    evaluation_id = _submit(engine, settings)
    _write_run(tmp_path / "run", ["1", "2"])
    _end_job(engine, evaluation_id, "succeeded", tmp_path / "run")
    _collect(engine)
    with Session(engine) as session:
        rewards.register(session=session, home=settings.home, name="partial", source=REWARD_FILE)
        service.rescore(session=session, evaluation_id=evaluation_id, spec="file:partial")
        session.commit()
        assert service.stale_scorings(session) == []  # just queued
        row = session.get(EvaluationScoring, (evaluation_id, "file:partial"))
        assert row is not None
        # Its worker took it and went silent for longer than LOST_AFTER_S.
        long_ago = utcnow() - timedelta(seconds=service.LOST_AFTER_S + 1)
        session.execute(
            update(EvaluationScoring)
            .where(col(EvaluationScoring.evaluation_id) == evaluation_id)
            .values(status="running", updated_at=long_ago)
        )
        session.commit()
        assert service.stale_scorings(session) == [(evaluation_id, "file:partial")]
        session.refresh(row)
        assert (row.status, row.attempt) == ("queued", 2)
        assert service.run_scoring(session, settings, evaluation_id, "file:partial") == "succeeded"


def test_a_suite_runs_one_evaluation_per_dataset_and_averages_them(
    engine, settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from training_platform.evaluation.schemas import SuiteCreate, SuiteRunCreate

    with Session(engine) as session:
        for bad, where, reason in (
            ({"dataset": "tiny-prefs"}, "dataset", "a suite needs prompts with references"),
            ({"dataset": "nope"}, "dataset", "nope"),
            ({"scorer": "judge:e:r"}, "scorer", "runs on a worker"),
            ({"scorer": "regex:("}, "scorer", "does not compile"),
        ):
            item = {"dataset": "tiny-math-eval", "scorer": "numeric", **bad}
            request = SuiteCreate.model_validate({"name": "bad", "items": [item]})
            with pytest.raises(InvalidInput, match=reason) as raised:
                service.create_suite(session=session, request=request, actor="t")
            assert raised.value.loc == ("body", "items", 0, where)
        request = SuiteCreate.model_validate(
            {
                "name": "math",
                "items": [
                    {"dataset": "tiny-math-eval", "scorer": "numeric", "max_samples": 4},
                    {"dataset": "tiny-math-eval", "scorer": "exact"},
                ],
            }
        )
        service.create_suite(session=session, request=request, actor="t")
        session.commit()
        with pytest.raises(Conflict):
            service.create_suite(session=session, request=request, actor="t")
        run, jobs = service.run_suite(
            session=session,
            settings=settings,
            suite_name="math",
            request=SuiteRunCreate(name="base", model="tiny-qwen2"),
            actor="t",
        )
        session.commit()
        assert len(jobs) == 2 and len(run.evaluation_ids) == 2
        first, second = (session.get(Evaluation, i) for i in run.evaluation_ids)
        assert first is not None and second is not None
        assert (first.scorer, first.params["max_samples"]) == ("numeric", 4)
        assert (second.scorer, second.params["max_samples"]) == ("exact", None)
        assert service.suite_run_result(session, run)[:2] == ("pending", None)
    for number, evaluation_id in enumerate(run.evaluation_ids):
        _write_run(tmp_path / str(number), ["1", "so 2", "no", "4"])
        _end_job(engine, evaluation_id, "succeeded", tmp_path / str(number))
    _collect(engine)
    with Session(engine) as session:
        state, mean, items = service.suite_run_result(session, run)
        # numeric 3/4 and exact 2/4 ("1" and "4"): each dataset counts once.
        assert state == "succeeded" and mean == pytest.approx((0.75 + 0.5) / 2)
        assert [scorer for _, scorer in items] == ["numeric", "exact"]


def test_a_scorer_that_raises_anything_ends_its_scoring_failed(
    engine, settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from training_platform.evaluation import deferred

    evaluation_id = _submit(engine, settings)
    _write_run(tmp_path / "run", ["1"])
    _end_job(engine, evaluation_id, "succeeded", tmp_path / "run")
    _collect(engine)

    def broken(*_: Any, **__: Any) -> list[float]:
        raise RuntimeError("the worker ran out of something")

    monkeypatch.setattr(deferred, "run_file", broken)
    with Session(engine) as session:
        row = _failed_scoring(session, settings, evaluation_id, "partial", REWARD_FILE)
        assert row.status == "failed"
        assert row.error == "RuntimeError: the worker ran out of something"
