"""Endpoints and the way in to served models, through the real app: keys stored encrypted and
never answered, internal addresses refused, serve jobs refused a dataset, and the proxy's
answers for a job that is not a running server."""

from __future__ import annotations

from sqlmodel import Session, select

from training_platform.core.secrets import SecretBox
from training_platform.serving.models import Endpoint

ENDPOINT = {
    "name": "public-llm",
    "base_url": "https://93.184.215.14/v1/",
    "model": "gpt-x",
    "api_key": "sk-test-0123456789",
}


def test_an_endpoint_keeps_its_key_encrypted_and_never_answers_it(api, engine, settings) -> None:  # type: ignore[no-untyped-def]
    created = api.post("/api/v1/endpoints", json=ENDPOINT)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["has_api_key"] is True and body["base_url"] == "https://93.184.215.14/v1"
    assert body["concurrency"] == 8 and body["max_retries"] == 3 and body["job_id"] is None
    listed = api.get("/api/v1/endpoints")
    assert [e["name"] for e in listed.json()] == ["public-llm"]
    assert ENDPOINT["api_key"] not in created.text + listed.text
    with Session(engine) as session:
        stored = session.exec(select(Endpoint)).one()
    assert stored.api_key and ENDPOINT["api_key"] not in stored.api_key
    assert SecretBox.for_settings(settings).decrypt(stored.api_key) == ENDPOINT["api_key"]

    again = api.post("/api/v1/endpoints", json=ENDPOINT)
    assert again.status_code == 409 and "exists" in again.text
    assert api.delete("/api/v1/endpoints/public-llm").status_code == 204
    assert api.delete("/api/v1/endpoints/public-llm").status_code == 404
    assert api.get("/api/v1/endpoints").json() == []


def test_internal_and_malformed_addresses_are_refused_naming_base_url(api) -> None:  # type: ignore[no-untyped-def]
    for url, reason in (
        ("http://127.0.0.1:8000/v1", "internal address"),
        ("http://169.254.169.254/latest", "internal address"),
        ("http://10.1.2.3/v1", "internal address"),
        ("http://localhost/v1", "internal address"),
        ("file:///etc/passwd", "http or https"),
        ("https://93.184.215.14/v1?key=1", "query"),
    ):
        refused = api.post("/api/v1/endpoints", json={**ENDPOINT, "base_url": url})
        assert refused.status_code == 422, (url, refused.text)
        detail = refused.json()["detail"][0]
        assert detail["loc"] == ["body", "base_url"] and reason in detail["msg"], (url, detail)
    assert api.get("/api/v1/endpoints").json() == []


def test_the_way_in_needs_a_running_serve_job_and_a_token(api) -> None:  # type: ignore[no-untyped-def]
    missing = api.post("/api/v1/serving/999/v1/chat/completions", json={"messages": []})
    assert missing.status_code == 404 and "serve job 999 not found" in missing.text
    job = api.post("/api/v1/serving", json={"model": "tiny-qwen2", "engine": "transformers"}).json()
    assert job["algorithm"] == "serve" and job["dataset"] is None
    waiting = api.post(f"/api/v1/serving/{job['id']}/v1/chat/completions", json={"messages": []})
    assert waiting.status_code == 409 and "not running" in waiting.text
    served = api.get("/api/v1/serving").json()
    assert [(s["job_id"], s["ready"]) for s in served] == [(job["id"], False)]
    no_token = api.post(
        f"/api/v1/serving/{job['id']}/v1/chat/completions",
        json={"messages": []},
        headers={"Authorization": ""},
    )
    assert no_token.status_code == 401
    both = api.post("/api/v1/serving", json={"model": "tiny-qwen2", "job": 1})
    assert both.status_code == 422 and "exactly one" in both.text
