"""The API process's entry: `uvicorn --factory training_platform.api.server:create_app`.

Builds the app with Python's cyclic garbage collector paused. Importing the platform makes
some hundreds of thousands of objects and no garbage; the collections they trigger cost about
a tenth of the start. gc.freeze() then leaves what the start made out of later collections.
"""

from __future__ import annotations

import gc
from typing import Any


def create_app() -> Any:
    """training_platform.api.app.create_app, imported and called with the collector paused."""
    gc.disable()
    try:
        from training_platform.api.app import create_app as build

        return build()
    finally:
        gc.freeze()
        gc.enable()
