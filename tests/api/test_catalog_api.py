"""Models from the configured roots or the hub; reward files checked without being run."""

from __future__ import annotations

import shutil
from pathlib import Path

REWARD = b"""
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return 1.0 if solution_str.strip().endswith(str(ground_truth)) else 0.0
"""


def test_register_a_model_inside_a_root_and_refuse_outside(  # type: ignore[no-untyped-def]
    settings, engine, tiny_model_dir, tmp_path
) -> None:
    from fastapi.testclient import TestClient

    from training_platform.api.app import create_app

    root = tmp_path / "models-root"
    shutil.copytree(tiny_model_dir, root / "mine")
    (tmp_path / "elsewhere").mkdir()
    rooted = settings.model_copy(update={"model_roots": [root.resolve()]})
    token = settings.admin_token_file.read_text().strip()
    with TestClient(create_app(rooted)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        created = client.post("/api/v1/models", json={"name": "mine", "path": str(root / "mine")})
        assert created.status_code == 201, created.text
        assert created.json()["source"] == "local" and "path" not in created.json()
        outside = client.post(
            "/api/v1/models", json={"name": "x", "path": str(tmp_path / "elsewhere")}
        )
        assert outside.status_code == 422
        assert outside.json()["detail"][0]["loc"] == ["body", "path"]
        assert "outside the model roots" in outside.json()["detail"][0]["msg"]
        sneaky = client.post(
            "/api/v1/models",
            json={"name": "y", "path": str(root / "mine" / ".." / ".." / "elsewhere")},
        )
        assert sneaky.status_code == 422
        empty = root / "empty"
        empty.mkdir()
        assert (
            "no config.json"
            in client.post("/api/v1/models", json={"name": "z", "path": str(empty)}).json()[
                "detail"
            ][0]["msg"]
        )
        hub = client.post("/api/v1/models", json={"name": "qwen", "hub_id": "Qwen/Qwen2.5-0.5B"})
        assert hub.status_code == 201 and hub.json()["source"] == "hub"
        assert (
            client.post("/api/v1/models", json={"name": "q2", "hub_id": "not a hub id"}).status_code
            == 422
        )
        assert client.post("/api/v1/models", json={"name": "both"}).status_code == 422
        assert (
            client.post("/api/v1/models", json={"name": "mine", "hub_id": "a/b"}).status_code == 409
        )
        names = [m["name"] for m in client.get("/api/v1/models").json()]
        assert names == ["mine", "qwen", "tiny-qwen2"]


def test_reward_files_are_checked_and_listed(api, settings) -> None:  # type: ignore[no-untyped-def]
    created = api.post("/api/v1/rewards", params={"name": "ends-with"}, content=REWARD)
    assert created.status_code == 201, created.text
    listed = api.get("/api/v1/rewards").json()
    assert "math_answer" in listed["builtin"]
    assert [r["name"] for r in listed["files"]] == ["ends-with"]
    stored = settings.home / "rewards" / f"{created.json()['sha256']}.py"
    assert stored.read_bytes() == REWARD
    for bad, reason in (
        (b"def score(a, b, c):\n    return 1.0\n", "compute_score"),
        (b"def compute_score(x):\n    return 1.0\n", "compute_score"),
        (b"def compute_score(:\n", "not a usable reward file"),
    ):
        response = api.post("/api/v1/rewards", params={"name": "bad"}, content=bad)
        assert response.status_code == 422, bad
        assert reason in response.json()["detail"][0]["msg"]
    assert (
        api.post("/api/v1/rewards", params={"name": "ends-with"}, content=REWARD).status_code == 409
    )
    assert not (Path(settings.home) / "rewards" / "bad.py").exists()
