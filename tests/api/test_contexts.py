"""The API starts with stand-ins for its contexts' routes (api/contexts.py): a request that
reaches a context before the warm-up has loaded it is answered exactly as afterwards."""

from __future__ import annotations

import importlib
import subprocess
import sys

from fastapi.testclient import TestClient

from training_platform.api import contexts
from training_platform.api.app import create_app

# Served by one context, by a context that shares its prefix with another (/api/v1/jobs:
# jobs, pipelines' lineage, monitoring's telemetry), outside /api/v1, and by none.
REQUESTS = [
    ("GET", "/api/v1/jobs/12345/lineage"),
    ("GET", "/api/v1/jobs/12345/gpu"),
    ("POST", "/api/v1/jobs/12345/cancel"),
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/evaluations/12345"),
    ("DELETE", "/api/v1/tokens"),
    ("GET", "/api/v1/ws/schema"),
    ("GET", "/api/v1/no-such-context"),
    ("GET", "/metrics"),
]


def test_every_route_lies_under_its_contexts_prefixes(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    app = create_app(sqlite_settings)
    assert len(contexts.stand_ins(app.router)) == len(contexts.CONTEXTS)
    routes = []
    for spec in contexts.CONTEXTS:
        module = importlib.import_module(spec.module)
        for name in spec.routers:
            for route in getattr(module, name).routes:
                assert route.path.startswith(spec.prefixes), (spec.module, route.path)
                routes.append(route)
    assert len(routes) > 90
    contexts.load_all(app.router)
    assert contexts.stand_ins(app.router) == []
    loaded = [route for route in app.router.routes if route in routes]
    assert loaded == routes  # in their contexts' order


def _answers(app, token: str) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        return [
            (response.status_code, response.text[:300])
            for response in (client.request(method, path) for method, path in REQUESTS)
        ]


def test_a_request_before_the_warm_up_is_answered_as_after_it(  # type: ignore[no-untyped-def]
    sqlite_settings, sqlite_engine, monkeypatch
) -> None:
    token = sqlite_settings.admin_token_file.read_text().strip()
    loaded = create_app(sqlite_settings)
    contexts.load_all(loaded.router)
    expected = _answers(loaded, token)
    assert [status for status, _ in expected] == [404, 404, 404, 200, 404, 405, 200, 404, 200]

    async def no_warm_up(router) -> None:  # type: ignore[no-untyped-def]
        return None

    monkeypatch.setattr(contexts, "warm_up", no_warm_up)
    fresh = create_app(sqlite_settings)
    assert _answers(fresh, token) == expected
    # Each request loaded what it reached, and only that: serving was never reached.
    left = {stand_in.spec.module for stand_in in contexts.stand_ins(fresh.router)}
    assert "training_platform.serving.routes" in left
    assert "training_platform.jobs.routes" not in left


def test_the_warm_up_loads_every_context_after_start(sqlite_settings, sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    app = create_app(sqlite_settings)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200

        async def warmed() -> None:
            await app.state.warm_up

        client.portal.call(warmed)  # type: ignore[union-attr]
    assert contexts.stand_ins(app.router) == []


def test_the_api_starts_without_the_contexts_or_heavy_modules(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    """What loads before the API is ready: no contexts' routes, no jobs models, no SSH, Ray,
    torch or Celery (those load with their first use)."""
    code = (
        "import sys\n"
        "from training_platform.api.app import create_app\n"
        "create_app()\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    env = {"TP_HOME": str(sqlite_settings.home), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    imported = set(done.stdout.split())
    for spec in contexts.CONTEXTS:
        assert spec.module not in imported
    heavy = {"training_platform.jobs.models", "paramiko", "ray", "torch", "celery"}
    assert heavy.isdisjoint(imported), heavy & imported
