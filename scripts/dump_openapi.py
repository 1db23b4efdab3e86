"""Print the API's OpenAPI document (JSON) without starting it: the dashboard's client is
generated from this (`make frontend-api`), and a test fails when the generated file is stale."""

from __future__ import annotations

import json
import sys

from training_platform.api.app import create_app
from training_platform.core.settings import Settings


def main() -> None:
    app = create_app(Settings(home="/nonexistent-tp-home-for-openapi"))
    json.dump(app.openapi(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
