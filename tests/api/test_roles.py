"""Who may do what: every route of the OpenAPI document and both WebSockets, called as nobody,
a viewer, a member, a member with the code permission and an admin.

The policy the test holds the API to is written here on its own (POLICY), not read from the
code: viewers read; members also submit and change work; admins also manage users, hosts,
secrets and webhooks; uploading a reward file (code) needs admin or the code permission.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from training_platform.auth.models import rank

CALLERS = ("viewer", "member", "coder", "admin")
PUBLIC = {"/healthz", "/readyz"}


def needed(method: str, path: str) -> str:
    """The least a caller must be for this route: a role, or "code"."""
    if path.startswith(("/api/v1/webhooks", "/api/v1/secrets", "/api/v1/audit")):
        return "admin"
    if path == "/api/v1/users/me" or path.startswith("/api/v1/tokens"):
        return "viewer"  # everyone manages their own tokens
    if path.startswith("/api/v1/users"):
        return "admin"
    if path.startswith(("/api/v1/hosts", "/api/v1/projects")) and method != "get":
        return "admin"
    if path == "/api/v1/rewards" and method == "post":
        return "code"
    if path.startswith("/api/v1/compute"):
        return "viewer"  # estimates change nothing
    return "viewer" if method == "get" else "member"


def may(caller: str, requirement: str) -> bool:
    if requirement == "code":
        return caller in ("coder", "admin")
    role = "member" if caller == "coder" else caller
    return rank(role) >= rank(requirement)


@pytest.fixture
def clients(sqlite_settings) -> Iterator[dict[str, TestClient]]:  # type: ignore[no-untyped-def]
    from training_platform.api.app import create_app

    with TestClient(create_app(sqlite_settings)) as admin:
        admin.headers["Authorization"] = (
            f"Bearer {sqlite_settings.admin_token_file.read_text().strip()}"
        )
        tokens = {}
        for name, role, code in (
            ("viewer", "viewer", False),
            ("member", "member", False),
            ("coder", "member", True),
        ):
            made = admin.post(
                "/api/v1/users", json={"name": name, "role": role, "can_run_code": code}
            )
            assert made.status_code == 201, made.text
            token = admin.post("/api/v1/tokens", json={"name": f"{name}-t", "user": name})
            assert token.status_code == 201, token.text
            tokens[name] = token.json()["token"]
        made_clients = {"admin": admin}
        for name, secret in tokens.items():
            client = TestClient(admin.app)
            client.headers["Authorization"] = f"Bearer {secret}"
            made_clients[name] = client
        nobody = TestClient(admin.app)
        made_clients["nobody"] = nobody
        yield made_clients


def _concrete(path: str) -> str:
    # ids that exist nowhere, names that exist nowhere: an allowed call ends in 404 or 422
    return re.sub(r"\{[^}]+\}", lambda m: "999999" if "id" in m.group(0) else "nothing", path)


def test_every_route_answers_each_role_as_the_policy_says(
    clients: dict[str, TestClient],
) -> None:
    document = clients["admin"].get("/openapi.json").json()
    checked: list[tuple[str, str]] = []
    wrong: list[str] = []
    for path, operations in document["paths"].items():
        for method in operations:
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            url = _concrete(path)
            kwargs: dict[str, Any] = {} if method in ("get", "delete") else {"json": {}}
            answer = clients["nobody"].request(method.upper(), url, **kwargs)
            if path in PUBLIC:
                assert answer.status_code != 401, path
                continue
            if answer.status_code != 401:
                wrong.append(f"{method} {path} without a token: {answer.status_code}")
            requirement = needed(method, path)
            for caller in CALLERS:
                answer = clients[caller].request(method.upper(), url, **kwargs)
                allowed = may(caller, requirement)
                refused = answer.status_code == 403
                if allowed == refused or answer.status_code == 401:
                    wrong.append(
                        f"{method} {path} as {caller}: {answer.status_code} "
                        f"(needs {requirement}) {answer.text[:120]}"
                    )
                if refused:
                    assert "role" in answer.json()["detail"] or "code" in answer.json()["detail"]
            checked.append((method, path))
    print(f"{len(checked)} operations x {len(CALLERS) + 1} callers")
    assert len(checked) > 100
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", ["/api/v1/ws/overview", "/api/v1/ws/jobs/1"])
def test_both_sockets_admit_every_role_and_nobody_else(
    clients: dict[str, TestClient], path: str
) -> None:
    admin = clients["admin"]
    tokens = {"admin": admin.headers["Authorization"].split()[1]}
    for caller in ("viewer", "member"):
        tokens[caller] = clients[caller].headers["Authorization"].split()[1]
    for caller, token in tokens.items():
        with admin.websocket_connect(path) as ws:
            ws.send_json({"type": "hello", "token": token})
            first = ws.receive_json()
            # the overview's snapshot, or the job's "not found" (admitted, then no such job)
            assert first["type"] in ("overview", "error"), (caller, first)
            if first["type"] == "error":
                assert "not found" in first["message"], (caller, first)
    with admin.websocket_connect(path) as ws:
        ws.send_json({"type": "hello", "token": "not-a-token"})
        assert ws.receive_json()["type"] == "error"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4401


def test_a_member_cannot_upload_a_reward_and_a_disabled_user_is_locked_out(
    clients: dict[str, TestClient],
) -> None:
    source = b"def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
    source += b"    return 1.0\n"
    refused = clients["member"].post("/api/v1/rewards?name=mine", content=source)
    assert refused.status_code == 403 and "code permission" in refused.json()["detail"]
    assert clients["admin"].get("/api/v1/rewards").json()["files"] == []  # nothing written
    made = clients["coder"].post("/api/v1/rewards?name=mine", content=source)
    assert made.status_code == 201, made.text

    me = clients["member"].get("/api/v1/users/me").json()
    assert me == {"user": "member", "token": "member-t", "role": "member", "can_run_code": False}
    changed = clients["admin"].patch("/api/v1/users/member", json={"disabled": True})
    assert changed.status_code == 200 and changed.json()["disabled_at"] is not None
    assert clients["member"].get("/api/v1/jobs").status_code == 401
    # a member's own tokens only; a token's role at most its user's
    assert (
        clients["viewer"].post("/api/v1/tokens", json={"name": "v2", "role": "admin"}).status_code
        == 422
    )
    listed = clients["viewer"].get("/api/v1/tokens").json()["items"]
    assert [t["name"] for t in listed] == ["viewer-t"]
    assert clients["viewer"].post("/api/v1/tokens/admin/revoke").status_code == 404
    # the platform's own admin account stays an admin
    demoted = clients["admin"].patch("/api/v1/users/admin", json={"role": "viewer"})
    assert demoted.status_code == 409

    # the audit trail: who did what among admin and code actions, successful ones only
    trail = clients["admin"].get("/api/v1/audit").json()
    done = [(e["user"], e["method"], e["path"], e["status"]) for e in reversed(trail["items"])]
    assert done[:6] == [
        ("admin", "POST", "/api/v1/users", 201),
        ("admin", "POST", "/api/v1/tokens", 201),
        ("admin", "POST", "/api/v1/users", 201),
        ("admin", "POST", "/api/v1/tokens", 201),
        ("admin", "POST", "/api/v1/users", 201),
        ("admin", "POST", "/api/v1/tokens", 201),
    ]
    assert done[6:] == [
        ("coder", "POST", "/api/v1/rewards", 201),  # code, the member's refusal is not there
        ("admin", "PATCH", "/api/v1/users/member", 200),
    ]
    assert trail["total"] == 8 and trail["items"][0]["route"] == "/api/v1/users/{name}"
    assert all("?" not in e["path"] for e in trail["items"])  # never a query string
    mine = clients["admin"].get("/api/v1/audit", params={"user": "coder"}).json()
    assert [e["path"] for e in mine["items"]] == ["/api/v1/rewards"]


def test_the_flower_link_is_everyones_and_its_password_only_admins(
    clients: dict[str, TestClient], sqlite_settings
) -> None:  # type: ignore[no-untyped-def]
    (sqlite_settings.home / "flower-password").write_text("fl0wer-secret\n")
    link = clients["admin"].get("/api/v1/flower").json()
    assert link == {
        "enabled": True,
        "url": f"http://127.0.0.1:{sqlite_settings.flower_port}",
        "user": "admin",
        "password": "fl0wer-secret",
    }
    for caller in ("viewer", "member", "coder"):
        answer = clients[caller].get("/api/v1/flower")
        assert answer.status_code == 200
        assert answer.json() == {**link, "user": None, "password": None}, caller
        assert "fl0wer-secret" not in answer.text
