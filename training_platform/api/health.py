"""Liveness and readiness probes; the only routes without a token."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from training_platform.api.deps import SettingsDep
from training_platform.core.db import check_database, get_engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {"description": "The database or Redis does not answer (`checks` says which)."}
    },
)
def readyz(settings: SettingsDep) -> JSONResponse:
    """The database and Redis answer."""
    checks: dict[str, str] = {}
    try:
        check_database(get_engine(settings))
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"error: {type(error).__name__}"
    try:
        client = redis.Redis.from_url(settings.broker_url, socket_timeout=2)
        client.ping()
        checks["redis"] = "ok"
    except redis.RedisError as error:
        checks["redis"] = f"error: {type(error).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
