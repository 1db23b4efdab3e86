"""GET /api/v1/gpus: honest "no GPU" here; simulated devices labelled as such."""

from __future__ import annotations


def test_no_gpu_on_this_machine_is_said_plainly(api, settings) -> None:  # type: ignore[no-untyped-def]
    found = api.get("/api/v1/gpus").json()
    assert found["gpus"] == 0 and found["simulated"] is False
    host = found["hosts"][0]
    assert host["name"] == settings.node_name and host["gpu_source"] == "none"
    assert host["note"] == "no GPU found on this host" and len(host["cpu_slots"]) == 1


def test_simulated_devices_are_labelled_and_holders_shown(api, engine, settings) -> None:  # type: ignore[no-untyped-def]
    from training_platform.scheduling import scheduler
    from training_platform.scheduling.service import refresh_local

    simulated = settings.model_copy(update={"simulated_gpus": '[{"name": "Sim H100"}, {}]'})
    refresh_local(engine, simulated)
    job = api.post(
        "/api/v1/jobs",
        json={
            "name": "holder",
            "algorithm": "sft",
            "model": "tiny-qwen2",
            "dataset": "tiny-sft",
            "resources": {"gpus": 1, "gpu_type": "h100"},
        },
    ).json()
    from training_platform.jobs import preparation

    preparation.prepare_job(engine, settings, job_id=job["id"], attempt=1, actor="t")
    scheduler.schedule(engine, simulated, dispatch=lambda j: None)
    found = api.get("/api/v1/gpus").json()
    host = found["hosts"][0]
    assert found["simulated"] and host["gpu_source"] == "simulated"
    assert [(g["index"], g["simulated"], g["state"], g["held_by_job"]) for g in host["gpus"]] == [
        (0, True, "held", job["id"]),
        (1, True, "free", None),
    ]
    shown = api.get(f"/api/v1/jobs/{job['id']}").json()
    assert shown["devices"] == [f"{settings.node_name}:gpu0 (simulated)"]
