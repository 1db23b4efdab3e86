"""HTTP routes of users and API tokens.

Tokens: every user lists, makes and revokes their own (an admin anyone's); a secret is shown
once. Users: who exists, with which role; admins manage them; GET /users/me answers anyone.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, status

from training_platform.api.deps import (
    CurrentToken,
    OffsetQuery,
    SessionDep,
    allowed,
    api_router,
    forget_tokens,
)
from training_platform.auth import service
from training_platform.auth.models import ApiToken, User
from training_platform.auth.schemas import (
    AuditPublic,
    Me,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    TokensPublic,
    UserCreate,
    UserPublic,
    UsersPublic,
    UserUpdate,
)
from training_platform.auth.service import Caller

router = api_router("/tokens", tags=["tokens"], write="viewer", audit=True)
users_router = api_router("/users", tags=["users"], write="admin")
audit_router = api_router("/audit", tags=["users"], read="admin", write="admin")


def _owners(session: SessionDep) -> dict[int | None, str]:
    return {user.id: user.name for user in service.list_users(session=session)}


def _public(record: ApiToken, current: Caller, owners: dict[int | None, str]) -> TokenPublic:
    return TokenPublic(
        name=record.name,
        user=owners.get(record.user_id),
        role=record.role,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
        current=record.id == current.id,
    )


@router.get("", response_model=TokensPublic)
def list_tokens(session: SessionDep, token: CurrentToken) -> TokensPublic:
    """The caller's tokens (an admin's: every token), revoked ones too, marking the one this
    request uses; never secrets."""
    owners = _owners(session)
    return TokensPublic(
        items=[
            _public(t, token, owners) for t in service.list_tokens(session=session, caller=token)
        ]
    )


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: SessionDep, token: CurrentToken) -> TokenCreated:
    """Make a token (the caller's own, or, for an admin, another user's); its secret is in this
    answer only (the platform keeps a hash)."""
    record, secret = service.create_token(
        session=session, name=body.name, caller=token, user=body.user, role=body.role
    )
    session.commit()
    return TokenCreated(
        name=record.name,
        user=_owners(session).get(record.user_id),
        role=record.role,
        created_at=record.created_at,
        token=secret,
    )


@router.post("/{name}/revoke", response_model=TokenPublic)
def revoke_token(name: str, session: SessionDep, token: CurrentToken) -> TokenPublic:
    """Revoke a token: every later request with it gets 401 (not the admin token, nor the
    token of this request; others' tokens for an admin only)."""
    record = service.revoke_token(session=session, name=name, current=token)
    session.commit()
    forget_tokens()
    return _public(record, token, _owners(session))


def _user(user: User) -> UserPublic:
    return UserPublic.model_validate(user, from_attributes=True)


@users_router.get("/me", response_model=Me)
def me(token: CurrentToken) -> Me:
    """Who this request comes from, with the role it acts with (the dashboard shows what that
    role may do)."""
    return Me(user=token.user, token=token.name, role=token.role, can_run_code=token.can_run_code)


@users_router.get("", response_model=UsersPublic, dependencies=[allowed("admin")])
def list_users(session: SessionDep) -> UsersPublic:
    """Every user (admin)."""
    return UsersPublic(items=[_user(u) for u in service.list_users(session=session)])


@users_router.post("", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep) -> UserPublic:
    """Add a user (admin); then make their token with POST /tokens {name, user}."""
    user = service.create_user(
        session=session, name=body.name, role=body.role, can_run_code=body.can_run_code
    )
    session.commit()
    return _user(user)


@users_router.patch("/{name}", response_model=UserPublic)
def update_user(
    name: str, body: UserUpdate, session: SessionDep, token: CurrentToken
) -> UserPublic:
    """Change a user's role, code permission, or disable them (admin); takes effect on their
    next request."""
    user = service.update_user(
        session=session,
        name=name,
        caller=token,
        role=body.role,
        can_run_code=body.can_run_code,
        disabled=body.disabled,
    )
    session.commit()
    forget_tokens()
    return _user(user)


@audit_router.get("", response_model=AuditPublic)
def audit_trail(
    session: SessionDep,
    user: Annotated[str | None, Query(max_length=63, description="Only this user's.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: OffsetQuery = 0,
) -> AuditPublic:
    """Who did what among the actions that need admin (users, tokens, hosts, secrets,
    webhooks) or the code permission (reward files), newest first (admin)."""
    events, total = service.audit_events(session=session, user=user, limit=limit, offset=offset)
    return AuditPublic.model_validate({"items": events, "total": total}, from_attributes=True)
