"""The web dashboard: the production build of frontend/ (training_platform/dashboard/), served
by the API itself so that `make up` needs no separate frontend server.

Hashed files under /assets are served as they are (cached for a year: their names change with
their content); every other path that is not the API's gets index.html, so that the
dashboard's own routes (/jobs/12?tab=log) survive a reload. Only files that are in the build
are ever read: a request path is never joined onto the file system.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

BUILD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
# The dashboard loads only its own files and talks only to this API (HTTP and WebSocket);
# nothing may frame it. Vue and ECharts set styles from script, hence 'unsafe-inline' for
# styles only.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The API's own paths (vendor/: the API docs' files, api/apidocs.py).
NOT_PAGES = (
    "api/",
    "docs",
    "redoc",
    "openapi.json",
    "metrics",
    "healthz",
    "readyz",
    "assets/",
    "vendor/",
)
log = logging.getLogger(__name__)


class ImmutableStatic(StaticFiles):
    async def get_response(self, path: str, scope: dict) -> Response:  # type: ignore[override,type-arg]
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def install(app: FastAPI, build_dir: Path = BUILD_DIR) -> None:
    """Serve the dashboard at /, or redirect / to the API docs when there is no build."""
    index = build_dir / "index.html"
    if not index.is_file():
        log.warning("no dashboard build in %s (make frontend); / shows the API docs", build_dir)

        @app.get("/", include_in_schema=False)
        def no_dashboard() -> RedirectResponse:
            return RedirectResponse("/docs")

        return

    app.mount("/assets", ImmutableStatic(directory=build_dir / "assets"), name="dashboard-assets")
    # Top-level files of the build (index.html, a favicon): a fixed set, read at start.
    files = {p.name: p for p in build_dir.iterdir() if p.is_file()}

    @app.get("/{path:path}", include_in_schema=False)
    def page(path: str) -> FileResponse:
        if path.startswith(NOT_PAGES):
            raise HTTPException(status_code=404, detail="Not Found")
        if path in files:
            return FileResponse(files[path], headers=PAGE_HEADERS)
        return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)
