"""Endpoints and serve jobs.

An endpoint is an OpenAI-compatible server the platform calls: one a user registers (its key
encrypted at rest, its address refused when it is internal) or one a serve job runs. A serve
job is an ordinary job (builtin/serve): scheduled, leased, logged and cancelled like any. Its
program publishes the port of its server in endpoint.json; the serving tick, on the node that
runs it, registers that address as the job's endpoint and removes it once the job is no longer
running. Clients reach a served model only through the API (routes.py), under the platform's
auth: the server itself listens on the loopback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete
from sqlmodel import Session, col, select

from training_platform.catalog.models import ModelEntry
from training_platform.core.db import add_unique
from training_platform.core.errors import Conflict, InvalidInput, NotFound
from training_platform.core.netguard import Refused, check
from training_platform.core.secrets import SecretBox
from training_platform.core.settings import Settings
from training_platform.jobs import service as jobs
from training_platform.jobs.models import Job
from training_platform.jobs.schemas import JobCreate
from training_platform.jobs.state import JobStatus
from training_platform.runners.base import Runner
from training_platform.serving.models import Endpoint
from training_platform.serving.schemas import EndpointCreate, EndpointPublic, ServeCreate

log = logging.getLogger(__name__)

SERVE_BACKEND, SERVE_ALGORITHM = "builtin", "serve"
PROXY_PREFIX = "/api/v1/serving"
SERVE_PREFIX = "serve-job-"
ENDPOINT_RECORD_LIMIT = 1 << 12


# --- endpoints -------------------------------------------------------------------------------


def _check_url(settings: Settings, url: str, loc: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(loc, "must be an http or https URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput(
            loc, "must not hold credentials, a query or a fragment; put the key in api_key"
        )
    try:
        check(url, allow_private=settings.allow_private_urls, allowed=settings.allowed_networks)
    except Refused as refused:
        raise InvalidInput(
            loc, f"{refused}: the platform calls public addresses only (TP_ALLOWED_NETWORKS)"
        ) from None


def create_endpoint(
    *, session: Session, settings: Settings, request: EndpointCreate, actor: str
) -> Endpoint:
    """Store an endpoint with its key encrypted; nothing is written when it is refused."""
    url = request.base_url.rstrip("/")
    _check_url(settings, url, ("body", "base_url"))
    if request.name.startswith(SERVE_PREFIX):
        raise InvalidInput(("body", "name"), f"names starting {SERVE_PREFIX!r} are serve jobs'")
    if session.exec(select(Endpoint.id).where(Endpoint.name == request.name)).first() is not None:
        raise Conflict(f"an endpoint named {request.name!r} exists")
    key = request.api_key.get_secret_value() if request.api_key is not None else None
    endpoint = Endpoint(
        name=request.name,
        base_url=url,
        model=request.model,
        api_key=SecretBox.for_settings(settings).encrypt(key) if key else None,
        concurrency=request.concurrency,
        max_retries=request.max_retries,
        rate_limit=request.rate_limit,
        timeout_s=request.timeout_s,
        created_by=actor,
    )
    return add_unique(session, endpoint, f"an endpoint named {request.name!r} exists")


def list_endpoints(*, session: Session) -> list[EndpointPublic]:
    """Every endpoint, by name, as clients see them."""
    endpoints = session.exec(select(Endpoint).order_by(col(Endpoint.name))).all()
    job_ids = [e.job_id for e in endpoints if e.job_id is not None]
    served = {
        job.id: str(job.spec.get("model", ""))
        for job in session.exec(select(Job).where(col(Job.id).in_(job_ids))).all()
    }
    return [to_public(e, served.get(e.job_id)) for e in endpoints]


def get_endpoint(*, session: Session, ref: str | int) -> Endpoint:
    """An endpoint by name or id, or NotFound."""
    query = select(Endpoint).where(
        col(Endpoint.id) == ref if isinstance(ref, int) else col(Endpoint.name) == ref
    )
    endpoint = session.exec(query).first()
    if endpoint is None:
        raise NotFound(f"endpoint {ref!r} not found")
    return endpoint


def delete_endpoint(*, session: Session, ref: str | int) -> None:
    """Forget an endpoint a user registered (a serve job's goes when the job ends)."""
    endpoint = get_endpoint(session=session, ref=ref)
    if endpoint.job_id is not None:
        raise Conflict(f"endpoint {endpoint.name!r} is serve job {endpoint.job_id}'s: cancel it")
    session.delete(endpoint)
    session.flush()


def to_public(endpoint: Endpoint, served_model: str | None = None) -> EndpointPublic:
    """The client view: a serve job's endpoint by its path through the API and the catalog
    name of its model (`served_model`); never the key."""
    assert endpoint.id is not None
    return EndpointPublic(
        id=endpoint.id,
        name=endpoint.name,
        base_url=(
            f"{PROXY_PREFIX}/{endpoint.job_id}/v1"
            if endpoint.job_id is not None
            else endpoint.base_url
        ),
        # A serve job's server expects its model's path: clients see the job's model name.
        model=endpoint.model if endpoint.job_id is None else served_model or "",
        has_api_key=endpoint.api_key is not None,
        concurrency=endpoint.concurrency,
        max_retries=endpoint.max_retries,
        rate_limit=endpoint.rate_limit,
        timeout_s=endpoint.timeout_s,
        job_id=endpoint.job_id,
        engine=endpoint.engine,
        created_by=endpoint.created_by,
        created_at=endpoint.created_at,
    )


def launch_view(
    *, session: Session, settings: Settings, ref: str
) -> tuple[dict[str, Any], str | None]:
    """What a run that calls the endpoint needs, and its key apart (it goes into a 0600 file,
    never into the plan). The address is checked again: a name may resolve inward by now."""
    endpoint = get_endpoint(session=session, ref=ref)
    if endpoint.job_id is None:
        _check_url(settings, endpoint.base_url, ("body", "endpoint"))
    key = (
        SecretBox.for_settings(settings).decrypt(endpoint.api_key)
        if endpoint.api_key is not None
        else None
    )
    view = {
        "name": endpoint.name,
        "base_url": endpoint.base_url,
        "model": endpoint.model,
        "concurrency": endpoint.concurrency,
        "max_retries": endpoint.max_retries,
        "rate_limit": endpoint.rate_limit,
        "timeout_s": endpoint.timeout_s,
    }
    return view, key


def reencrypt_keys(session: Session, box: SecretBox) -> int:
    """Rotate every stored endpoint key under the box's current key (no commit)."""
    count = 0
    for endpoint in session.exec(select(Endpoint).where(col(Endpoint.api_key).is_not(None))):
        assert endpoint.api_key is not None
        endpoint.api_key = box.rotate(endpoint.api_key)
        session.add(endpoint)
        count += 1
    return count


# --- serve jobs ------------------------------------------------------------------------------


def start(
    *,
    session: Session,
    settings: Settings,
    request: ServeCreate,
    actor: str,
    project_id: int | None = None,
    user_id: int | None = None,
) -> Job:
    """Submit a serve job (of `project_id`) for a catalog model, a job's final model or a
    checkpoint."""
    from training_platform.evaluation.service import job_model

    model_ref: int | str | None = request.model
    if request.job is not None:
        model_ref = job_model(session, settings, request.job).id
    elif request.checkpoint is not None:
        model_ref = job_model(session, settings, request.checkpoint.job, request.checkpoint.step).id
    assert model_ref is not None
    hyperparameters: dict[str, Any] = {"engine": request.engine}
    if request.max_model_len is not None:
        hyperparameters["max_model_len"] = request.max_model_len
    if request.enforce_eager:
        hyperparameters["enforce_eager"] = True
    job, _ = jobs.submit(
        session=session,
        request=JobCreate(
            name=request.name or f"serve {model_ref}"[:200],
            backend=SERVE_BACKEND,
            algorithm=SERVE_ALGORITHM,
            model=model_ref,
            hyperparameters=hyperparameters,
            resources=request.resources,
            priority=request.priority,
        ),
        actor=actor,
        project_id=project_id,
        user_id=user_id,
    )
    return job


def serve_jobs(
    *, session: Session, include_ended: bool = False, projects: set[int] | None = None
) -> list[tuple[Job, Endpoint | None]]:
    """Serve jobs (of `projects` unless None), newest first, with their endpoint where their
    server answers."""
    from training_platform.projects.service import owned_by

    query = select(Job).where(
        col(Job.backend) == SERVE_BACKEND,
        col(Job.algorithm) == SERVE_ALGORITHM,
        owned_by(Job.project_id, projects),
    )
    if not include_ended:
        query = query.where(
            col(Job.status).not_in(
                [s.value for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)]
            )
        )
    found = session.exec(query.order_by(col(Job.id).desc()).limit(200)).all()
    ids = [job.id for job in found]
    endpoints = {
        e.job_id: e
        for e in session.exec(select(Endpoint).where(col(Endpoint.job_id).in_(ids))).all()
    }
    return [(job, endpoints.get(job.id)) for job in found]


def served_endpoint(*, session: Session, job_id: int) -> tuple[Endpoint, str]:
    """A running serve job's endpoint and the catalog name of its model; NotFound when there
    is no such serve job, Conflict while its server is not up."""
    job = session.get(Job, job_id)
    if job is None or (job.backend, job.algorithm) != (SERVE_BACKEND, SERVE_ALGORITHM):
        raise NotFound(f"serve job {job_id} not found")
    if job.status != JobStatus.RUNNING.value:
        raise Conflict(f"serve job {job_id} is {job.status}, not running")
    endpoint = session.exec(select(Endpoint).where(col(Endpoint.job_id) == job_id)).first()
    if endpoint is None or endpoint.job_attempt != job.attempt:
        raise Conflict(f"serve job {job_id} is starting its server; try again in a few seconds")
    model = session.get(ModelEntry, job.model_id) if job.model_id is not None else None
    return endpoint, model.name if model else str(job.spec.get("model", ""))


def _read_record(runner: Runner, handle: dict[str, Any]) -> dict[str, Any] | None:
    data = runner.read(handle, "endpoint", 0, ENDPOINT_RECORD_LIMIT)
    if not data:
        return None
    try:
        record = json.loads(data)
        int(record["port"])
    except (ValueError, KeyError, TypeError):
        return None  # being written
    return record if isinstance(record, dict) else None


def sync_endpoints(session: Session, runners: Mapping[str, Runner]) -> int:
    """Register the server of every running serve job this node can read; drop the endpoints
    of serve jobs that stopped (or restarted: a new attempt has a new port). Returns how many
    endpoints were added or removed."""
    running = {
        job.id: job
        for job in session.exec(
            select(Job).where(
                col(Job.backend) == SERVE_BACKEND,
                col(Job.algorithm) == SERVE_ALGORITHM,
                col(Job.status) == JobStatus.RUNNING.value,
            )
        ).all()
    }
    changed = 0
    registered = session.exec(select(Endpoint).where(col(Endpoint.job_id).is_not(None))).all()
    have: set[int] = set()
    for endpoint in registered:
        job = running.get(endpoint.job_id)
        if job is None or job.attempt != endpoint.job_attempt:
            session.execute(delete(Endpoint).where(col(Endpoint.id) == endpoint.id))
            changed += 1
        else:
            have.add(job.id)  # type: ignore[arg-type]
    for job_id, job in running.items():
        if job_id in have or job_id is None:
            continue
        handle = job.runner_handle or {}
        runner = runners.get(str(handle.get("runner")))
        if runner is None or not runner.owns(handle) or handle.get("runner") != "local":
            continue  # another node's run (or a remote host: its loopback is not ours)
        record = _read_record(runner, handle)
        if record is None:
            continue
        session.add(
            Endpoint(
                name=f"{SERVE_PREFIX}{job_id}",
                base_url=f"http://{record.get('host', '127.0.0.1')}:{int(record['port'])}/v1",
                model=str(record.get("model", "")),
                job_id=job_id,
                job_attempt=job.attempt,
                engine=str(record.get("engine", ""))[:16] or None,
                concurrency=8,
                created_by="platform",
            )
        )
        changed += 1
        log.info("serve job %s answers on port %s", job_id, record["port"])
    session.commit()
    return changed
