"""The contexts' routes, loaded after the API is ready rather than before.

Importing a context's routes builds its models, schemas and routes (some 140 routes in all:
most of the API's start). The app starts with one `Context` route per context in their
place; right after start a warm-up task imports them one by one, off the event loop, and
puts each context's real routes where its stand-in was. A request that comes first for a
context not loaded yet loads it itself and is then routed as usual, so every request gets
the same answer whether the warm-up has reached its context or not.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath
from starlette.routing import BaseRoute, Match, NoMatchFound, Router
from starlette.types import Receive, Scope, Send

from training_platform.api.deps import API_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spec:
    """A module of routes, the routers in it (in matching order) and the paths they serve."""

    module: str
    routers: tuple[str, ...]
    prefixes: tuple[str, ...]


def _api(*names: str) -> tuple[str, ...]:
    return tuple(f"{API_PREFIX}/{name}" for name in names)


# In matching order. Where two contexts serve one prefix (/api/v1/jobs), the first loaded
# and the next stand-in both match a request, so all of them load before it is answered.
# tests/api/test_contexts.py checks that every route lies under its context's prefixes.
CONTEXTS: tuple[Spec, ...] = (
    Spec("training_platform.jobs.routes", ("router",), _api("jobs")),
    Spec(
        "training_platform.pipelines.routes",
        ("lineage_router", "router"),
        _api("jobs", "pipelines"),
    ),
    Spec("training_platform.catalog.routes", ("router",), _api("models", "rewards")),
    Spec("training_platform.surgery.routes", ("models_router", "router"), _api("models", "merges")),
    Spec("training_platform.datasets.routes", ("router",), _api("datasets")),
    Spec("training_platform.compute.routes", ("router",), _api("compute")),
    Spec("training_platform.evaluation.routes", ("router",), _api("evaluations")),
    Spec(
        "training_platform.serving.routes",
        ("router", "endpoints_router"),
        _api("serving", "endpoints"),
    ),
    Spec("training_platform.scheduling.routes", ("router",), _api("gpus")),
    Spec("training_platform.projects.routes", ("router",), _api("projects")),
    Spec("training_platform.backends.routes", ("router",), _api("backends")),
    Spec("training_platform.hosts.routes", ("router", "secrets_router"), _api("hosts", "secrets")),
    Spec(
        "training_platform.monitoring.routes",
        (
            "alerts_router",
            "webhooks_router",
            "telemetry_router",
            "queues_router",
            "flower_router",
            "alert_rules_router",
            "router",
            "metrics_router",
        ),
        (
            *_api("alerts", "webhooks", "jobs", "queues", "flower", "alert-rules", "ws"),
            "/metrics",
        ),
    ),
    Spec(
        "training_platform.auth.routes",
        ("router", "users_router", "audit_router"),
        _api("tokens", "users", "audit"),
    ),
)


class Context(BaseRoute):
    """Stands in for a context's routes until they are loaded: matches the paths they serve."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(self.spec.prefixes):
            return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        router: Router = scope["app"].router
        await load(router, self)
        await router.app(scope, receive, send)  # routed again, over the real routes

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)


# One context is built at a time: FastAPI's route building is not safe in two threads at once
# (routes sharing an Annotated parameter, IdPath, saw each other's alias), and the warm-up and
# a request may both be loading.
_building = threading.Lock()


def _routes(spec: Spec) -> list[BaseRoute]:
    with _building:
        module = importlib.import_module(spec.module)
    return [route for name in spec.routers for route in getattr(module, name).routes]


def _put(router: Router, stand_in: Context, routes: list[BaseRoute]) -> None:
    """Replace the stand-in by its routes (on the event loop's thread, where routing runs, so
    a request is never matched against a list half-changed)."""
    try:
        index = router.routes.index(stand_in)
    except ValueError:  # another request or the warm-up got there first
        return
    router.routes[index : index + 1] = routes


async def load(router: Router, stand_in: Context) -> None:
    """Import a context off the event loop and put its routes in place."""
    routes = await run_in_threadpool(_routes, stand_in.spec)
    _put(router, stand_in, routes)


def stand_ins(router: Router) -> list[Context]:
    return [route for route in router.routes if isinstance(route, Context)]


def load_all(router: Router) -> None:
    """Load every context now, in this thread (the OpenAPI schema and tests need them all)."""
    for stand_in in stand_ins(router):
        _put(router, stand_in, _routes(stand_in.spec))


async def warm_up(router: Router) -> None:
    """Load the contexts one after another, right after start."""
    for stand_in in stand_ins(router):
        try:
            await load(router, stand_in)
        except Exception:  # a broken context fails its own requests, not the others
            log.exception("loading the routes of %s failed", stand_in.spec.module)
