"""The pipelines REST API: submit (template, JSON, YAML), validate, read, control, templates."""

from __future__ import annotations

import yaml

SFT = {
    "algorithm": "sft",
    "model": "tiny-qwen2",
    "dataset": "tiny-sft",
    "hyperparameters": {"max_steps": 2},
}


def test_templates_are_listed_with_their_stages_and_yaml(api) -> None:  # type: ignore[no-untyped-def]
    found = {t["name"]: t for t in api.get("/api/v1/pipelines/templates").json()}
    assert found["sft-grpo-evaluate"]["stages"] == {
        "sft": [],
        "grpo": ["sft"],
        "evaluate": ["grpo"],
    }
    assert found["sft-dpo"]["stages"] == {"sft": [], "dpo": ["sft"]}
    assert found["sft-gspo"]["parameters"]["model"] == "tiny-qwen2"
    one = api.get("/api/v1/pipelines/templates/sft-dpo").json()
    assert yaml.safe_load(one["yaml"])["name"] == "sft-dpo"
    missing = api.get("/api/v1/pipelines/templates/nope")
    assert missing.status_code == 404 and "sft-dpo" in missing.json()["detail"]


def test_a_template_submits_and_its_first_stage_job_exists_at_once(api) -> None:  # type: ignore[no-untyped-def]
    response = api.post(
        "/api/v1/pipelines",
        json={"template": "sft-dpo", "parameters": {"sft_steps": 2}, "priority": 7},
        headers={"Idempotency-Key": "api-pipe-1"},
    )
    assert response.status_code == 201, response.text
    pipeline = response.json()
    assert (pipeline["status"], pipeline["template"], pipeline["priority"]) == (
        "running",
        "sft-dpo",
        7,
    )
    sft, dpo = pipeline["stages"]
    assert (sft["name"], sft["status"], dpo["status"], dpo["depends_on"]) == (
        "sft",
        "running",
        "pending",
        ["sft"],
    )
    job = api.get(f"/api/v1/jobs/{sft['job_id']}").json()
    assert job["priority"] == 7 and job["spec"]["hyperparameters"]["max_steps"] == 2
    # the datasets are pinned at submit: a stage that starts later runs on the same versions
    assert job["dataset_version"] == 1
    checked = api.post(
        "/api/v1/pipelines/validate", json={"template": "sft-dpo", "parameters": {"sft_steps": 2}}
    )
    stored = checked.json()["definition"]["stages"]
    assert (stored["sft"]["job"]["dataset"], stored["dpo"]["job"]["dataset"]) == (
        "tiny-sft@1",
        "tiny-prefs@1",
    )
    lineage = api.get(f"/api/v1/jobs/{sft['job_id']}/lineage").json()
    assert lineage["pipeline"]["stage"] == "sft" and lineage["model"]["name"] == "tiny-qwen2"
    assert lineage["dataset"]["name"] == "tiny-sft" and lineage["model"]["produced_by"] is None
    replay = api.post(
        "/api/v1/pipelines",
        json={"template": "sft-dpo", "parameters": {"sft_steps": 2}, "priority": 7},
        headers={"Idempotency-Key": "api-pipe-1"},
    )
    assert replay.status_code == 200 and replay.json()["id"] == pipeline["id"]
    listed = api.get("/api/v1/pipelines", params={"status": "running"}).json()
    assert any(
        p["id"] == pipeline["id"] and p["stages"] == {"running": 1, "pending": 1}
        for p in listed["items"]
    )
    cancelled = api.post(f"/api/v1/pipelines/{pipeline['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"  # its job had no process yet
    assert [s["status"] for s in cancelled["stages"]] == ["cancelled", "cancelled"]
    events = api.get(f"/api/v1/pipelines/{pipeline['id']}/events").json()
    assert [(e["stage"], e["to_status"]) for e in events][:2] == [
        (None, "running"),
        ("sft", "running"),
    ]
    assert events[-1]["to_status"] == "cancelled" and events[-1]["stage"] is None


def test_yaml_definitions_submit_and_validate_without_storing(api) -> None:  # type: ignore[no-untyped-def]
    text = yaml.safe_dump({"name": "from yaml", "stages": {"only": {"job": SFT}}})
    checked = api.post("/api/v1/pipelines/validate", json={"yaml": text})
    assert checked.status_code == 200 and checked.json()["order"] == ["only"]
    before = api.get("/api/v1/pipelines").json()["total"]
    created = api.post("/api/v1/pipelines", json={"yaml": text, "name": "renamed"})
    assert created.status_code == 201 and created.json()["name"] == "renamed"
    assert api.get("/api/v1/pipelines").json()["total"] == before + 1


def test_invalid_definitions_are_refused_with_the_stage_and_field(api) -> None:  # type: ignore[no-untyped-def]
    before = api.get("/api/v1/pipelines").json()["total"]
    cases = [
        (
            {
                "definition": {
                    "name": "c",
                    "stages": {
                        "a": {"depends_on": ["b"], "job": SFT},
                        "b": {"depends_on": ["a"], "job": SFT},
                    },
                }
            },
            ["body", "definition", "stages", "a", "depends_on"],
            "cycle: a -> b -> a",
        ),
        (
            {
                "definition": {
                    "name": "d",
                    "stages": {"a": {"job": {**SFT, "model": "${stages.gone.outputs.checkpoint}"}}},
                }
            },
            ["body", "definition", "stages", "a", "job", "model"],
            "unknown stage",
        ),
        ({"yaml": "name: [unclosed"}, ["body", "yaml"], "not valid YAML"),
        ({"template": "nope"}, ["body", "template"], "no template 'nope'"),
        (
            {"template": "sft-dpo", "parameters": {"steps": 3}},
            ["body", "parameters", "steps"],
            "declares no parameter",
        ),
        ({"template": "sft-dpo", "yaml": "x: 1"}, ["body"], "exactly one of"),
    ]
    for body, loc, message in cases:
        response = api.post("/api/v1/pipelines", json=body)
        assert response.status_code == 422, (body, response.text)
        detail = response.json()["detail"][0]
        assert detail["loc"][: len(loc)] == loc, detail
        assert message in detail["msg"], detail
    assert api.get("/api/v1/pipelines").json()["total"] == before


def test_control_of_unknown_or_finished_pipelines_is_refused(api) -> None:  # type: ignore[no-untyped-def]
    assert api.get("/api/v1/pipelines/999999").status_code == 404
    assert api.post("/api/v1/pipelines/999999/cancel").status_code == 404
    created = api.post(
        "/api/v1/pipelines", json={"definition": {"name": "x", "stages": {"a": {"job": SFT}}}}
    ).json()
    assert api.post(f"/api/v1/pipelines/{created['id']}/resume").status_code == 409
    assert api.post(f"/api/v1/pipelines/{created['id']}/retry").status_code == 409
    paused = api.post(f"/api/v1/pipelines/{created['id']}/pause").json()
    assert paused["status"] == "paused"
    assert api.post(f"/api/v1/pipelines/{created['id']}/resume").json()["status"] == "running"
    api.post(f"/api/v1/pipelines/{created['id']}/cancel")
    assert api.post(f"/api/v1/pipelines/{created['id']}/cancel").status_code == 409
    retried = api.post(f"/api/v1/pipelines/{created['id']}/retry", json={"from_stage": "zzz"})
    assert retried.status_code == 422 and "no stage 'zzz'" in retried.json()["detail"][0]["msg"]
