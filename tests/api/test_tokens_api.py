"""API tokens: listed without secrets, created with the secret shown once, revoked for good."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from training_platform.auth.models import ApiToken
from training_platform.auth.service import hash_token


def _names(api) -> list[str]:  # type: ignore[no-untyped-def]
    return [t["name"] for t in api.get("/api/v1/tokens").json()["items"]]


def test_the_list_shows_the_admin_token_as_current_and_no_secret(api, settings) -> None:  # type: ignore[no-untyped-def]
    response = api.get("/api/v1/tokens")
    assert response.status_code == 200
    [admin] = response.json()["items"]
    assert set(admin) == {"name", "user", "role", "created_at", "revoked_at", "current"}
    assert admin["name"] == "admin" and admin["role"] == "admin" and admin["user"] == "admin"
    assert admin["current"] is True and admin["revoked_at"] is None
    secret = settings.admin_token_file.read_text().strip()
    assert secret not in response.text and hash_token(secret) not in response.text


def test_a_new_token_works_until_it_is_revoked_then_gets_401_everywhere(api, engine) -> None:  # type: ignore[no-untyped-def]
    made = api.post("/api/v1/tokens", json={"name": "ci-bot.1"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert set(body) == {"name", "user", "role", "created_at", "token"}
    assert body["user"] == "admin" and body["role"] == "admin"  # the caller's, with its role
    secret = body["token"]
    assert body["name"] == "ci-bot.1" and len(secret) >= 43
    with Session(engine) as session:
        stored = session.exec(select(ApiToken).where(ApiToken.name == "ci-bot.1")).one()
    assert stored.token_hash == hash_token(secret) and secret not in stored.token_hash

    as_bot = {"Authorization": f"Bearer {secret}"}
    listed = api.get("/api/v1/tokens", headers=as_bot).json()["items"]
    assert {t["name"]: t["current"] for t in listed} == {"admin": False, "ci-bot.1": True}
    assert "token" not in listed[1]
    assert api.get("/api/v1/jobs", headers=as_bot).status_code == 200

    revoked = api.post("/api/v1/tokens/ci-bot.1/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["name"] == "ci-bot.1" and revoked.json()["revoked_at"] is not None
    assert revoked.json()["current"] is False
    for method, path in (("GET", "/api/v1/jobs"), ("GET", "/api/v1/tokens"), ("GET", "/metrics")):
        refused = api.request(method, path, headers=as_bot)
        assert refused.status_code == 401, (path, refused.text)
        assert refused.json()["detail"] == "invalid or revoked token"
    again = api.post("/api/v1/tokens/ci-bot.1/revoke")
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    listed = api.get("/api/v1/tokens").json()["items"]
    assert [t["revoked_at"] is not None for t in listed] == [False, True]


def test_a_taken_name_is_409_even_when_revoked(api) -> None:  # type: ignore[no-untyped-def]
    assert api.post("/api/v1/tokens", json={"name": "admin"}).status_code == 409
    assert api.post("/api/v1/tokens", json={"name": "bot"}).status_code == 201
    taken = api.post("/api/v1/tokens", json={"name": "bot"})
    assert taken.status_code == 409
    assert taken.json()["detail"] == (
        "a token named 'bot' exists already (revoked tokens keep their names)"
    )
    api.post("/api/v1/tokens/bot/revoke")
    assert api.post("/api/v1/tokens", json={"name": "bot"}).status_code == 409
    assert _names(api) == ["admin", "bot"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "at least 1 character"),
        ("x" * 64, "at most 63 characters"),
        ("has space", "use letters, digits"),
        ("../etc", "use letters, digits"),
        ("-flag", "starting with a letter or digit"),
        ("a/b", "use letters, digits"),
    ],
)
def test_bad_names_are_422_naming_the_field(api, name: str, message: str) -> None:  # type: ignore[no-untyped-def]
    refused = api.post("/api/v1/tokens", json={"name": name})
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "name"] and message in error["msg"]
    assert _names(api) == ["admin"]


def test_revoking_the_admin_token_the_own_token_or_an_unknown_one_is_refused(api) -> None:  # type: ignore[no-untyped-def]
    admin = api.post("/api/v1/tokens/admin/revoke")
    assert admin.status_code == 409
    assert "$TP_HOME/admin-token" in admin.json()["detail"]
    secret = api.post("/api/v1/tokens", json={"name": "self"}).json()["token"]
    own = api.post("/api/v1/tokens/self/revoke", headers={"Authorization": f"Bearer {secret}"})
    assert own.status_code == 409 and "the one this request uses" in own.json()["detail"]
    unknown = api.post("/api/v1/tokens/nobody/revoke")
    assert unknown.status_code == 404 and unknown.json()["detail"] == "token 'nobody' not found"
    listed = api.get("/api/v1/tokens").json()["items"]
    assert [t["revoked_at"] for t in listed] == [None, None]
    assert api.get("/api/v1/jobs").status_code == 200
