"""FastAPI dependencies: settings, database session, current token, dispatcher."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from training_platform.auth.models import ApiToken
from training_platform.auth.service import authenticate, hash_token
from training_platform.core.settings import Settings
from training_platform.core.types import DB_BIGINT_MAX, DB_INT_MAX
from training_platform.jobs.dispatch import Dispatcher

_bearer = HTTPBearer(auto_error=False, description="The API token from $TP_HOME/admin-token.")


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    """The app's database engine."""
    engine: Engine = request.app.state.engine
    return engine


async def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> AsyncIterator[Session]:
    """A session per request; routes commit explicitly.

    Made on the event loop (no I/O happens until the route uses it, in its thread): a sync
    dependency would cost a hop to the thread pool on the way in and another on the way out.
    """
    with Session(engine, expire_on_commit=False) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]


# Tokens checked in the last TOKEN_CHECK_S, by hash: a client's requests in a burst cost one
# lookup. A revocation through this process forgets them at once (forget_tokens); another
# API process sees it within TOKEN_CHECK_S.
TOKEN_CHECK_S = 2.0
_checked: dict[str, tuple[float, ApiToken]] = {}


async def require_token(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
    """The caller's token, or 401."""
    token = credentials.credentials if credentials is not None else None
    digest = hash_token(token) if token else ""
    now = time.monotonic()
    checked = _checked.get(digest)
    if checked is not None and checked[0] > now:
        return checked[1]
    record = await run_in_threadpool(authenticate, session=session, token=token)
    if len(_checked) > 1000:
        _checked.clear()
    # A copy bound to no session, without the hash: only id, name and role are read.
    copy = ApiToken(id=record.id, name=record.name, role=record.role, token_hash="")
    _checked[digest] = (now + TOKEN_CHECK_S, copy)
    return record


def forget_tokens() -> None:
    """Check every token against the database again from now on (after a revocation)."""
    _checked.clear()


CurrentToken = Annotated[ApiToken, Depends(require_token)]

API_PREFIX = "/api/v1"


def api_router(prefix: str = "", *, tags: list[str], authenticated: bool = True) -> APIRouter:
    """A router whose routes are built once, with their final path under /api/v1 and the
    bearer token check: create_app adds them to the app as they are. (Including a router
    builds each of its routes again, dependencies and response model included: a fifth of
    the API's start.) `authenticated=False` for WebSockets, which check the token themselves.
    """
    dependencies = [Depends(require_token)] if authenticated else []
    return APIRouter(prefix=API_PREFIX + prefix, tags=list(tags), dependencies=dependencies)


async def get_dispatcher(request: Request) -> Dispatcher:
    """What sends start and cancel messages."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


# Integers in paths and queries: bounded by what the database holds, so a huge one is a 422
# naming the parameter rather than a driver error.
IdPath = Annotated[int, Path(le=DB_INT_MAX)]
OffsetQuery = Annotated[int, Query(ge=0, le=DB_INT_MAX, description="Rows to skip.")]
ByteOffsetQuery = Annotated[int, Query(ge=0, le=DB_BIGINT_MAX, description="A byte offset.")]
