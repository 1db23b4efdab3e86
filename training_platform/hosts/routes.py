"""HTTP routes of remote hosts. Every route that talks to a server is a plain `def`, so FastAPI
runs it in its thread pool and the event loop never waits on SSH."""

from __future__ import annotations

from fastapi import Request, Response, status

from training_platform.api.deps import CurrentToken, SessionDep, SettingsDep, api_router
from training_platform.hosts import service
from training_platform.hosts.models import RemoteHost
from training_platform.hosts.schemas import (
    Bootstrap,
    HostCreate,
    HostKeyPublic,
    HostKeyScan,
    HostPublic,
    HostsPublic,
    HostUpdate,
    TrustKey,
)

# Hosts hold SSH credentials and run commands over SSH: admins register and change them.
router = api_router("/hosts", tags=["hosts"], write="admin")
secrets_router = api_router("/secrets", tags=["hosts"], read="admin", write="admin")


def _public(host: RemoteHost) -> HostPublic:
    return HostPublic.model_validate(host, from_attributes=True)


@router.post("/host-key", response_model=HostKeyPublic)
def read_host_key(body: HostKeyScan, settings: SettingsDep, _: CurrentToken) -> HostKeyPublic:
    """The key a server presents, to compare with `ssh-keygen -lf` there before registering."""
    key = service.scan(address=body.address, port=body.port, settings=settings)
    return HostKeyPublic(
        address=body.address, port=body.port, key_type=key.key_type, fingerprint=key.fingerprint
    )


@router.post("", response_model=HostPublic, status_code=status.HTTP_201_CREATED)
def register_host(
    body: HostCreate, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> HostPublic:
    """Register a server: its key must match the confirmed fingerprint and the login work."""
    return _public(service.register(session=session, settings=settings, request=body))


@router.get("", response_model=HostsPublic)
def list_hosts(session: SessionDep, _: CurrentToken) -> HostsPublic:
    """Every registered host."""
    return HostsPublic(hosts=[_public(h) for h in service.list_hosts(session=session)])


@router.get("/{name}", response_model=HostPublic)
def get_host(name: str, session: SessionDep, _: CurrentToken) -> HostPublic:
    """One host."""
    return _public(service.get_host(session=session, name=name))


@router.patch("/{name}", response_model=HostPublic)
def update_host(
    name: str, body: HostUpdate, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> HostPublic:
    """Change labels, slots, root, environment or credential (checked by logging in)."""
    host = service.get_host(session=session, name=name)
    return _public(service.update(session=session, settings=settings, host=host, request=body))


@router.post("/{name}/check", response_model=HostPublic)
def check_host(
    name: str, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> HostPublic:
    """Connect now: environment, GPUs and CPU slots are read again."""
    host = service.get_host(session=session, name=name)
    return _public(service.check(session=session, settings=settings, host=host))


@router.post("/{name}/trust-key", response_model=HostPublic)
def trust_host_key(
    name: str, body: TrustKey, session: SessionDep, settings: SettingsDep, _: CurrentToken
) -> HostPublic:
    """Accept a server's new host key, by the fingerprint checked out of band."""
    host = service.get_host(session=session, name=name)
    return _public(
        service.trust_key(
            session=session, settings=settings, host=host, fingerprint=body.fingerprint
        )
    )


@router.post("/{name}/bootstrap", response_model=HostPublic, status_code=status.HTTP_202_ACCEPTED)
def bootstrap_host(
    name: str, body: Bootstrap, request: Request, session: SessionDep, _: CurrentToken
) -> HostPublic:
    """Install the platform's pinned environment on the host (or only check it), in a worker.

    Follow it in `bootstrap` (state queued, running, succeeded or failed, and the report).
    """
    host = service.get_host(session=session, name=name)
    requests: service.BootstrapRequests = request.app.state.bootstrap_requests
    return _public(
        service.start_bootstrap(
            session=session,
            host=host,
            environment_set=body.environment_set,
            check_only=body.check_only,
            requests=requests,
        )
    )


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove_host(name: str, session: SessionDep, _: CurrentToken) -> Response:
    """Forget a host (refused while jobs are placed there)."""
    service.remove(session=session, host=service.get_host(session=session, name=name))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@secrets_router.post("/rotate")
def rotate_secrets(session: SessionDep, settings: SettingsDep, _: CurrentToken) -> dict[str, int]:
    """Re-encrypt every stored secret under a fresh key."""
    return {"reencrypted": service.rotate_secrets(session=session, settings=settings)}
