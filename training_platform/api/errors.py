"""Maps domain errors to HTTP answers with one JSON shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from training_platform.auth.service import Unauthorized
from training_platform.core.errors import DomainError, InvalidInput


async def _domain_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DomainError)
    if isinstance(error, InvalidInput):
        # Same shape as FastAPI's own validation errors, so clients parse one format.
        entry: dict[str, object] = {
            "loc": list(error.loc),
            "msg": error.message,
            "type": error.kind,
        }
        if error.ctx is not None:
            entry["ctx"] = error.ctx
        detail = [entry]
        return JSONResponse({"detail": detail}, status_code=error.status_code)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    return JSONResponse({"detail": error.message}, status_code=error.status_code, headers=headers)


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    # FastAPI's default answer echoes the offending `input`: for a whole-body error that is
    # the whole body, passwords, private keys and tokens included. Name the field and the
    # reason only.
    assert isinstance(error, RequestValidationError)
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in error.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def install(app: FastAPI) -> None:
    """Register the handlers on the app."""
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


# What every route of the API may answer besides its own results; the OpenAPI document names
# them on every operation (api/app.py), so that a client (or schemathesis) meets no status the
# document does not list.
_ERROR_SCHEMA = {
    "title": "ErrorMessage",
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "What went wrong, in words."}},
    "required": ["detail"],
}
_COMMON = {
    "401": "Missing, invalid or revoked token, or its user is disabled.",
    "403": "The caller's role (or the code permission) does not allow this.",
    "404": "Something the request names (in its path, query or body) does not exist.",
    "503": "A dependency (the database, Redis, a host) cannot be reached right now.",
}
_WRITES = {"409": "The current state forbids this: a name taken, a job already finished..."}
_VALIDATION = "A field is wrong: `loc` names it, `msg` says why (limits included)."
_UNPARSABLE = "The body cannot be parsed as its content type says (malformed JSON...)."


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the answers every /api/v1 operation may give to the OpenAPI document (in place)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorMessage", _ERROR_SCHEMA)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorMessage"}}}
    validation = {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            if not (path.startswith("/api/v1/") or path == "/metrics"):
                continue
            codes = {**_COMMON, **(_WRITES if method != "get" else {})}
            for code, description in codes.items():
                responses.setdefault(code, {"description": description, "content": error})
            if "requestBody" in operation:
                responses.setdefault("400", {"description": _UNPARSABLE, "content": error})
            if "HTTPValidationError" in components:
                responses.setdefault("422", {"description": _VALIDATION, "content": validation})
    return schema
