"""Domain errors. Services raise these; the API maps them to HTTP, the CLI to messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class DomainError(Exception):
    """Base of every error a user can cause or see."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    """The named thing does not exist."""

    status_code = 404


class Conflict(DomainError):
    """The request is valid but the current state forbids it (cancel a finished job...)."""

    status_code = 409


class InvalidInput(DomainError):
    """A field of the request is wrong; `loc` names it the way FastAPI's validation errors do."""

    status_code = 422

    def __init__(
        self,
        loc: Sequence[str | int],
        message: str,
        kind: str = "value_error",
        ctx: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.loc = tuple(loc)
        self.kind = kind
        self.ctx = ctx  # structured data a client can use (FastAPI's errors carry one too)


class Unavailable(DomainError):
    """A dependency (database, Redis, a host) cannot be reached right now."""

    status_code = 503


class Forbidden(DomainError):
    """The caller is known but their role (or permission) does not allow this."""

    status_code = 403
