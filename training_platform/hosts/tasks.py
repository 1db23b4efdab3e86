"""Celery tasks of remote hosts. Thin: they call the service."""

from __future__ import annotations

from sqlmodel import Session

from training_platform.core.db import get_engine
from training_platform.core.settings import get_settings
from training_platform.hosts import service
from training_platform.worker.app import app
from training_platform.worker.queues import REMOTE


@app.task(name="tp.hosts.refresh")
def refresh_hosts() -> dict[str, str]:
    """Check every registered host: environment, GPUs, reachability."""
    settings = get_settings()
    with Session(get_engine(settings)) as session:
        return service.refresh_all(session=session, settings=settings)


@app.task(name="tp.hosts.bootstrap")
def bootstrap_host(name: str, environment_set: str, check_only: bool) -> str:
    """Install (or only check) the platform's environment on a host."""
    settings = get_settings()
    with Session(get_engine(settings)) as session:
        host = service.bootstrap(
            session=session,
            settings=settings,
            name=name,
            environment_set=environment_set,
            check_only=check_only,
        )
        return str((host.bootstrap or {}).get("state"))


class CeleryBootstrapRequests:
    """Sends bootstraps to the queue of remote-host work."""

    def request_bootstrap(self, name: str, environment_set: str, check_only: bool) -> None:
        """Enqueue tp.hosts.bootstrap."""
        app.send_task(
            "tp.hosts.bootstrap",
            args=[name, environment_set, check_only],
            queue=REMOTE,
            routing_key=REMOTE,
        )
