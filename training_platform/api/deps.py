"""FastAPI dependencies: settings, database session, current token, dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from training_platform.auth.models import ApiToken
from training_platform.auth.service import authenticate
from training_platform.core.settings import Settings
from training_platform.jobs.service import Dispatcher

_bearer = HTTPBearer(auto_error=False, description="The API token from $TP_HOME/admin-token.")


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    """The app's database engine."""
    engine: Engine = request.app.state.engine
    return engine


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    """A session per request; routes commit explicitly."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def require_token(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
    """The caller's token, or 401."""
    token = credentials.credentials if credentials is not None else None
    return authenticate(session=session, token=token)


CurrentToken = Annotated[ApiToken, Depends(require_token)]


def get_dispatcher(request: Request) -> Dispatcher:
    """What sends start and cancel messages."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
