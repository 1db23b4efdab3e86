"""Names of things jobs refer to: datasets, models, reward files."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(value: str) -> str:
    """Letters, digits, '.', '_' and '-', not all digits (an all-digit name reads as an id)."""
    if not _NAME.match(value):
        raise ValueError(
            "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if value.isdigit():
        raise ValueError("must not be all digits (that reads as an id)")
    return value


CatalogName = Annotated[str, AfterValidator(check_name)]
