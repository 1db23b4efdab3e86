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


def _upload(api, name: str, rows: list[object], **params: object):  # type: ignore[no-untyped-def]
    return api.post(
        "/api/v1/datasets",
        params={"name": name, "filename": f"{name}.jsonl", **params},
        content=_body(rows),
    )


def test_alpaca_and_sharegpt_upload_with_the_rule_that_fired_and_preview(api) -> None:  # type: ignore[no-untyped-def]
    alpaca = [{"instruction": f"Add 1 to {i}", "input": "", "output": str(i + 1)} for i in range(4)]
    shown = api.post(
        "/api/v1/datasets/preview", params={"filename": "a.jsonl"}, content=_body(alpaca)
    )
    assert shown.status_code == 200, shown.text
    preview = shown.json()
    assert (preview["format"], preview["task"], preview["rows"]) == ("alpaca", "sft", 4)
    assert preview["detected_by"] == "alpaca: has instruction, output"
    assert preview["preview"][0] == {
        "messages": [
            {"role": "user", "content": "Add 1 to 0"},
            {"role": "assistant", "content": "1"},
        ]
    }
    assert api.get("/api/v1/datasets/a").status_code == 404  # a preview keeps nothing
    created = _upload(api, "alpaca-math", alpaca)
    assert created.status_code == 201, created.text
    assert (created.json()["format"], created.json()["version"]) == ("alpaca", 1)
    assert created.json()["detected_by"] == "alpaca: has instruction, output"

    sharegpt = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    ]
    created = _upload(api, "chats", sharegpt)
    assert created.status_code == 201 and created.json()["format"] == "sharegpt"


def test_an_ambiguous_file_is_refused_with_its_candidates(api) -> None:  # type: ignore[no-untyped-def]
    rows = [{"prompt": "q", "answer": "1", "response": "r"}]
    refused = _upload(api, "unclear", rows)
    assert refused.status_code == 422
    detail = refused.json()["detail"][0]
    assert detail["loc"] == ["query", "format"]
    assert (
        "fits several formats (prompt_response: has prompt, response; prompt_answer: "
        in (detail["msg"])
    )
    chosen = _upload(api, "unclear", rows, format="prompt_answer")
    assert chosen.status_code == 201 and chosen.json()["detected_by"] == "given"


def test_versions_pin_jobs_diff_and_rows(api) -> None:  # type: ignore[no-untyped-def]
    first = [{"prompt": f"q{i}", "response": f"r{i}"} for i in range(5)]
    assert _upload(api, "chat-v", first).status_code == 201
    assert _upload(api, "chat-v", first).status_code == 409  # a name is one dataset
    job = api.post(
        "/api/v1/jobs",
        json={
            "name": "on v1",
            "algorithm": "sft",
            "model": "tiny-qwen2",
            "dataset": "chat-v",
            "hyperparameters": {"max_steps": 1},
        },
    )
    assert job.status_code == 201, job.text
    assert job.json()["dataset_version"] == 1

    second = [*first[1:], {"prompt": "q9", "response": "r9"}, {"prompt": "q9", "response": "r9"}]
    same = _upload(api, "chat-v", first, new_version="true")
    assert same.status_code == 409 and "same as version 1" in same.json()["detail"]
    wrong = _upload(api, "chat-v", [{"prompt": "q", "answer": "1"}], new_version="true")
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["query", "new_version"]
    added = _upload(api, "chat-v", second, new_version="true")
    assert added.status_code == 201 and added.json()["version"] == 2 and added.json()["rows"] == 6

    listed = api.get("/api/v1/datasets/chat-v/versions").json()
    assert [(v["number"], v["parent"], v["rows"]) for v in listed] == [(2, 1, 6), (1, None, 5)]
    assert listed[0]["manifest"]["detected_by"] == "prompt_response: has prompt, response"
    assert "path" not in listed[0]["manifest"]["file"]
    # the job submitted before keeps version 1; a new one takes the newest unless pinned
    assert api.get(f"/api/v1/jobs/{job.json()['id']}").json()["dataset_version"] == 1
    body = {"name": "pinned", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "chat-v@1"}
    assert api.post("/api/v1/jobs", json=body).json()["dataset_version"] == 1
    missing = api.post("/api/v1/jobs", json={**body, "dataset": "chat-v@7"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["msg"].startswith("dataset 'chat-v' has no version 7")

    diff = api.get("/api/v1/datasets/chat-v/diff", params={"base": 1}).json()
    assert (diff["added"], diff["removed"], diff["unchanged"]) == (2, 1, 4)
    assert diff["removed_rows"] == [{"row": 1, "data": first[0]}]
    assert [r["data"]["prompt"] for r in diff["added_rows"]] == ["q9", "q9"]

    page = api.get("/api/v1/datasets/chat-v/rows", params={"version": 1, "limit": 2}).json()
    assert (page["total"], [r["row"] for r in page["rows"]]) == (5, [1, 2])
    found = api.get("/api/v1/datasets/chat-v/rows", params={"q": "R9"}).json()
    assert found["total"] == 2 and found["rows"][0]["data"]["prompt"] == "q9"
