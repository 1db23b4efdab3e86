"""Work belongs to a project and only its members (and admins) see it.

A member of project `pa` submits a job, a pipeline and an evaluation there; a member of only
the default project finds none of them: not in the lists, 404 by id (REST and the job's
WebSocket), and may not submit to `pa` (403). An admin sees everything. The jobs a pipeline and
an evaluation start are charged to their project and user.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from starlette.websockets import WebSocketDisconnect

from training_platform.auth.models import User
from training_platform.jobs.models import Job

JOB: dict[str, Any] = {
    "name": "pa sft",
    "algorithm": "sft",
    "model": "tiny-qwen2",
    "dataset": "tiny-sft",
    "hyperparameters": {"max_steps": 2},
}


def _member(api: TestClient, name: str) -> TestClient:
    made = api.post("/api/v1/users", json={"name": name, "role": "member"})
    assert made.status_code == 201, made.text
    token = api.post("/api/v1/tokens", json={"name": f"{name}-t", "user": name})
    assert token.status_code == 201, token.text
    client = TestClient(api.app)
    client.headers["Authorization"] = f"Bearer {token.json()['token']}"
    return client


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_projects_work_is_hidden_from_non_members(api, engine) -> None:  # type: ignore[no-untyped-def]
    alice, bob = _member(api, "alice"), _member(api, "bob")
    assert api.post("/api/v1/projects", json={"name": "pa"}).status_code == 201
    assert api.post("/api/v1/projects/pa/members", json={"user": "alice"}).status_code == 200

    job = alice.post("/api/v1/jobs", json={**JOB, "project": "pa"})
    assert job.status_code == 201, job.text
    assert job.json()["project"] == "pa"
    pipeline = alice.post(
        "/api/v1/pipelines",
        json={"template": "sft-dpo", "parameters": {"sft_steps": 2}, "project": "pa"},
    )
    assert pipeline.status_code == 201, pipeline.text
    assert pipeline.json()["project"] == "pa"
    evaluation = alice.post(
        "/api/v1/evaluations",
        json={"name": "pa eval", "model": "tiny-qwen2", "dataset": "tiny-math", "project": "pa"},
    )
    assert evaluation.status_code == 201, evaluation.text
    served = alice.post(
        "/api/v1/serving", json={"model": "tiny-qwen2", "engine": "transformers", "project": "pa"}
    )
    assert served.status_code == 201, served.text
    job_id, pipeline_id, serve_id = job.json()["id"], pipeline.json()["id"], served.json()["id"]
    evaluation_id, evaluation_job = evaluation.json()["id"], evaluation.json()["job_id"]

    # The jobs the pipeline and the evaluation started are pa's and alice's.
    with Session(engine) as session:
        alice_id = session.exec(select(User.id).where(User.name == "alice")).one()
        jobs = session.exec(select(Job)).all()
    assert {(j.spec.get("project"), j.user_id) for j in jobs} == {("pa", alice_id)}
    assert len(jobs) == 4  # the job, the pipeline's first stage, the evaluation's, serving
    stage_job = next(j.id for j in jobs if j.id not in (job_id, evaluation_job, serve_id))

    for client, sees in ((alice, True), (api, True), (bob, False)):
        listed = client.get("/api/v1/jobs").json()["items"]
        assert ({j["id"] for j in listed} == {job_id, stage_job, evaluation_job, serve_id}) is sees
        serving = client.get("/api/v1/serving").json()
        assert ([s["job_id"] for s in serving] == [serve_id]) is sees
        pipelines = client.get("/api/v1/pipelines").json()["items"]
        assert ([p["id"] for p in pipelines] == [pipeline_id]) is sees
        evaluations = client.get("/api/v1/evaluations").json()["items"]
        assert ([e["id"] for e in evaluations] == [evaluation_id]) is sees
        for path in (
            f"/api/v1/jobs/{job_id}",
            f"/api/v1/jobs/{job_id}/events",
            f"/api/v1/jobs/{stage_job}/lineage",
            f"/api/v1/pipelines/{pipeline_id}",
            f"/api/v1/evaluations/{evaluation_id}",
            f"/api/v1/serving/{serve_id}/v1/models",
        ):
            answer = client.get(path)
            # a member: the answer the route gives (409 while the serve job is pending)
            assert (answer.status_code == 404) is not sees, (path, answer.text)
    for path in (f"/api/v1/jobs/{job_id}/cancel", f"/api/v1/pipelines/{pipeline_id}/cancel"):
        refused = bob.post(path)
        assert refused.status_code == 404 and "not found" in refused.json()["detail"], path
    with Session(engine) as session:
        assert session.get(Job, job_id).status == "pending"  # type: ignore[union-attr]

    # bob may not submit to pa; his own work goes to default, which alice sees too.
    refused = bob.post("/api/v1/jobs", json={**JOB, "project": "pa"})
    assert refused.status_code == 403 and "not a member" in refused.json()["detail"]
    own = bob.post(
        "/api/v1/evaluations", json={"name": "b", "model": "tiny-qwen2", "dataset": "tiny-math"}
    )
    assert own.status_code == 201, own.text
    assert alice.get(f"/api/v1/evaluations/{own.json()['id']}").status_code == 200
    pair = {"a": own.json()["id"], "b": evaluation_id}
    assert bob.get("/api/v1/evaluations/compare", params=pair).status_code == 404
    assert alice.get("/api/v1/evaluations/compare", params=pair).status_code == 409  # pending

    # Datasets and models: pa's are seen by pa's members, used by pa's work only.
    rows = "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"a{i}"},
                ]
            }
        )
        + "\n"
        for i in range(4)
    )
    uploaded = alice.post(
        "/api/v1/datasets",
        params={"name": "pa-data", "filename": "d.jsonl", "project": "pa"},
        content=rows,
    )
    assert uploaded.status_code == 201, uploaded.text
    model_dir = api.app.state.settings.home / "models" / "builtin" / "tiny-qwen2"
    registered = alice.post(
        "/api/v1/models", json={"name": "pa-model", "path": str(model_dir), "project": "pa"}
    )
    assert registered.status_code == 201, registered.text
    for client, sees in ((alice, True), (api, True), (bob, False)):
        names = {d["name"] for d in client.get("/api/v1/datasets").json()}
        assert ("pa-data" in names) is sees and "tiny-sft" in names
        models = {m["name"] for m in client.get("/api/v1/models").json()}
        assert ("pa-model" in models) is sees and "tiny-qwen2" in models
        for path in ("/api/v1/datasets/pa-data", "/api/v1/models/pa-model/lineage"):
            assert (client.get(path).status_code == 404) is not sees, path
    for client, body in (
        (bob, {**JOB, "dataset": "pa-data"}),
        (alice, {**JOB, "model": "pa-model"}),  # to default, with pa's model
    ):
        refused = client.post("/api/v1/jobs", json=body)
        assert refused.status_code == 422, refused.text
        assert "belongs to project 'pa'" in refused.json()["detail"][0]["msg"]
    used = alice.post("/api/v1/jobs", json={**JOB, "model": "pa-model", "project": "pa"})
    assert used.status_code == 201, used.text

    # The overview's jobs are the caller's projects' (the counts everyone's).
    bob_token = bob.headers["Authorization"].split()[1]
    alice_token = alice.headers["Authorization"].split()[1]
    for token, sees in ((alice_token, True), (bob_token, False)):
        with bob.websocket_connect("/api/v1/ws/overview") as ws:
            ws.send_json({"type": "hello", "token": token})
            overview = ws.receive_json()
        assert overview["type"] == "overview"
        assert (job_id in {j["id"] for j in overview["jobs"]}) is sees
        assert sum(overview["counts"].values()) >= 4

    # The job's live view refuses bob as if the job did not exist.
    with bob.websocket_connect(f"/api/v1/ws/jobs/{job_id}") as ws:
        ws.send_json({"type": "hello", "token": bob_token})
        message = ws.receive_json()
        assert message["type"] == "error" and "not found" in message["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4404
