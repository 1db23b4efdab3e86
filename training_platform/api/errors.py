"""Maps domain errors to HTTP answers with one JSON shape."""

from __future__ import annotations

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
