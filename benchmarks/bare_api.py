"""The bare baselines of benchmarks/startup.py, in a module of their own so that uvicorn
imports nothing else with them (the benchmark's own imports, httpx, psutil and redis among
them, cost 0.16 s and were counted against the bare app until 2026-12-04).

    uvicorn --factory bare_api:bare_app      # checks what the platform's /readyz checks
    uvicorn --factory bare_api:bare_db_app   # the database only
"""

from __future__ import annotations

import os
from typing import Any


def bare_app() -> Any:
    """FastAPI + SQLModel with one readiness route that checks what the platform's /readyz
    checks: SELECT 1 on the same database, and PING to the same Redis."""
    import redis
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from sqlalchemy import text
    from sqlmodel import Session, create_engine

    engine = create_engine(os.environ["BENCH_DATABASE_URL"])
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> JSONResponse:
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
        redis.Redis.from_url(os.environ["TP_REDIS_URL"], socket_timeout=2).ping()
        return JSONResponse({"ready": True})

    return app


def bare_db_app() -> Any:
    """The same app checking the database only (the baseline before 2026-12-04's run)."""
    from fastapi import FastAPI
    from sqlalchemy import text
    from sqlmodel import Session, create_engine

    engine = create_engine(os.environ["BENCH_DATABASE_URL"])
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, bool]:
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
        return {"ready": True}

    return app
