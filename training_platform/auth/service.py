"""API tokens: the admin token written at first start, and bearer-token checks."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from sqlmodel import Session, select

from training_platform.auth.models import ApiToken
from training_platform.core.errors import DomainError

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
