"""Numbers and names a database or resolver cannot take are a 422 naming the field, never a 500.

Defect: every integer in a path or query >= 2**63 answered 500 (OverflowError in the SQLite
driver), and POST /hosts/host-key with address ".." answered 500 (UnicodeError in the resolver).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from training_platform.core.types import DB_BIGINT_MAX, DB_INT_MAX

# JSON Schema may give a bound as a float: 2**63 - 1 rounds to 2**63.
UNBOUNDED = float(DB_BIGINT_MAX) * 2


def _integer_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    for candidate in (schema, *schema.get("anyOf", ()), schema.get("items") or {}):
        if candidate.get("type") == "integer":
            return candidate
    return None


def _integer_parameters(spec: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(method, path, where, name, maximum) of every integer path and query parameter."""
    found = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", ()):
                integer = _integer_schema(parameter["schema"])
                if parameter["in"] in ("path", "query") and integer is not None:
                    maximum = integer.get("maximum", UNBOUNDED)
                    found.append((method, path, parameter["in"], parameter["name"], maximum))
    return found


def _request_bodies(spec: dict[str, Any]) -> list[str]:
    names = []
    for operations in spec["paths"].values():
        for operation in operations.values():
            for content in operation.get("requestBody", {}).get("content", {}).values():
                ref = content["schema"].get("$ref", "")
                if ref:
                    names.append(ref.rsplit("/", 1)[1])
    return sorted(set(names))


def _body_fields(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(model, field, schema) of every field of the request bodies and the models they nest."""
    schemas = spec["components"]["schemas"]
    pending, seen, found = _request_bodies(spec), set(), []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for field, schema in schemas[name].get("properties", {}).items():
            for part in (schema, *schema.get("anyOf", ()), schema.get("items") or {}):
                if "$ref" in part:
                    pending.append(part["$ref"].rsplit("/", 1)[1])
            found.append((name, field, schema))
    return found


def test_every_integer_the_api_takes_declares_a_maximum_the_database_holds(api) -> None:  # type: ignore[no-untyped-def]
    spec = api.get("/openapi.json").json()
    unbounded = []
    for method, path, where, name, maximum in _integer_parameters(spec):
        if maximum > float(DB_BIGINT_MAX):
            unbounded.append(f"{method} {path} {where} {name}")
    for name, field, schema in _body_fields(spec):  # request bodies and the models they nest
        integer = _integer_schema(schema)
        if integer is not None and integer.get("maximum", UNBOUNDED) > float(DB_BIGINT_MAX):
            unbounded.append(f"body {name}.{field}")
    assert unbounded == []
    assert len(_integer_parameters(spec)) >= 30  # the walk found the API's parameters


def test_an_integer_past_the_database_range_is_a_422_naming_it(api) -> None:  # type: ignore[no-untyped-def]
    spec = api.get("/openapi.json").json()
    job = api.post(
        "/api/v1/jobs",
        json={"name": "j", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"},
    ).json()
    for method, path, where, name, maximum in _integer_parameters(spec):
        largest = DB_BIGINT_MAX if maximum > DB_INT_MAX else int(maximum)
        for value, refused in ((largest + 1, True), (largest, False), (DB_BIGINT_MAX + 1, True)):
            url = re.sub(
                r"\{(\w+)\}",
                lambda found, v=value, n=name: str(v) if found.group(1) == n else "1",
                path,
            )
            params = {name: str(value)} if where == "query" else {}
            response = api.request(method.upper(), url, params=params)
            if refused:
                assert response.status_code == 422, (method, path, name, value, response.text)
                # Other required parameters (absent here) may be named too; this one must be.
                locs = [error["loc"] for error in response.json()["detail"]]
                # A repeated (list) parameter's loc goes on with the item's index.
                assert any(loc[:2] == [where, name] for loc in locs), (method, path, locs)
            else:  # the largest value a column holds is an ordinary miss, not an error
                assert response.status_code < 500, (method, path, name, value, response.text)
    assert api.get(f"/api/v1/jobs/{job['id']}").status_code == 200
    body = {"name": "m", "job_id": DB_INT_MAX + 1}
    response = api.post("/api/v1/models", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "job_id"]
    with pytest.raises(WebSocketDisconnect) as refused:
        api.websocket_connect(f"/api/v1/ws/jobs/{DB_BIGINT_MAX + 1}").__enter__()
    assert refused.value.code == 1008  # policy violation: the handshake is refused


@pytest.mark.parametrize("address", ["..", ".", "a..b", "-a", "a-", "1:2", "[::1", "a b"])
def test_a_host_address_that_is_no_name_nor_ip_is_a_422(api, address: str) -> None:  # type: ignore[no-untyped-def]
    response = api.post("/api/v1/hosts/host-key", json={"address": address, "port": 22})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "address"]


def test_every_priority_a_request_takes_is_a_job_priority(api) -> None:  # type: ignore[no-untyped-def]
    """Defect: evaluations, suite runs, serving, merges and soups took -100..100 and made jobs
    that take 0-9: priority 50 answered 500 instead of 422."""
    from training_platform.worker.queues import PRIORITY_MAX, PRIORITY_MIN

    spec = api.get("/openapi.json").json()
    priorities = [(m, s) for m, f, s in _body_fields(spec) if f == "priority"]
    assert len(priorities) >= 8
    for model, schema in priorities:
        integer = _integer_schema(schema)
        assert integer is not None, model
        bounds = (integer.get("minimum"), integer.get("maximum"))
        assert bounds == (PRIORITY_MIN, PRIORITY_MAX), model
    response = api.post("/api/v1/evaluations", json={"priority": 50})
    assert response.status_code == 422
    assert ["body", "priority"] in [error["loc"] for error in response.json()["detail"]]
