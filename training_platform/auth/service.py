"""API tokens: the admin token written at first start, bearer-token checks, and the tokens
users make and revoke. Functions flush; the caller commits."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from training_platform.auth.models import ApiToken
from training_platform.core.errors import Conflict, DomainError, NotFound
from training_platform.core.types import utcnow

ADMIN_TOKEN_NAME = "admin"  # noqa: S105  (a name, not a secret)


class Unauthorized(DomainError):
    """Missing or wrong credentials."""

    status_code = 401


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _write_private(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(content + "\n")
    temporary.replace(path)


def ensure_admin_token(*, session: Session, token_file: Path) -> None:
    """Create the admin token at first start; re-register the file's token for a new database."""
    if token_file.exists():
        token = token_file.read_text().strip()
        if token_file.stat().st_mode & 0o077:
            token_file.chmod(0o600)
    else:
        token = secrets.token_urlsafe(32)
        _write_private(token_file, token)
    digest = hash_token(token)
    existing = session.exec(select(ApiToken).where(ApiToken.name == ADMIN_TOKEN_NAME)).first()
    if existing is None:
        session.add(ApiToken(name=ADMIN_TOKEN_NAME, token_hash=digest, role="admin"))
    elif not hmac.compare_digest(existing.token_hash, digest):
        # The file is the operator's copy; whoever can replace it owns the platform anyway.
        existing.token_hash = digest
        existing.revoked_at = None
        session.add(existing)
    session.flush()


def authenticate(*, session: Session, token: str | None) -> ApiToken:
    """The token's record, or Unauthorized."""
    if not token:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    record = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if record is None or record.revoked_at is not None:
        raise Unauthorized("invalid or revoked token")
    return record


def list_tokens(*, session: Session) -> Sequence[ApiToken]:
    """Every token, revoked ones included, oldest first."""
    return session.exec(select(ApiToken).order_by(col(ApiToken.id))).all()


def get_token(*, session: Session, name: str) -> ApiToken:
    """A token by name, or NotFound."""
    record = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if record is None:
        raise NotFound(f"token {name!r} not found")
    return record


def create_token(*, session: Session, name: str) -> tuple[ApiToken, str]:
    """A new token and its secret; only the hash is stored, so the secret is returned once."""
    taken = f"a token named {name!r} exists already (revoked tokens keep their names)"
    if session.exec(select(ApiToken).where(ApiToken.name == name)).first() is not None:
        raise Conflict(taken)
    secret = secrets.token_urlsafe(32)
    record = ApiToken(name=name, token_hash=hash_token(secret))
    session.add(record)
    try:
        session.flush()
    except IntegrityError:  # another request took the name meanwhile
        session.rollback()
        raise Conflict(taken) from None
    return record, secret


def revoke_token(*, session: Session, name: str, current: ApiToken) -> ApiToken:
    """Revoke a token by name: every later request with it gets 401. Revoking twice is a no-op.

    Refused for the admin token (re-registered from its file at every start) and for the
    token the request itself authenticates with.
    """
    record = get_token(session=session, name=name)
    if record.name == ADMIN_TOKEN_NAME:
        raise Conflict(
            "the admin token cannot be revoked: it is re-registered from $TP_HOME/admin-token "
            "at every start; to rotate it, replace that file and restart the platform"
        )
    if record.id == current.id:
        raise Conflict(f"token {name!r} is the one this request uses; revoke it with another token")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        session.add(record)
        session.flush()
    return record
