"""Celery tasks of the datasets context. Thin: each calls the service."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import redis
from sqlmodel import Session

from training_platform.catalog.models import DatasetEntry
from training_platform.core.db import get_engine
from training_platform.core.errors import DomainError, InvalidInput, NotFound, Unavailable
from training_platform.core.settings import Settings, get_settings
from training_platform.datasets import analyses, dedups, versions
from training_platform.worker.app import app
from training_platform.worker.config import redis_url
from training_platform.worker.queues import KEY_PREFIX, PREPROCESSING

log = logging.getLogger(__name__)
# How long the API waits for a worker's search (the first search of a version embeds it).
SEARCH_WAIT_S = 180
REPLY_TTL_S = 60


def _send(task: str, *args: object) -> None:
    app.send_task(task, args=list(args), queue=PREPROCESSING, routing_key=PREPROCESSING)


def send_analysis(analysis_id: int) -> None:
    """Have a general worker compute a pending analysis."""
    _send("tp.datasets.analyze", analysis_id)


@app.task(name="tp.datasets.analyze")
def analyze(analysis_id: int) -> dict[str, object]:
    """Compute one pending analysis of a dataset version."""
    settings = get_settings()
    status = analyses.run(get_engine(settings), settings, analysis_id)
    return {"analysis": analysis_id, "status": status}


def send_dedup(dedup_id: int) -> None:
    """Have a general worker compute a pending dedup."""
    _send("tp.datasets.dedup", dedup_id)


@app.task(name="tp.datasets.dedup")
def dedup(dedup_id: int) -> dict[str, object]:
    """Compute one pending dedup (its review) of a dataset version."""
    settings = get_settings()
    status = dedups.run(get_engine(settings), settings, dedup_id)
    return {"dedup": dedup_id, "status": status}


def ask_search(
    settings: Settings,
    *,
    dataset_id: int,
    version: int,
    query: str | None,
    row: int | None,
    limit: int,
) -> list[tuple[int, float]]:
    """Have a worker search (the vector store and the embedder live on workers, not in the
    API) and wait for its answer on a Redis list of this request's own."""
    reply = f"{KEY_PREFIX}datasets:search:{uuid.uuid4().hex}"
    _send("tp.datasets.search", reply, dataset_id, version, query, row, limit)
    # redis-py reads with a 5 s socket timeout by default: the wait is longer than that.
    client = redis.Redis.from_url(redis_url(settings), socket_timeout=SEARCH_WAIT_S + 15)
    try:
        answer = client.blpop([reply], timeout=SEARCH_WAIT_S)
    finally:
        client.close()
    if answer is None:
        raise Unavailable(f"no worker answered the search within {SEARCH_WAIT_S} s")
    body: dict[str, Any] = json.loads(answer[1])
    if "error" in body:
        kind = {404: NotFound, 422: InvalidInput, 503: Unavailable}.get(body["status"])
        if kind is InvalidInput:
            raise InvalidInput(("body",), body["error"])
        raise (kind or Unavailable)(body["error"])
    return [(int(n), float(score)) for n, score in body["hits"]]


@app.task(name="tp.datasets.search")
def search(
    reply: str, dataset_id: int, version: int, query: str | None, row: int | None, limit: int
) -> dict[str, object]:
    """Search a version here and push the hits (or why not) to the asking API's reply list."""
    settings = get_settings()
    body: dict[str, Any]
    try:
        with Session(get_engine(settings)) as session:
            entry = session.get(DatasetEntry, dataset_id)
            if entry is None:
                raise NotFound(f"dataset {dataset_id} was deleted")
            chosen = versions.get(session=session, entry=entry, number=version)
            hits = dedups.search(
                session=session,
                settings=settings,
                entry=entry,
                version=chosen,
                query=query,
                row=row,
                limit=limit,
            )
        body = {"hits": hits}
    except DomainError as error:
        body = {"error": error.message, "status": error.status_code}
    except Exception as error:  # answered at once rather than after the API's whole wait
        log.exception("search of dataset %s version %s failed", dataset_id, version)
        body = {"error": f"the search failed on the worker: {error}", "status": 503}
    client = redis.Redis.from_url(redis_url(settings))
    try:
        client.rpush(reply, json.dumps(body))
        client.expire(reply, REPLY_TTL_S)
    finally:
        client.close()
    return {"reply": reply, "hits": len(body.get("hits", []))}
