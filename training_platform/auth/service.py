"""Users and their API tokens: the admin user and token made at first start, bearer-token
checks (who calls, with which role), the users an admin manages and the tokens users make and
revoke. Functions flush; the caller commits."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from training_platform.auth.models import ROLES, ApiToken, AuditEvent, User, rank
from training_platform.core.db import add_unique
from training_platform.core.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from training_platform.core.types import utcnow

ADMIN_TOKEN_NAME = "admin"  # noqa: S105  (a name, not a secret)
ADMIN_USER = "admin"


class Unauthorized(DomainError):
    """Missing or wrong credentials."""

    status_code = 401


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: its token (id, name), its user and the role it acts with
    (the lower of the token's and the user's)."""

    id: int
    name: str
    user: str
    user_id: int | None
    role: str
    can_run_code: bool

    @property
    def actor(self) -> str:
        """How events name who acted: the user, and the token they used."""
        return f"{self.user} (token {self.name})"

    def at_least(self, role: str) -> bool:
        """Whether the caller's role is `role` or above."""
        return rank(self.role) >= rank(role)


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
    admin = session.exec(select(User).where(User.name == ADMIN_USER)).first()
    if admin is None:
        admin = User(name=ADMIN_USER, role="admin", can_run_code=True)
        session.add(admin)
        session.flush()
    elif admin.role != "admin" or admin.disabled_at is not None:
        # The operator's own account: whoever holds the token file owns the platform anyway.
        admin.role, admin.disabled_at = "admin", None
        session.add(admin)
    existing = session.exec(select(ApiToken).where(ApiToken.name == ADMIN_TOKEN_NAME)).first()
    if existing is None:
        session.add(
            ApiToken(name=ADMIN_TOKEN_NAME, token_hash=digest, role="admin", user_id=admin.id)
        )
    elif not hmac.compare_digest(existing.token_hash, digest) or existing.user_id != admin.id:
        # The file is the operator's copy; whoever can replace it owns the platform anyway.
        existing.token_hash = digest
        existing.revoked_at = None
        existing.role = "admin"
        existing.user_id = admin.id
        session.add(existing)
    session.flush()


def authenticate(*, session: Session, token: str | None) -> Caller:
    """Who calls with this token, or Unauthorized (unknown, revoked, or its user disabled)."""
    if not token:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    record = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
    if record is None or record.revoked_at is not None:
        raise Unauthorized("invalid or revoked token")
    user = session.get(User, record.user_id) if record.user_id is not None else None
    if user is not None and user.disabled_at is not None:
        raise Unauthorized(f"user {user.name!r} is disabled")
    role = record.role
    if user is not None and rank(user.role) < rank(role):
        role = user.role
    assert record.id is not None
    return Caller(
        id=record.id,
        name=record.name,
        user=user.name if user is not None else record.name,
        user_id=record.user_id,
        role=role,
        can_run_code=role == "admin" or bool(user is not None and user.can_run_code),
    )


def list_tokens(*, session: Session, caller: Caller) -> Sequence[ApiToken]:
    """The tokens the caller may see (an admin every one, others their own), revoked ones
    included, oldest first."""
    query = select(ApiToken).order_by(col(ApiToken.id))
    if not caller.at_least("admin"):
        query = query.where(ApiToken.user_id == caller.user_id)
    return session.exec(query).all()


def get_token(*, session: Session, name: str) -> ApiToken:
    """A token by name, or NotFound."""
    record = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if record is None:
        raise NotFound(f"token {name!r} not found")
    return record


def create_token(
    *,
    session: Session,
    name: str,
    caller: Caller,
    user: str | None = None,
    role: str | None = None,
) -> tuple[ApiToken, str]:
    """A new token of `user` (default: the caller; another user's only for an admin) with
    at most that user's role; its secret is returned once (only the hash is stored)."""
    owner = get_user(session=session, name=user or caller.user)
    if owner.name != caller.user and not caller.at_least("admin"):
        raise Forbidden("only an admin makes tokens for other users")
    if owner.disabled_at is not None:
        raise Conflict(f"user {owner.name!r} is disabled")
    role = role or owner.role
    if rank(role) > rank(owner.role) or (
        owner.name == caller.user and rank(role) > rank(caller.role)
    ):
        raise InvalidInput(("body", "role"), f"a token's role is at most its user's ({owner.role})")
    taken = f"a token named {name!r} exists already (revoked tokens keep their names)"
    if session.exec(select(ApiToken).where(ApiToken.name == name)).first() is not None:
        raise Conflict(taken)
    secret = secrets.token_urlsafe(32)
    record = ApiToken(name=name, token_hash=hash_token(secret), role=role, user_id=owner.id)
    return add_unique(session, record, taken), secret  # another request may take the name


def revoke_token(*, session: Session, name: str, current: Caller) -> ApiToken:
    """Revoke a token by name: every later request with it gets 401. Revoking twice is a no-op.

    An admin revokes any token, others their own user's. Refused for the admin token
    (re-registered from its file at every start) and for the token the request itself
    authenticates with.
    """
    record = get_token(session=session, name=name)
    if record.user_id != current.user_id and not current.at_least("admin"):
        raise NotFound(f"token {name!r} not found")
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


# --- users ------------------------------------------------------------------------------------


def list_users(*, session: Session) -> Sequence[User]:
    """Every user, disabled ones included, oldest first."""
    return session.exec(select(User).order_by(col(User.id))).all()


def get_user(*, session: Session, name: str) -> User:
    """A user by name, or NotFound."""
    user = session.exec(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFound(f"user {name!r} not found")
    return user


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(("body", "role"), f"must be one of {', '.join(ROLES)}")


def create_user(*, session: Session, name: str, role: str, can_run_code: bool) -> User:
    """A new user (no token yet: make one with create_token(user=name))."""
    _check_role(role)
    if session.exec(select(User).where(User.name == name)).first() is not None:
        raise Conflict(f"a user named {name!r} exists already")
    user = User(name=name, role=role, can_run_code=can_run_code)
    return add_unique(session, user, f"a user named {name!r} exists already")


def update_user(
    *,
    session: Session,
    name: str,
    caller: Caller,
    role: str | None = None,
    can_run_code: bool | None = None,
    disabled: bool | None = None,
) -> User:
    """Change a user's role, code permission or whether they may sign in (takes effect on
    their next request). The admin user and the caller's own account keep their admin role."""
    user = get_user(session=session, name=name)
    if role is not None:
        _check_role(role)
    protected = user.name in (ADMIN_USER, caller.user)
    if protected and ((role is not None and role != "admin") or disabled):
        whose = (
            "the platform's own account"
            if user.name == ADMIN_USER
            else "your own account (another admin may change it)"
        )
        raise Conflict(f"user {name!r} stays an enabled admin: {whose}")
    if role is not None:
        user.role = role
    if can_run_code is not None:
        user.can_run_code = can_run_code
    if disabled is not None:
        user.disabled_at = utcnow() if disabled else None
    session.add(user)
    session.flush()
    return user


def audit_events(
    *, session: Session, user: str | None, limit: int, offset: int
) -> tuple[Sequence[AuditEvent], int]:
    """A page of the audit trail, newest first, and how many events match."""
    query = select(AuditEvent)
    counted = select(func.count()).select_from(AuditEvent)
    if user is not None:
        query = query.where(AuditEvent.user == user)
        counted = counted.where(AuditEvent.user == user)
    events = session.exec(
        query.order_by(col(AuditEvent.id).desc()).offset(offset).limit(limit)
    ).all()
    return events, int(session.exec(counted).one())
