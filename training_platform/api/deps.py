"""FastAPI dependencies: settings, database session, current token, dispatcher."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from training_platform.auth.service import Caller, authenticate, hash_token
from training_platform.core.errors import Forbidden
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
_checked: dict[str, tuple[float, Caller]] = {}


async def require_token(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Who calls (their token, user and role), or 401."""
    token = credentials.credentials if credentials is not None else None
    digest = hash_token(token) if token else ""
    now = time.monotonic()
    checked = _checked.get(digest)
    if checked is not None and checked[0] > now:
        return checked[1]
    caller = await run_in_threadpool(authenticate, session=session, token=token)
    if len(_checked) > 1000:
        _checked.clear()
    _checked[digest] = (now + TOKEN_CHECK_S, caller)
    return caller


def forget_tokens() -> None:
    """Check every token against the database again from now on (after a revocation or a
    change of a user)."""
    _checked.clear()


CurrentToken = Annotated[Caller, Depends(require_token)]

API_PREFIX = "/api/v1"
READS = frozenset({"GET", "HEAD", "OPTIONS"})


def allowed(role: str) -> Any:
    """A dependency: the caller, or 403 unless their role is `role` or above."""

    async def check(caller: CurrentToken) -> Caller:
        if not caller.at_least(role):
            raise Forbidden(f"this needs the {role} role; {caller.user!r} acts as {caller.role}")
        return caller

    return Depends(check)


def _access(read: str, write: str, audit: bool) -> Any:
    async def check(request: Request, caller: CurrentToken) -> Caller:
        write_request = request.method not in READS
        needed = write if write_request else read
        if not caller.at_least(needed):
            raise Forbidden(f"this needs the {needed} role; {caller.user!r} acts as {caller.role}")
        if write_request and audit:
            _audit(request, caller)
        return caller

    return Depends(check)


def _audit(request: Request, caller: Caller) -> None:
    """Mark the request for the audit trail: written once it has succeeded (api/app.py)."""
    request.state.audit = (caller.user, caller.name)


async def _code(request: Request, caller: CurrentToken) -> Caller:
    if not caller.can_run_code:
        raise Forbidden(
            "uploading code (reward files) needs the admin role or the code permission "
            f"(tp users update {caller.user} --code)"
        )
    _audit(request, caller)
    return caller


CodeCaller = Annotated[Caller, Depends(_code)]


def api_router(
    prefix: str = "",
    *,
    tags: list[str],
    authenticated: bool = True,
    read: str = "viewer",
    write: str = "member",
    audit: bool | None = None,
    scoped: Any = None,
) -> APIRouter:
    """A router whose routes are built once, with their final path under /api/v1 and the
    bearer token check: create_app adds them to the app as they are. (Including a router
    builds each of its routes again, dependencies and response model included: a fifth of
    the API's start.) Reads (GET) need the `read` role, every other method the `write` role;
    a successful write is kept in the audit trail when `audit` (by default: when it needs
    admin). `authenticated=False` for WebSockets, which check the token themselves. `scoped`
    (from project_scoped) hides the work of other projects behind its id in the path.
    """
    audited = write == "admin" if audit is None else audit
    dependencies = [_access(read, write, audited)] if authenticated else []
    if scoped is not None:
        dependencies.append(scoped)
    return APIRouter(prefix=API_PREFIX + prefix, tags=list(tags), dependencies=dependencies)


def project_scoped(
    param: str, what: str, project_of: Callable[[Session, Any], Any], by_id: bool = True
) -> Any:
    """A dependency for routes with `param` in their path: 404, as for what does not exist,
    when the caller cannot see the project that owns it (`project_of`: its project id, None
    where it has none or does not exist; the route then answers as it would). `param` is an
    id unless `by_id` is False (a name or an id: project_of gets the text)."""

    def check_in_thread(session: Session, caller: Caller, key: Any) -> None:
        from training_platform.projects.service import check_visible

        project_id = project_of(session, key)
        check_visible(session=session, caller=caller, project_id=project_id, what=f"{what} {key}")

    async def check(request: Request, session: SessionDep, caller: CurrentToken) -> None:
        raw = request.path_params.get(param)
        if raw is None or caller.at_least("admin"):
            return
        key: Any = raw
        if by_id:
            try:
                key = int(raw)
            except ValueError:
                return  # the route's own validation answers
            if not 1 <= key <= DB_INT_MAX:
                return
        await run_in_threadpool(check_in_thread, session, caller, key)

    return Depends(check)


async def get_dispatcher(request: Request) -> Dispatcher:
    """What sends start and cancel messages."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


# Integers in paths and queries: bounded by what the database holds, so a huge one is a 422
# naming the parameter rather than a driver error.
IdPath = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="An id (from 1).")]
OffsetQuery = Annotated[int, Query(ge=0, le=DB_INT_MAX, description="Rows to skip.")]
ByteOffsetQuery = Annotated[int, Query(ge=0, le=DB_BIGINT_MAX, description="A byte offset.")]
