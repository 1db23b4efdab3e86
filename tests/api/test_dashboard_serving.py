"""The API serves the dashboard's build: its pages at every non-API path, its hashed assets,
never a file outside the build, and the API docs when no build is there."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from training_platform.api import dashboard


def _build(root: Path) -> Path:
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><div id=app></div>")
    (root / "favicon.ico").write_bytes(b"ico")
    (root / "assets" / "index-abc123.js").write_text("console.log(1)")
    (root.parent / "secret.txt").write_text("not to be served")
    return root


def _app(build_dir: Path) -> TestClient:
    app = FastAPI()

    @app.get("/api/v1/thing")
    def thing() -> dict[str, str]:
        return {"ok": "yes"}

    dashboard.install(app, build_dir)
    return TestClient(app)


def test_pages_assets_and_api_paths(tmp_path: Path) -> None:
    client = _app(_build(tmp_path / "dashboard"))
    for path in ("/", "/jobs", "/jobs/12?tab=log", "/pipelines/3", "/settings"):
        page = client.get(path)
        assert page.status_code == 200 and "id=app" in page.text, path
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-cache"
    asset = client.get("/assets/index-abc123.js")
    assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
    assert client.get("/favicon.ico").content == b"ico"
    assert client.get("/api/v1/thing").json() == {"ok": "yes"}
    assert client.get("/api/v1/nothing").status_code == 404  # not the dashboard page
    assert client.get("/assets/missing.js").status_code == 404
    for escape in ("/../secret.txt", "/assets/../../secret.txt", "/%2e%2e/secret.txt"):
        assert "not to be served" not in client.get(escape).text, escape


def test_without_a_build_the_root_shows_the_api_docs(tmp_path: Path) -> None:
    client = _app(tmp_path / "nothing-built")
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/docs"


def test_the_real_app_serves_the_committed_build(api) -> None:  # type: ignore[no-untyped-def]
    page = api.get("/jobs/1", headers={"Authorization": ""})
    assert page.status_code == 200 and '<div id="app"></div>' in page.text
    script = next(p for p in page.text.split('"') if p.startswith("/assets/") and p.endswith(".js"))
    assert api.get(script).status_code == 200
    assert api.get("/openapi.json").json()["info"]["title"] == "training_platform"
