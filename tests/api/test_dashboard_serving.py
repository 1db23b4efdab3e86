"""The API serves the dashboard's build: its pages at every non-API path, its hashed assets,
never a file outside the build, and the API docs when no build is there. The API docs (/docs,
/redoc) load only files of this server, which come with the build (api/apidocs.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from training_platform.api import apidocs, dashboard


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


def _docs_app(build_dir: Path) -> TestClient:
    app = FastAPI(docs_url=None, redoc_url=None)
    apidocs.install(app, build_dir)
    dashboard.install(app, build_dir)
    return TestClient(app)


def _local_urls(html: str) -> list[str]:
    """Every src and href of a page, after checking that none leaves this server."""
    assert not re.search(r"https?:|//|cdn\.", html.lower()), html
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_the_api_docs_use_only_the_builds_vendor_files(tmp_path: Path) -> None:
    build = _build(tmp_path / "dashboard")
    (build / "vendor" / "pkg-1.0").mkdir(parents=True)
    names = {"swagger_ui_js": "ui.js", "swagger_ui_css": "ui.css", "favicon": "i.png"}
    for name in [*names.values(), "redoc.js"]:
        (build / "vendor" / "pkg-1.0" / name).write_text(name)
    manifest = {key: f"pkg-1.0/{name}" for key, name in {**names, "redoc_js": "redoc.js"}.items()}
    (build / "vendor" / "docs.json").write_text(json.dumps(manifest))
    client = _docs_app(build)
    swagger = client.get("/docs")
    assert swagger.status_code == 200 and "SwaggerUIBundle" in swagger.text
    assert set(_local_urls(swagger.text)) == {"/vendor/pkg-1.0/" + n for n in names.values()}
    # The inline set-up script is allowed by its hash; nothing but this server otherwise.
    policy = swagger.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in policy and "unsafe" not in policy.split("style-src")[0]
    redoc = client.get("/redoc")
    assert set(_local_urls(redoc.text)) == {"/vendor/pkg-1.0/redoc.js", "/vendor/pkg-1.0/i.png"}
    assert client.get("/docs/oauth2-redirect").status_code == 200
    asset = client.get("/vendor/pkg-1.0/ui.js")
    assert asset.text == "ui.js" and "immutable" in asset.headers["cache-control"]
    assert client.get("/vendor/pkg-1.0/missing.js").status_code == 404
    assert "not to be served" not in client.get("/vendor/../../secret.txt").text


def test_without_the_vendor_files_the_api_docs_say_how_to_get_them(tmp_path: Path) -> None:
    client = _docs_app(tmp_path / "nothing-built")
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 503 and "make frontend" in page.text, path
        assert "cdn." not in page.text


def test_the_real_apps_docs_load_the_committed_swagger_ui_and_redoc(api) -> None:  # type: ignore[no-untyped-def]
    for path, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = api.get(path, headers={"Authorization": ""})
        assert page.status_code == 200, path
        urls = _local_urls(page.text)
        assert any(url.endswith(script) for url in urls), (path, urls)
        for url in urls:
            asset = api.get(url, headers={"Authorization": ""})
            assert asset.status_code == 200 and asset.content, url
            assert "immutable" in asset.headers["cache-control"], url
