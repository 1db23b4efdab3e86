"""Request and response shapes of the users and tokens API. No response carries a hash; a
token's secret is shown once, in the answer that creates it."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Role = Literal["viewer", "member", "admin"]

# Names appear in URLs (/tokens/{name}/revoke) and in actors (<user> (token <name>)): no spaces,
# slashes or dot segments.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            "use letters, digits, '.', '_' and '-' only, starting with a letter or digit"
        )
    return value


TokenName = Annotated[str, Field(min_length=1, max_length=63), AfterValidator(_check_name)]


class TokenCreate(BaseModel):
    """A new API token, by name."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "ci", "role": "member"}]}
    )

    name: TokenName = Field(description="Unique among every token, revoked ones included.")
    user: TokenName | None = Field(
        None, description="Whose token (default: the caller's own; another's for an admin)."
    )
    role: Role | None = Field(
        None, description="What the token may do, at most its user's role (default: that)."
    )


class TokenPublic(BaseModel):
    """A token as clients see it: never its secret or hash."""

    name: str
    user: str | None
    role: str
    created_at: datetime
    revoked_at: datetime | None
    current: bool = Field(False, description="The token this request authenticated with.")


class TokensPublic(BaseModel):
    """Every token, revoked ones included."""

    items: list[TokenPublic]


class TokenCreated(BaseModel):
    """A token just made: `token` is its secret, shown this once and never again."""

    name: str
    user: str | None
    role: str
    created_at: datetime
    token: str


class UserCreate(BaseModel):
    """A new user; give them a token with POST /tokens {name, user}."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "alice", "role": "member", "can_run_code": False}]
        },
    )

    name: TokenName = Field(
        description="Unique; 1-63 letters, digits, '.', '_' or '-', starting with a letter or "
        "digit."
    )
    role: Role = Field("member", description="viewer reads; member also works; admin also manages.")
    can_run_code: bool = Field(
        False, description="May upload reward files (code run by trainings)."
    )


class UserUpdate(BaseModel):
    """What to change of a user; fields left out stay."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"role": "viewer"}, {"disabled": True}]}
    )

    role: Role | None = Field(
        None, description="viewer reads; member also works; admin also manages."
    )
    can_run_code: bool | None = Field(
        None, description="May upload reward files (code run by trainings)."
    )
    disabled: bool | None = Field(
        None, description="true: the user's tokens get 401; false: enabled again."
    )


class UserPublic(BaseModel):
    """A user as the API shows them."""

    name: str
    role: str
    can_run_code: bool
    created_at: datetime
    disabled_at: datetime | None


class UsersPublic(BaseModel):
    """Every user, disabled ones included."""

    items: list[UserPublic]


class Me(BaseModel):
    """Who this request comes from, and what they may do."""

    user: str
    token: str
    role: str = Field(description="The role this token acts with: the lower of its and its user's.")
    can_run_code: bool


class AuditEventPublic(BaseModel):
    """One action kept in the audit trail."""

    model_config = ConfigDict(from_attributes=True)

    at: datetime
    user: str
    token: str
    method: str
    route: str
    path: str
    status: int


class AuditPublic(BaseModel):
    """A page of the audit trail, newest first."""

    model_config = ConfigDict(from_attributes=True)

    items: list[AuditEventPublic]
    total: int
