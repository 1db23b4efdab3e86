"""The API documentation, /docs (Swagger UI) and /redoc (ReDoc), from this server alone.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net, their favicon from
fastapi.tiangolo.com and ReDoc's fonts from Google: without internet they stay blank. These are
the same pages (FastAPI's HTML) on files that come with the dashboard build: Vite copies them
from the pinned npm packages swagger-ui-dist and redoc into training_platform/dashboard/vendor/
(frontend/vite.config.ts), a folder per package version, and vendor/docs.json names them. They
are served at /vendor, cached like the dashboard's /assets. Without them (no dashboard build),
/docs and /redoc say so with a 503 rather than show a blank page or reach for a CDN.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

from training_platform.api.dashboard import BUILD_DIR, ImmutableStatic

VENDOR_URL = "/vendor"
DOCS_FILES = ("swagger_ui_js", "swagger_ui_css", "favicon", "redoc_js")
MISSING = (
    "<!doctype html><title>API documentation unavailable</title><p>The API documentation's "
    "files (Swagger UI, ReDoc) come with the dashboard build, which is missing here: run "
    "<code>make frontend</code>. The OpenAPI document itself is at "
    '<a href="{openapi_url}">{openapi_url}</a>.</p>'
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
log = logging.getLogger(__name__)


def content_security_policy(html: str) -> str:
    """Only this server: its files, and the page's own inline scripts (Swagger UI's set-up) by
    their hash. ReDoc injects its styles and runs its search in a worker made from a blob; the
    Redocly logo its sidebar loads from cdn.redoc.ly (hard-coded) is refused, never fetched,
    and ReDoc hides it."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


def _page(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = content_security_policy(
        bytes(response.body).decode()
    )
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _vendor_files(vendor: Path) -> dict[str, str] | None:
    """Each file's path under vendor/, from vendor/docs.json; None when one is missing."""
    try:
        named = json.loads((vendor / "docs.json").read_text())
        files = {key: str(named[key]) for key in DOCS_FILES}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    root = vendor.resolve()
    for path in files.values():
        file = (vendor / path).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            return None
    return files


def install(app: FastAPI, build_dir: Path = BUILD_DIR) -> None:
    """/docs, its OAuth2 redirect page and /redoc, for an app made with docs_url=None and
    redoc_url=None (FastAPI's own would load Swagger UI and ReDoc from a CDN)."""
    openapi_url = app.openapi_url
    if not openapi_url or app.docs_url or app.redoc_url:
        raise ValueError("make the app with docs_url=None and redoc_url=None, and an openapi_url")
    vendor = build_dir / "vendor"
    files = _vendor_files(vendor)
    if files is None:
        log.warning("no API docs files in %s (make frontend); /docs answers 503", vendor)

        @app.get("/docs", include_in_schema=False)
        @app.get("/redoc", include_in_schema=False)
        def no_docs(request: Request) -> HTMLResponse:
            url = request.scope.get("root_path", "").rstrip("/") + openapi_url
            return HTMLResponse(MISSING.format(openapi_url=url), status_code=503)

        return

    app.mount(VENDOR_URL, ImmutableStatic(directory=vendor), name="api-docs-files")
    redirect_url = app.swagger_ui_oauth2_redirect_url
    # Swagger UI's default validator badge would load an image from validator.swagger.io.
    parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

    def urls(request: Request) -> tuple[str, dict[str, str]]:
        root = request.scope.get("root_path", "").rstrip("/")
        return root, {key: f"{root}{VENDOR_URL}/{path}" for key, path in files.items()}

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root, url = urls(request)
        return _page(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=url["swagger_ui_js"],
                swagger_css_url=url["swagger_ui_css"],
                swagger_favicon_url=url["favicon"],
                oauth2_redirect_url=root + redirect_url if redirect_url else None,
                init_oauth=app.swagger_ui_init_oauth,
                swagger_ui_parameters=parameters,
            )
        )

    if redirect_url:

        @app.get(redirect_url, include_in_schema=False)
        def swagger_ui_oauth2_redirect() -> HTMLResponse:
            return _page(get_swagger_ui_oauth2_redirect_html())

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root, url = urls(request)
        return _page(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=url["redoc_js"],
                redoc_favicon_url=url["favicon"],
                with_google_fonts=False,
            )
        )
