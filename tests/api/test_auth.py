"""Auth is on by default: every API route needs the token; only health probes do not."""

from __future__ import annotations

import stat

import pytest
from fastapi.testclient import TestClient

from training_platform.api.app import API_PREFIX, create_app


def _api_routes(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Every (method, path) the OpenAPI document publishes under the API prefix."""
    routes = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith(API_PREFIX):
            routes.extend((method.upper(), path.replace("{job_id}", "1")) for method in operations)
    return sorted(routes)


def test_admin_token_file_is_private(settings, engine) -> None:  # type: ignore[no-untyped-def]
    mode = settings.admin_token_file.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert len(settings.admin_token_file.read_text().strip()) >= 32


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic abc", "Bearer "])
def test_every_api_route_refuses_a_missing_or_wrong_token(settings, engine, header) -> None:  # type: ignore[no-untyped-def]
    app = create_app(settings)
    routes = _api_routes(app)
    assert len(routes) >= 12  # jobs, catalog, backends
    with TestClient(app) as client:
        headers = {"Authorization": header} if header else {}
        for method, path in routes:
            response = client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"


def test_health_probes_need_no_token(api) -> None:  # type: ignore[no-untyped-def]
    api.headers.pop("Authorization")
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"database": "ok", "redis": "ok"}}


def test_readyz_reports_an_unreachable_redis(sqlite_settings, sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    broken = sqlite_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("error")


def test_the_token_survives_a_new_database(sqlite_settings, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from training_platform.bootstrap import bootstrap

    bootstrap(sqlite_settings)
    token = sqlite_settings.admin_token_file.read_text()
    (sqlite_settings.home / "platform.db").unlink()
    bootstrap(sqlite_settings)
    assert sqlite_settings.admin_token_file.read_text() == token
    with TestClient(create_app(sqlite_settings)) as client:
        response = client.get(
            f"{API_PREFIX}/models", headers={"Authorization": f"Bearer {token.strip()}"}
        )
    assert response.status_code == 200
