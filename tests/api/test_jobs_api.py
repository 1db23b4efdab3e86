"""The jobs REST API: status codes, error shapes, idempotency, and messages really enqueued."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from training_platform.jobs.models import Job
from training_platform.jobs.supervisor import message_id
from training_platform.worker.broker import RedisBrokerView
from training_platform.worker.queues import queue_keys

BODY: dict[str, Any] = {
    "name": "tiny sft",
    "algorithm": "sft",
    "model": "tiny-qwen2",
    "dataset": "tiny-sft",
    "hyperparameters": {"max_steps": 5},
}


def _count(engine: Any) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Job)).one())


def test_submit_stores_the_job_then_enqueues_its_preparation_at_its_priority(  # type: ignore[no-untyped-def]
    api, engine, redis_url
) -> None:
    response = api.post("/api/v1/jobs", json={**BODY, "priority": 8})
    assert response.status_code == 201
    job = response.json()
    assert job["status"] == "pending" and job["priority"] == 8
    with Session(engine) as session:
        stored = session.get(Job, job["id"])
    broker = RedisBrokerView(redis_url)
    assert message_id(stored) == f"job-{job['id']}-attempt-1-prepare-1"
    assert message_id(stored) in broker.pending_task_ids()
    # User priority 8 lands in the Redis priority bucket 1 (0 is served first).
    depths = broker.depths(("preprocessing",))["preprocessing"]
    assert depths[1] == 1 and sum(depths) == 1
    assert queue_keys("preprocessing")[1] == "tp:preprocessing:1"


def test_same_idempotency_key_twice_gives_one_job(api, engine) -> None:  # type: ignore[no-untyped-def]
    first = api.post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": "abc-1"})
    second = api.post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": "abc-1"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    other = api.post(
        "/api/v1/jobs", json={**BODY, "name": "x"}, headers={"Idempotency-Key": "abc-1"}
    )
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert _count(engine) == 1


@pytest.mark.parametrize(
    ("change", "loc", "text"),
    [
        ({"backend": "nope"}, ["body", "backend"], "unknown backend"),
        ({"backend": "verl", "algorithm": "dpo"}, ["body", "algorithm"], "use backend 'trl'"),
        ({"algorithm": "grpo", "dataset": "tiny-prefs"}, ["body", "dataset"], "needs rl data"),
        ({"model": "missing"}, ["body", "model"], "unknown model 'missing'"),
        ({"dataset": "missing"}, ["body", "dataset"], "unknown dataset 'missing'"),
        ({"name": ""}, ["body", "name"], "at least 1 character"),
        ({"name": "a" * 500}, ["body", "name"], "at most 200"),
        ({"name": "tab\tname"}, ["body", "name"], "control characters"),
        ({"priority": 99}, ["body", "priority"], "less than or equal to 9"),
        (
            {"hyperparameters": {"learning_rate": -0.1}},
            ["body", "hyperparameters", "learning_rate"],
            "greater than 0",
        ),
        (
            {"hyperparameters": {"max_steps": 10**9}},
            ["body", "hyperparameters", "max_steps"],
            "less than or equal",
        ),
        (
            {"hyperparameters": {"max_steps": "many"}},
            ["body", "hyperparameters", "max_steps"],
            "valid integer",
        ),
        ({"hyperparameters": {"rm": "-rf"}}, ["body", "hyperparameters", "rm"], "Extra inputs"),
        ({"extra": 1}, ["body", "extra"], "Extra inputs"),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(  # type: ignore[no-untyped-def]
    api, engine, redis_url, change, loc, text
) -> None:
    response = api.post("/api/v1/jobs", json={**BODY, **change})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc and text in detail["msg"]
    assert _count(engine) == 0
    assert RedisBrokerView(redis_url).pending_task_ids() == set()


def test_missing_fields_and_bad_json_are_422(api) -> None:  # type: ignore[no-untyped-def]
    response = api.post("/api/v1/jobs", json={"name": "x"})
    assert response.status_code == 422
    assert {tuple(d["loc"]) for d in response.json()["detail"]} == {("body", "algorithm")}
    # What the pair needs: a model, and a dataset of its data task (serve takes none).
    for body, loc, message in (
        ({"dataset": "tiny-sft"}, ("body", "model"), "trl/sft needs a model"),
        ({"model": "tiny-qwen2"}, ("body", "dataset"), "trl/sft needs a dataset of sft data"),
    ):
        refused = api.post("/api/v1/jobs", json={"name": "x", "algorithm": "sft", **body})
        assert refused.status_code == 422, refused.text
        assert tuple(refused.json()["detail"][0]["loc"]) == loc
        assert message in refused.json()["detail"][0]["msg"]
    serve = {"name": "x", "backend": "builtin", "algorithm": "serve", "model": "tiny-qwen2"}
    refused = api.post("/api/v1/jobs", json={**serve, "dataset": "tiny-sft"})
    assert refused.status_code == 422 and "takes no dataset" in refused.text
    assert (
        api.post(
            "/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )


def test_shell_metacharacters_in_names_are_stored_and_shown_as_given(api) -> None:  # type: ignore[no-untyped-def]
    name = "a; rm -rf ~ $(id) `whoami`"
    job = api.post("/api/v1/jobs", json={**BODY, "name": name}).json()
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["name"] == name
    plan = api.get(f"/api/v1/jobs/{job['id']}/plan").json()
    assert name not in " ".join(plan["argv"])  # names never reach a command line


def test_list_get_and_paging(api) -> None:  # type: ignore[no-untyped-def]
    ids = [api.post("/api/v1/jobs", json={**BODY, "name": f"j{i}"}).json()["id"] for i in range(3)]
    page = api.get("/api/v1/jobs", params={"limit": 2}).json()
    assert page["total"] == 3 and [j["id"] for j in page["items"]] == ids[::-1][:2]
    assert api.get("/api/v1/jobs", params={"status": "running"}).json()["total"] == 0
    assert api.get("/api/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert api.get("/api/v1/jobs", params={"limit": 0}).status_code == 422
    assert api.get("/api/v1/jobs/999999").status_code == 404


def test_list_filters_search_and_sorts(api) -> None:  # type: ignore[no-untyped-def]
    names = ["alpha-sft", "beta_sft", "Alpha-two", "gamma 100%"]
    ids = {
        n: api.post("/api/v1/jobs", json={**BODY, "name": n, "priority": p}).json()["id"]
        for n, p in zip(names, (3, 9, 5, 1), strict=True)
    }

    def listed(**params: Any) -> list[str]:
        response = api.get("/api/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return [j["name"] for j in response.json()["items"]]

    assert listed(q="ALPHA") == ["Alpha-two", "alpha-sft"]
    assert listed(q="_") == ["beta_sft"]  # LIKE wildcards match only themselves
    assert listed(q="100%") == ["gamma 100%"]
    assert listed(sort="priority") == ["gamma 100%", "alpha-sft", "Alpha-two", "beta_sft"]
    assert listed(sort="-priority", limit=2) == ["beta_sft", "Alpha-two"]
    assert listed(sort="id") == names
    assert listed(algorithm="sft", q="beta") == ["beta_sft"]
    assert listed(algorithm="dpo") == [] and listed(backend="verl") == []
    page = api.get("/api/v1/jobs", params={"q": "sft", "limit": 1}).json()
    assert page["total"] == 2 and page["items"][0]["id"] == ids["beta_sft"]
    bad = api.get("/api/v1/jobs", params={"sort": "secret_column"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "sort"]


def test_cancel_retry_delete_over_http(api, redis_url) -> None:  # type: ignore[no-untyped-def]
    job = api.post("/api/v1/jobs", json=BODY).json()
    cancelled = api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    retried = api.post(f"/api/v1/jobs/{job['id']}/retry").json()
    assert (retried["status"], retried["attempt"]) == ("pending", 2)
    assert f"job-{job['id']}-attempt-2-prepare-2" in RedisBrokerView(redis_url).pending_task_ids()
    assert api.post(f"/api/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    no_checkpoint = api.post(f"/api/v1/jobs/{job['id']}/retry", params={"from_checkpoint": True})
    assert no_checkpoint.status_code == 409 and "no checkpoint" in no_checkpoint.json()["detail"]
    assert api.post(f"/api/v1/jobs/{job['id']}/retry").json()["attempt"] == 3
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 409
    api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/api/v1/jobs/{job['id']}").status_code == 404


def test_events_logs_metrics_checkpoints_of_a_new_job(api) -> None:  # type: ignore[no-untyped-def]
    job_id = api.post("/api/v1/jobs", json=BODY).json()["id"]
    events = api.get(f"/api/v1/jobs/{job_id}/events").json()
    assert [(e["from_status"], e["to_status"], e["actor"]) for e in events] == [
        (None, "pending", "admin (token admin)")
    ]
    log = api.get(f"/api/v1/jobs/{job_id}/logs").json()
    assert log == {"attempt": 1, "offset": 0, "next_offset": 0, "text": "", "complete": False}
    assert api.get(f"/api/v1/jobs/{job_id}/logs", params={"attempt": 5}).status_code == 404
    assert api.get(f"/api/v1/jobs/{job_id}/metrics").json() == {
        "points": [],
        "keys": [],
        "last_step": None,
    }
    assert api.get(f"/api/v1/jobs/{job_id}/checkpoints").json() == []


def test_plan_endpoints_return_argv_lists(api, settings) -> None:  # type: ignore[no-untyped-def]
    dry = api.post("/api/v1/jobs/plan", json=BODY)
    assert dry.status_code == 200
    plan = dry.json()
    assert isinstance(plan["argv"], list) and plan["argv"][1:3] == [
        "-m",
        "training_platform.trainers.trl_train",
    ]
    assert "train_config.json" in plan["files"]
    bad = api.post("/api/v1/jobs/plan", json={**BODY, "model": "nope"})
    assert bad.status_code == 422
    # A validation split: the trainer gets the held-out rows as their own file.
    split = {**BODY, "validation": {"fraction": 0.1, "seed": 7}}
    config = json.loads(
        api.post("/api/v1/jobs/plan", json=split).json()["files"]["train_config.json"]
    )
    assert config["validation_path"].endswith("-validation.parquet")
    assert config["dataset_path"].endswith("-train.parquet")
    for body, message in (
        (
            {**BODY, "algorithm": "grpo", "dataset": "tiny-math", "validation": {"fraction": 0.1}},
            "trl/grpo does not use a validation split",
        ),
        ({**BODY, "validation": {"fraction": 0.1, "field": "x", "value": 1}}, "either fraction"),
        ({**BODY, "validation": {"field": "x"}}, "value"),
    ):
        refused = api.post("/api/v1/jobs/plan", json=body)
        assert refused.status_code == 422 and message in refused.text, refused.text
        assert "validation" in refused.json()["detail"][0]["loc"]
    job_id = api.post("/api/v1/jobs", json=BODY).json()["id"]
    stored = api.get(f"/api/v1/jobs/{job_id}/plan").json()
    assert stored["run_dir"] == str(settings.runs_dir / str(job_id) / "attempt-1")


def test_catalog_and_backends_are_listed(api) -> None:  # type: ignore[no-untyped-def]
    models = api.get("/api/v1/models").json()
    assert [m["name"] for m in models] == ["tiny-qwen2"]
    datasets = {d["name"]: d for d in api.get("/api/v1/datasets").json()}
    assert datasets["tiny-sft"]["format"] == "messages" and datasets["tiny-sft"]["rows"] == 400
    assert "path" not in datasets["tiny-sft"]  # no server paths in responses
    backends = api.get("/api/v1/backends").json()
    pairs = {(b["backend"], b["algorithm"]): b for b in backends}
    assert set(pairs) == {("trl", a) for a in ("sft", "dpo", "grpo", "gspo", "ppo")} | {
        ("verl", a) for a in ("sft", "ppo", "grpo", "gspo")
    } | {("builtin", "evaluate"), ("builtin", "merge"), ("builtin", "serve")}
    assert pairs[("builtin", "serve")]["data_task"] is None
    assert pairs[("builtin", "serve")]["dataset_formats"] == []
    assert {pairs[p]["hosts"] for p in pairs if p[0] == "verl"} == {"gpu"}
    assert {pairs[p]["hosts"] for p in pairs if p[0] == "trl"} == {"any"}
    assert pairs[("trl", "dpo")]["data_task"] == "preference"
    assert pairs[("verl", "grpo")]["dataset_formats"] == [
        "messages",
        "alpaca",
        "sharegpt",
        "prompt_answer",
        "rl",
    ]
    assert "rollout" in pairs[("verl", "gspo")]["parameters"]["properties"]
    sft = next(b for b in backends if (b["backend"], b["algorithm"]) == ("trl", "sft"))
    lr = sft["parameters"]["properties"]["learning_rate"]
    assert lr["exclusiveMinimum"] == 0 and lr["default"] == 2e-5


def test_the_job_is_stored_even_when_the_broker_is_down(settings, engine) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from training_platform.api.app import create_app

    class DownBroker:
        def dispatch(self, job: Job) -> None:
            raise ConnectionError("redis is down")

        def request_cancel(self, job: Job) -> None:
            raise ConnectionError("redis is down")

        def request_schedule(self) -> None:
            raise ConnectionError("redis is down")

    token = settings.admin_token_file.read_text().strip()
    with TestClient(create_app(settings, dispatcher=DownBroker())) as client:
        response = client.post(
            "/api/v1/jobs", json=BODY, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 201 and response.json()["status"] == "pending"
    assert _count(engine) == 1  # the supervisor sends the message once Redis is back


def test_a_job_cancelled_while_its_dataset_is_prepared_ends_cancelled(  # type: ignore[no-untyped-def]
    api, engine, settings, monkeypatch
) -> None:
    # Defect: a cancel right after submission raced the preparation (pending -> queued) and
    # answered 409; the job went on and ran. Here the preparation lands between the cancel's
    # read and its write.
    from training_platform.jobs import preparation, service

    job_id = api.post("/api/v1/jobs", json=BODY).json()["id"]
    read = service.get_job
    raced: list[Any] = []

    def read_then_prepare(*, session, job_id):  # type: ignore[no-untyped-def]
        job = read(session=session, job_id=job_id)
        if not raced:
            raced.append(
                preparation.prepare_job(engine, settings, job_id=job_id, attempt=1, actor="w")
            )
        return job

    monkeypatch.setattr(service, "get_job", read_then_prepare)
    response = api.post(f"/api/v1/jobs/{job_id}/cancel")
    assert raced and raced[0] is not None  # the preparation won the first write
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    monkeypatch.undo()
    # A preparation that finishes after the cancel does not bring the job back.
    again = api.post("/api/v1/jobs", json={**BODY, "name": "second"}).json()["id"]
    assert api.post(f"/api/v1/jobs/{again}/cancel").json()["status"] == "cancelled"
    assert preparation.prepare_job(engine, settings, job_id=again, attempt=1, actor="w") is None
    assert api.get(f"/api/v1/jobs/{again}").json()["status"] == "cancelled"
    events = api.get(f"/api/v1/jobs/{job_id}/events").json()
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "pending"),
        ("pending", "queued"),
        ("queued", "cancelled"),
    ]
