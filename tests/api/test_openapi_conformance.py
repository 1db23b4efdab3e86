"""The API against its own OpenAPI document, with schemathesis (bounded, derandomized).

Every operation is called with requests generated from the document, valid ones and invalid
ones, as an admin: no answer may be a server error, and every status must be one the document
lists for that operation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

EXAMPLES = 3  # per operation and mode: ~750 calls


@pytest.fixture
def served(sqlite_settings) -> Iterator[tuple[object, str]]:  # type: ignore[no-untyped-def]
    from training_platform.api.app import create_app

    app = create_app(sqlite_settings)
    with TestClient(app):  # started: migrated, bootstrapped, the admin token written
        yield app, sqlite_settings.admin_token_file.read_text().strip()


class Findings:
    """What the generated calls found."""

    def __init__(self) -> None:
        self.calls = 0
        self.server_errors: set[str] = set()
        self.undocumented: set[str] = set()


def _run(operation, mode: GenerationMode, token: str, found: Findings) -> None:  # type: ignore[no-untyped-def]
    documented = set(operation.definition.raw["responses"])
    where = f"{operation.method.upper()} {operation.path} ({mode.value})"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def call(case) -> None:  # type: ignore[no-untyped-def]
        found.calls += 1
        answer = case.call(headers={"Authorization": f"Bearer {token}"})
        if answer.status_code >= 500:
            found.server_errors.add(f"{where}: {answer.status_code} {answer.text[:160]}")
        elif str(answer.status_code) not in documented:
            found.undocumented.add(f"{where}: {answer.status_code} {answer.text[:160]}")

    call()


def test_no_server_error_and_no_undocumented_status(served: tuple[object, str]) -> None:
    app, token = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    found = Findings()
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/api/v1/"):
            continue  # /healthz, /readyz, /metrics: nothing to generate
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(operation, mode, token, found)
    print(f"schemathesis: {found.calls} calls in {time.monotonic() - started:.0f} s")
    assert found.calls > 400
    assert not found.server_errors, "\n".join(sorted(found.server_errors))
    assert not found.undocumented, "\n".join(sorted(found.undocumented))


def test_every_operation_documents_the_errors_it_may_answer(served: tuple[object, str]) -> None:
    app, _ = served
    document = app.openapi()  # type: ignore[attr-defined]
    for path, operations in document["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"401", "403", "404", "503"} <= set(responses), (method, path)
            if method != "get":
                assert "409" in responses, (method, path)
