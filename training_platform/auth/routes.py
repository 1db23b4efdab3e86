"""HTTP routes of API tokens: list, create (the secret is shown once), revoke."""

from __future__ import annotations

from fastapi import status

from training_platform.api.deps import CurrentToken, SessionDep, api_router, forget_tokens
from training_platform.auth import service
from training_platform.auth.models import ApiToken
from training_platform.auth.schemas import TokenCreate, TokenCreated, TokenPublic, TokensPublic

router = api_router("/tokens", tags=["tokens"])


def _public(record: ApiToken, current: ApiToken) -> TokenPublic:
    return TokenPublic(
        name=record.name,
        role=record.role,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
        current=record.id == current.id,
    )


@router.get("", response_model=TokensPublic)
def list_tokens(session: SessionDep, token: CurrentToken) -> TokensPublic:
    """Every token (revoked ones too), marking the one this request uses; never secrets."""
    return TokensPublic(items=[_public(t, token) for t in service.list_tokens(session=session)])


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: SessionDep, _: CurrentToken) -> TokenCreated:
    """Make a token; its secret is in this answer only (the platform keeps a hash)."""
    record, secret = service.create_token(session=session, name=body.name)
    session.commit()
    return TokenCreated(
        name=record.name, role=record.role, created_at=record.created_at, token=secret
    )


@router.post("/{name}/revoke", response_model=TokenPublic)
def revoke_token(name: str, session: SessionDep, token: CurrentToken) -> TokenPublic:
    """Revoke a token: every later request with it gets 401 (not the admin token, nor the
    token of this request)."""
    record = service.revoke_token(session=session, name=name, current=token)
    session.commit()
    forget_tokens()
    return _public(record, token)
