"""Request and response shapes of the tokens API. No response carries a hash; the secret is
shown once, in the answer that creates it."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Names appear in URLs (/tokens/{name}/revoke) and in actors (token:<name>): no spaces,
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

    model_config = ConfigDict(extra="forbid")

    name: TokenName


class TokenPublic(BaseModel):
    """A token as clients see it: never its secret or hash."""

    name: str
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
    role: str
    created_at: datetime
    token: str
