"""Dataset uploads over HTTP: streamed, checked row by row, listed with format and rows."""

from __future__ import annotations

import json


def _body(rows: list[object]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_upload_list_show_delete(api, settings) -> None:  # type: ignore[no-untyped-def]
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(30)]
    response = api.post(
        "/api/v1/datasets", params={"name": "my-math", "filename": "m.jsonl"}, content=_body(rows)
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["format"], created["task"], created["rows"], created["source"]) == (
        "prompt_answer",
        "rl",
        30,
        "upload",
    )
    assert "path" not in created and len(created["sha256"]) == 64
    names = [d["name"] for d in api.get("/api/v1/datasets").json()]
    assert "my-math" in names and "tiny-sft" in names
    assert api.get("/api/v1/datasets/my-math").json()["id"] == created["id"]
    assert api.get(f"/api/v1/datasets/{created['id']}").json()["name"] == "my-math"
    assert api.delete("/api/v1/datasets/my-math").status_code == 204
    assert api.get("/api/v1/datasets/my-math").status_code == 404
    assert list((settings.datasets_dir / "uploads").iterdir()) == []


def test_bad_rows_are_reported_by_number_and_nothing_is_kept(api, settings) -> None:  # type: ignore[no-untyped-def]
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    body = (json.dumps({"messages": chat}) + "\n").encode()
    body += b'{"messages": [{"role": "user", "content": "no answer"}]}\n'
    body += b"{broken\n"
    response = api.post(
        "/api/v1/datasets", params={"name": "chat", "filename": "c.jsonl"}, content=body
    )
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert message.startswith("2 of 3 rows do not fit format 'messages'")
    assert (
        "row 2: 'messages' has no assistant turn" in message and "row 3: not valid JSON" in message
    )
    assert api.get("/api/v1/datasets/chat").status_code == 404
    assert not list((settings.datasets_dir / "incoming").iterdir())


def test_upload_limits_names_and_types(api, settings) -> None:  # type: ignore[no-untyped-def]
    row = _body([{"prompt": "q", "response": "r"}])
    assert (
        api.post(
            "/api/v1/datasets", params={"name": "x", "filename": "x.csv"}, content=row
        ).status_code
        == 422
    )
    for bad in ("", "../etc", "a b", "123", "x" * 200):
        response = api.post(
            "/api/v1/datasets", params={"name": bad, "filename": "x.jsonl"}, content=row
        )
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"] == ["query", "name"]
    assert (
        api.post(
            "/api/v1/datasets", params={"name": "tiny-sft", "filename": "x.jsonl"}, content=row
        ).status_code
        == 409
    )
    assert api.delete("/api/v1/datasets/tiny-sft").status_code == 409  # bundled


def test_a_dataset_over_the_limit_is_refused_while_streaming(settings, engine) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from training_platform.api.app import create_app

    small = settings.model_copy(update={"max_upload_mb": 1})
    token = settings.admin_token_file.read_text().strip()
    with TestClient(create_app(small)) as client:
        response = client.post(
            "/api/v1/datasets",
            params={"name": "huge", "filename": "h.jsonl"},
            content=(b'{"prompt": "q", "response": "' + b"r" * 100_000 + b'"}\n') * 15,
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 413
    assert "exceeds the limit of 1 MB" in response.json()["detail"][0]["msg"]
    assert not list((settings.datasets_dir / "incoming").iterdir())
