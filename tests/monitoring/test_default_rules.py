"""The platform's default alert rules: stored whole, checked, and copied into jobs that set none."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session

from training_platform.jobs.supervisor import reconcile_job
from training_platform.monitoring import alerts

JOB: dict[str, Any] = {
    "name": "defaults",
    "algorithm": "sft",
    "model": "tiny-qwen2",
    "dataset": "tiny-sft",
    "hyperparameters": {"max_steps": 5},
}
RULES = [
    {"rule": "above", "key": "grad_norm", "threshold": 100.0, "action": "pause"},
    {"rule": "nan"},
]
STORED = [
    {"rule": "above", "key": "grad_norm", "threshold": 100.0, "action": "pause"},
    {"rule": "nan", "key": "*loss*", "threshold": None, "action": "notify"},
]


def test_none_are_set_at_first_then_they_round_trip_and_can_be_emptied(api) -> None:  # type: ignore[no-untyped-def]
    assert api.get("/api/v1/alert-rules").json() == {"items": [], "updated_at": None}
    stored = api.put("/api/v1/alert-rules", json={"items": RULES})
    assert stored.status_code == 200, stored.text
    assert stored.json()["items"] == STORED and stored.json()["updated_at"] is not None
    assert api.get("/api/v1/alert-rules").json() == stored.json()
    emptied = api.put("/api/v1/alert-rules", json={"items": []}).json()
    assert emptied["items"] == [] and emptied["updated_at"] >= stored.json()["updated_at"]
    assert api.get("/api/v1/alert-rules").json() == emptied


@pytest.mark.parametrize(
    ("items", "loc", "message"),
    [
        (
            [{"rule": "nan"}, {"rule": "above", "key": "kl"}],
            ["body", "items", 1],
            "rule 'above' needs a threshold",
        ),
        ([{"rule": "nan"}, {"rule": "sometimes"}], ["body", "items", 1, "rule"], "'nan'"),
        ([{"rule": "nan", "action": "explode"}], ["body", "items", 0, "action"], "'notify'"),
        ([{"rule": "nan", "colour": "red"}], ["body", "items", 0, "colour"], "Extra inputs"),
        ([{"rule": "nan"}] * 33, ["body", "items"], "at most 32 items"),
    ],
)
def test_a_bad_rule_is_422_naming_index_and_field_and_nothing_is_stored(
    api, items: list[dict[str, Any]], loc: list[Any], message: str
) -> None:  # type: ignore[no-untyped-def]
    api.put("/api/v1/alert-rules", json={"items": [{"rule": "nan", "key": "kept"}]})
    before = api.get("/api/v1/alert-rules").json()
    refused = api.put("/api/v1/alert-rules", json={"items": items})
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == loc and message in error["msg"], error
    assert api.get("/api/v1/alert-rules").json() == before


def test_a_job_without_alerts_gets_a_copy_of_the_defaults_and_keeps_it(api) -> None:  # type: ignore[no-untyped-def]
    api.put("/api/v1/alert-rules", json={"items": RULES})
    made = api.post("/api/v1/jobs", json=JOB)
    assert made.status_code == 201, made.text
    assert made.json()["spec"]["alerts"] == STORED
    api.put("/api/v1/alert-rules", json={"items": []})
    shown = api.get(f"/api/v1/jobs/{made.json()['id']}").json()
    assert shown["spec"]["alerts"] == STORED  # fixed at submission


def test_a_job_with_its_own_alerts_or_an_empty_list_keeps_them(api) -> None:  # type: ignore[no-untyped-def]
    api.put("/api/v1/alert-rules", json={"items": RULES})
    own = [{"rule": "below", "key": "reward", "threshold": 0.1, "action": "stop"}]
    mine = api.post("/api/v1/jobs", json={**JOB, "name": "own", "alerts": own}).json()
    shown = api.get(f"/api/v1/jobs/{mine['id']}").json()
    assert shown["spec"]["alerts"] == [{**own[0], "threshold": 0.1}]
    none = api.post("/api/v1/jobs", json={**JOB, "name": "none", "alerts": []}).json()
    assert "alerts" not in api.get(f"/api/v1/jobs/{none['id']}").json()["spec"]


def test_pipeline_stage_jobs_get_the_defaults_unless_they_set_alerts(api) -> None:  # type: ignore[no-untyped-def]
    api.put("/api/v1/alert-rules", json={"items": RULES})
    stage = {key: value for key, value in JOB.items() if key != "name"}
    definition = {
        "name": "two at once",
        "stages": {"a": {"job": stage}, "b": {"job": {**stage, "alerts": []}}},
    }
    pipeline = api.post("/api/v1/pipelines", json={"definition": definition})
    assert pipeline.status_code == 201, pipeline.text
    jobs = {s["name"]: s["job_id"] for s in pipeline.json()["stages"]}
    assert api.get(f"/api/v1/jobs/{jobs['a']}").json()["spec"]["alerts"] == STORED
    assert "alerts" not in api.get(f"/api/v1/jobs/{jobs['b']}").json()["spec"]


def test_a_default_rule_acts_on_the_job_like_its_own(
    api, engine, settings, runner, running_job, metrics_line
) -> None:  # type: ignore[no-untyped-def]
    api.put(
        "/api/v1/alert-rules",
        json={"items": [{"rule": "above", "key": "kl", "threshold": 0.5, "action": "notify"}]},
    )
    job, run_dir = running_job()
    runner.write(run_dir, "metrics", metrics_line(1, loss=1.0, kl=0.9))
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    with Session(engine) as session:
        [raised] = alerts.list_alerts(session=session, job_id=job.id)
    assert (raised.rule, raised.key, raised.rule_index) == ("above", "kl", 0)
