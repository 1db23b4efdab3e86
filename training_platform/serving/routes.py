"""HTTP routes of the serving context: endpoints, serve jobs, and the way in to a served model.

`/serving/{job}/v1/...` is an OpenAI-compatible API under the platform's auth: a client (the
OpenAI SDK, curl, the dashboard's chat) sends its platform token as the API key. The route
forwards chat completions, completions and the model list to the job's server on the loopback,
names the model by its catalog name (never a server path) and streams server-sent events
through as they come.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlmodel import select
from starlette.concurrency import run_in_threadpool

from training_platform.api.deps import (
    CurrentToken,
    DispatcherDep,
    IdPath,
    SessionDep,
    SettingsDep,
    api_router,
    project_scoped,
)
from training_platform.catalog import service as catalog
from training_platform.catalog.models import ModelEntry
from training_platform.core.errors import InvalidInput
from training_platform.jobs import service as jobs_service
from training_platform.jobs.routes import to_public as job_public
from training_platform.jobs.schemas import JobPublic
from training_platform.serving import service
from training_platform.serving.models import Endpoint
from training_platform.serving.schemas import (
    EndpointCreate,
    EndpointPublic,
    ServeCreate,
    ServedPublic,
)

log = logging.getLogger(__name__)
endpoints_router = api_router("/endpoints", tags=["serving"])
router = api_router(
    "/serving", tags=["serving"], scoped=project_scoped("job_id", "job", jobs_service.project_of)
)
MAX_BODY = 16 << 20


@endpoints_router.get("", response_model=list[EndpointPublic])
def list_endpoints(session: SessionDep, _: CurrentToken) -> list[EndpointPublic]:
    """Every endpoint: those registered and those of running serve jobs (never a key)."""
    return service.list_endpoints(session=session)


@endpoints_router.post("", response_model=EndpointPublic, status_code=status.HTTP_201_CREATED)
def create_endpoint(
    body: EndpointCreate, session: SessionDep, settings: SettingsDep, token: CurrentToken
) -> EndpointPublic:
    """Register an OpenAI-compatible server; its API key is stored encrypted."""
    endpoint = service.create_endpoint(
        session=session, settings=settings, request=body, actor=token.actor
    )
    session.commit()
    return service.to_public(endpoint)


@endpoints_router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_endpoint(name: str, session: SessionDep, _: CurrentToken) -> None:
    """Forget a registered endpoint and its key."""
    service.delete_endpoint(session=session, ref=name)
    session.commit()


def _served(job: Any, endpoint: Endpoint | None) -> ServedPublic:
    return ServedPublic(
        job_id=job.id,
        name=job.name,
        model=str(job.spec.get("model", "")),
        status=job.status,
        ready=endpoint is not None and endpoint.job_attempt == job.attempt,
        engine=endpoint.engine if endpoint else None,
        url=f"{service.PROXY_PREFIX}/{job.id}/v1",
    )


@router.get("", response_model=list[ServedPublic])
def list_served(
    session: SessionDep, token: CurrentToken, include_ended: bool = False
) -> list[ServedPublic]:
    """Serve jobs of the caller's projects (an admin: all), newest first, and whether their
    server answers."""
    from training_platform.projects.service import visible_project_ids

    projects = visible_project_ids(session=session, caller=token)
    served = service.serve_jobs(session=session, include_ended=include_ended, projects=projects)
    return [_served(job, endpoint) for job, endpoint in served]


@router.post("", response_model=JobPublic, status_code=status.HTTP_201_CREATED)
def start_serving(
    body: ServeCreate,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    token: CurrentToken,
) -> JobPublic:
    """Start a serve job; cancel it (DELETE-like: POST /jobs/{id}/cancel) to stop serving."""
    from training_platform.projects.service import project_for_submit

    project = project_for_submit(session=session, caller=token, name=body.project)
    job = service.start(
        session=session,
        settings=settings,
        request=body,
        actor=token.actor,
        project_id=project.id,
        user_id=token.user_id,
    )
    session.commit()
    try:
        dispatcher.dispatch(job)
    except Exception as error:  # stored; the supervisor resends the message
        log.warning("serve job %s: start message not sent (%s)", job.id, error)
    return job_public(job)


# --- the way in ------------------------------------------------------------------------------


# Where a served job's requests go, by job, for TARGET_TTL_S: a burst of requests costs one
# lookup (a job that stops is seen within that time; its server refuses meanwhile: 502).
TARGET_TTL_S = 1.0
_targets: dict[int, tuple[float, tuple[Endpoint, str, str]]] = {}


def _target(session: Any, settings: Any, job_id: int) -> tuple[Endpoint, str, str]:
    now = time.monotonic()
    cached = _targets.get(job_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    found = _lookup(session, settings, job_id)
    if len(_targets) > 1000:
        _targets.clear()
    _targets[job_id] = (now + TARGET_TTL_S, found)
    return found


def _lookup(session: Any, settings: Any, job_id: int) -> tuple[Endpoint, str, str]:
    endpoint, name = service.served_endpoint(session=session, job_id=job_id)
    model = session.exec(select(ModelEntry).where(ModelEntry.name == name)).first()
    path = catalog.model_location(settings, model)[0] if model is not None else ""
    return endpoint, name, path


def _clean(text: str, path: str, name: str) -> str:
    return text.replace(path, name) if path else text


def _renamed(data: Any, name: str) -> Any:
    if isinstance(data, dict) and "model" in data:
        data["model"] = name
    return data


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidInput(("body",), f"more than {MAX_BODY >> 20} MiB")
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise InvalidInput(("body",), "is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput(("body",), "must be a JSON object")
    return data


async def _forward(
    request: Request, session: Any, settings: Any, job_id: int, path: str
) -> Response:
    endpoint, name, model_path = await run_in_threadpool(_target, session, settings, job_id)
    body = await _body(request)
    body.pop("model", None)
    if endpoint.model:
        body["model"] = endpoint.model
    url = f"{endpoint.base_url}/{path}"
    import httpx  # here: only the proxy uses it; its import costs a tenth of a start

    timeout = httpx.Timeout(endpoint.timeout_s, connect=10.0)
    if body.get("stream"):
        client = httpx.AsyncClient(timeout=timeout)
        upstream = await client.send(client.build_request("POST", url, json=body), stream=True)
        if upstream.status_code >= 400:
            text = (await upstream.aread()).decode("utf-8", "replace")
            await upstream.aclose()
            await client.aclose()
            return _error(upstream.status_code, _clean(text, model_path, name))

        async def events() -> AsyncIterator[bytes]:
            try:
                async for line in upstream.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        with contextlib.suppress(ValueError):
                            line = "data: " + json.dumps(_renamed(json.loads(line[6:]), name))
                    yield (line + "\n").encode()
            finally:
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(events(), media_type="text/event-stream")
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            reply = await client.post(url, json=body)
        except httpx.HTTPError as error:
            return _error(502, f"the model server did not answer: {type(error).__name__}")
    if reply.status_code >= 400:
        return _error(reply.status_code, _clean(reply.text, model_path, name))
    try:
        data = reply.json()
    except ValueError:
        return _error(502, "the model server answered with something that is not JSON")
    return JSONResponse(_renamed(data, name), status_code=reply.status_code)


def _error(code: int, text: str) -> JSONResponse:
    try:
        detail = json.loads(text).get("detail") or json.loads(text).get("error") or text
    except (ValueError, AttributeError):
        detail = text
    return JSONResponse(
        {"detail": f"the model server answered {code}: {str(detail)[:1000]}"},
        status_code=code if 400 <= code < 600 else 502,
    )


@router.post("/{job_id}/v1/chat/completions")
async def chat_completions(
    job_id: IdPath, request: Request, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> Response:
    """OpenAI chat completions from the served model (stream: true for server-sent events)."""
    return await _forward(request, session, settings, job_id, "chat/completions")


@router.post("/{job_id}/v1/completions")
async def completions(
    job_id: IdPath, request: Request, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> Response:
    """OpenAI text completions from the served model."""
    return await _forward(request, session, settings, job_id, "completions")


@router.get("/{job_id}/v1/models")
async def models(
    job_id: IdPath, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> dict[str, Any]:
    """The one model the job serves, by its catalog name."""
    target = await run_in_threadpool(_target, session, settings, job_id)
    name = target[1]
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "platform"}]}
