"""HTTP route of scheduling: the GPUs of every host and who holds them."""

from __future__ import annotations

from typing import Any

from training_platform.api.deps import CurrentToken, SessionDep, api_router
from training_platform.scheduling import service

router = api_router(tags=["gpus"])


@router.get("/gpus")
def list_gpus(session: SessionDep, _: CurrentToken) -> dict[str, Any]:
    """Devices per host (memory, use, holder); simulated ones say so. Which models fit them:
    GET /api/v1/compute/advice."""
    hosts = service.describe_hosts(session)
    return {
        "hosts": hosts,
        "simulated": any(h["simulated"] for h in hosts),
        "gpus": sum(len(h["gpus"]) for h in hosts),
    }
