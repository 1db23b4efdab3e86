"""The compute configurator over REST: estimate, advice, admission at submission and the
prediction a GPU job keeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training_platform.compute import calibrate
from training_platform.scheduling.service import refresh_local

# Qwen2.5-1.5B's shape (config only, no weights): full fine-tuning in TRL's float32 needs
# ~25 GB of model states alone, LoRA fits a 24 GB GPU.
QWEN_1_5B = calibrate.QWEN2_1_5B


@pytest.fixture
def sized_model(api: Any, settings: Any) -> str:
    directory = Path(settings.home) / "models" / "local" / "qwen-1.5b-shape"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(QWEN_1_5B))
    made = api.post("/api/v1/models", json={"name": "qwen-1.5b-shape", "path": str(directory)})
    assert made.status_code == 201, made.text
    return "qwen-1.5b-shape"


@pytest.fixture
def two_24gb_gpus(engine: Any, settings: Any) -> None:
    refresh_local(engine, settings.model_copy(update={"simulated_gpus": "2x24GB"}))


def _job(model: str, **hyper: Any) -> dict[str, Any]:
    return {
        "name": "sized",
        "algorithm": "sft",
        "model": model,
        "dataset": "tiny-sft",
        "hyperparameters": {"max_length": 1024, "per_device_train_batch_size": 4, **hyper},
        "resources": {"gpus": 1},
    }


def test_a_job_too_big_for_its_gpus_is_refused_with_the_estimate_and_one_that_fits(  # type: ignore[no-untyped-def]
    api, sized_model, two_24gb_gpus
) -> None:
    refused = api.post("/api/v1/jobs", json=_job(sized_model))
    assert refused.status_code == 422
    error = refused.json()["detail"][0]
    assert error["loc"] == ["body", "resources"] and error["type"] == "memory"
    assert "the largest device it can use has 24576 MB" in error["msg"]
    estimate, fits = error["ctx"]["estimate"], error["ctx"]["fits"]
    assert estimate["device_mb"] > 24576 and estimate["breakdown_mb"]["optimizer"] > 11_000
    assert fits["device_mb"] <= 24576 and fits["changes"]["hyperparameters"]["lora"] == {"rank": 16}
    assert f"this fits: {fits['summary']}" in error["msg"]
    assert api.get("/api/v1/jobs").json()["total"] == 0  # nothing half-written

    body = _job(sized_model, **fits["changes"]["hyperparameters"])
    made = api.post("/api/v1/jobs", json=body)
    assert made.status_code == 201, made.text
    kept = api.get(f"/api/v1/compute/predictions/{made.json()['id']}").json()
    assert kept["predicted_mb"] == fits["device_mb"] and kept["measured_mb"] is None


def test_estimate_shows_the_parts_the_devices_and_cheapest_first_options(  # type: ignore[no-untyped-def]
    api, sized_model, two_24gb_gpus
) -> None:
    found = api.post(
        "/api/v1/compute/estimate",
        json={
            "model": sized_model,
            "backend": "trl",
            "algorithm": "sft",
            "hyperparameters": {"per_device_train_batch_size": 4, "lora": {"rank": 16}},
            "resources": {"gpus": 1},
        },
    ).json()
    assert found["sized"] and found["fits"] is True
    assert found["parameters"] == 1_543_714_304  # Qwen2.5-1.5B's published count
    assert found["devices"]["memory_mb"] == 24576 and found["devices"]["count"] == 2
    parts = found["estimate"]["breakdown_mb"]
    assert parts["weights"] == 5889 and parts["optimizer"] < 200  # float32 base, small adapter
    assert found["headroom_mb"] == 24576 - found["estimate"]["device_mb"]
    assert found["error_band"] is None  # no finished GPU job measured yet
    costs = [o["device_mb"] for o in found["recommendations"]]
    assert found["recommendations"][0]["summary"] == "as submitted" and costs

    unsized = api.post(
        "/api/v1/compute/estimate",
        json={"model": sized_model, "backend": "trl", "algorithm": "nope"},
    )
    assert unsized.status_code == 422 and unsized.json()["detail"][0]["loc"] == [
        "body",
        "algorithm",
    ]


def test_advice_lists_which_models_fit_each_kind_of_gpu(  # type: ignore[no-untyped-def]
    api, sized_model, two_24gb_gpus
) -> None:
    advice = api.get("/api/v1/compute/advice").json()
    assert [(a["gpu"], a["memory_mb"], a["count"]) for a in advice] == [("Simulated GPU", 24576, 2)]
    models = {m["model"]: m for m in advice[0]["models"]}
    big = models[sized_model]
    assert big["inference"]["fits"] and big["lora"]["fits"]
    assert not big["full"]["fits"] and big["full_sharded"]["gpus"] == 2
    assert all(models["tiny-qwen2"][use]["fits"] for use in ("inference", "lora", "full"))


def test_warn_admission_submits_and_says_why(  # type: ignore[no-untyped-def]
    api, sized_model, two_24gb_gpus, settings
) -> None:
    api.app.state.settings = settings.model_copy(update={"admission": "warn"})
    made = api.post("/api/v1/jobs", json=_job(sized_model))
    assert made.status_code == 201
    events = api.get(f"/api/v1/jobs/{made.json()['id']}/events").json()
    assert "memory warning: the job needs ~" in events[0]["reason"]


def test_rows_are_sized_as_long_as_the_datasets_longest_once_an_analysis_counted_them(  # type: ignore[no-untyped-def]
    api, engine, settings, two_24gb_gpus
) -> None:
    from training_platform.datasets import analyses

    body = {
        "model": "tiny-qwen2",
        "backend": "trl",
        "algorithm": "sft",
        "dataset": "tiny-sft",
        "hyperparameters": {"max_length": 1024},
        "resources": {"gpus": 1},
    }
    before = api.post("/api/v1/compute/estimate", json=body).json()
    assert "rows padded" not in " ".join(before["estimate"]["basis"])
    made = api.post("/api/v1/datasets/tiny-sft/analyses", json={"model": "tiny-qwen2"}).json()
    assert analyses.run(engine, settings, made["id"]) == "succeeded"
    longest = int(
        api.get("/api/v1/datasets/tiny-sft/analyses").json()[0]["result"]["lengths"]["total"]["max"]
    )
    after = api.post("/api/v1/compute/estimate", json=body).json()
    assert (
        f"rows padded to the dataset's longest: {longest} tokens (its analysis)"
        in (after["estimate"]["basis"])
    )
    assert 0 < longest < 1024 and after["estimate"]["peak_mb"] < before["estimate"]["peak_mb"]
