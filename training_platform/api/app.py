"""The FastAPI application factory (the API process starts it through api/server.py)."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from training_platform import __version__
from training_platform.api import apidocs, contexts, dashboard, errors, health
from training_platform.api.deps import API_PREFIX as API_PREFIX  # re-exported
from training_platform.bootstrap import bootstrap
from training_platform.core.logging import setup_logging
from training_platform.core.settings import Settings, get_settings
from training_platform.monitoring.hub import LiveHub
from training_platform.monitoring.prometheus import registry_for, timer

if TYPE_CHECKING:
    from training_platform.hosts.service import BootstrapRequests
    from training_platform.jobs.dispatch import Dispatcher

log = logging.getLogger(__name__)
COMPRESS_MIN_BYTES = 1024  # below this gzip saves less than it costs


class RequestTimer:
    """Observes each HTTP request's latency by method, route template and status.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware runs every request through an
    extra task and stream, which cost a sixth of a simple GET.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = timer()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            latency = getattr(scope["app"].state, "request_latency", None)
            if latency is not None:
                latency.labels(scope["method"], route, str(status[0])).observe(timer() - started)
            audited = scope.get("state", {}).get("audit")
            if audited is not None and status[0] < 400:
                await run_in_threadpool(_keep_audit, scope, audited, route, status[0])


def _keep_audit(scope: Scope, caller: tuple[str, str], route: str, status: int) -> None:
    """Write one audit event: who, which route, the path (without its query), the status."""
    from training_platform.auth.models import AuditEvent

    with Session(scope["app"].state.engine) as session:
        session.add(
            AuditEvent(
                user=caller[0],
                token=caller[1],
                method=scope["method"],
                route=route[:200],
                path=scope["path"][:1000],
                status=status,
            )
        )
        session.commit()


def compress(app: FastAPI) -> None:
    """gzip every answer of COMPRESS_MIN_BYTES or more to a client that accepts it: JSON and
    the dashboard's files. A streamed answer stays incremental (each chunk is flushed);
    Server-Sent Events, already compressed files and WebSockets pass untouched."""
    app.add_middleware(GZipMiddleware, minimum_size=COMPRESS_MIN_BYTES, compresslevel=6)


class _OnFirstUse:
    """An object built when first used: Celery and the task modules (with SSH, Ray and the
    runners behind them) load when the API first sends a message, not at every start."""

    def __init__(self, module: str, name: str) -> None:
        self._where = (module, name)
        self._target: Any = None

    def __getattr__(self, attribute: str) -> Any:
        if self._target is None:
            module, name = self._where
            self._target = getattr(importlib.import_module(module), name)()
        return getattr(self._target, attribute)


def create_app(
    settings: Settings | None = None,
    dispatcher: Dispatcher | None = None,
    bootstrap_requests: BootstrapRequests | None = None,
) -> FastAPI:
    """Build the app; the database is migrated and bootstrapped when it starts."""
    settings = settings or get_settings()
    if dispatcher is None:
        dispatcher = cast(
            "Dispatcher", _OnFirstUse("training_platform.jobs.tasks", "CeleryDispatcher")
        )
    if bootstrap_requests is None:
        bootstrap_requests = cast(
            "BootstrapRequests",
            _OnFirstUse("training_platform.hosts.tasks", "CeleryBootstrapRequests"),
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(settings.log_level)
        engine = await run_in_threadpool(bootstrap, settings)
        app.state.engine = engine

        def read_state(job_id: int) -> dict[str, Any] | None:
            from training_platform.monitoring import service as live_service

            with Session(engine) as session:
                return live_service.read_state(session=session, job_id=job_id)

        def read_changes(mark: Any) -> Any:
            from training_platform.monitoring import service as live_service

            with Session(engine) as session:
                return live_service.changes_since(session=session, mark=mark)

        hub = LiveHub(settings.broker_url, read_state, read_changes)
        await hub.start()
        app.state.live_hub = hub
        registry, latency = registry_for(engine, settings.broker_url, lambda: hub.clients)
        app.state.prometheus_registry, app.state.request_latency = registry, latency
        app.state.warm_up = asyncio.create_task(contexts.warm_up(app.router))
        log.info("API ready on %s", settings.resolved_api_url)
        yield
        app.state.warm_up.cancel()
        await hub.stop()
        serving_client = getattr(app.state, "serving_client", None)
        if serving_client is not None:  # made on the first request to a served model
            await serving_client.aclose()

    app = FastAPI(
        title="training_platform",
        version=__version__,
        description="Post-train LLMs with verl and TRL. Every route under /api/v1 needs "
        "`Authorization: Bearer <token>` (the admin token is in $TP_HOME/admin-token).",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc from this server's files, not a CDN: api/apidocs.py
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.dispatcher = dispatcher
    app.state.bootstrap_requests = bootstrap_requests
    errors.install(app)

    app.add_middleware(RequestTimer)
    compress(app)

    # Health first, then a stand-in for each context (api/contexts.py): the warm-up started
    # with the app puts their routes in place; the dashboard's catch-all last.
    app.router.routes.extend(health.router.routes)
    app.router.routes.extend(contexts.Context(spec) for spec in contexts.CONTEXTS)
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            contexts.load_all(app.router)
            errors.document_errors(build_openapi())
        return build_openapi()

    app.openapi = openapi  # type: ignore[method-assign]

    apidocs.install(app)
    dashboard.install(app)  # last: its catch-all route answers only what nothing else does
    return app
