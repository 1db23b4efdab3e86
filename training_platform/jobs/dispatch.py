"""What the API and the supervisor send jobs through, apart from the service that uses it
(the API's start imports this, not the jobs service and its models)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from training_platform.jobs.models import Job


class Dispatcher(Protocol):
    """Sends the message that makes a worker start a job (after the commit)."""

    def dispatch(self, job: Job) -> None:
        """Enqueue the start of the job's current attempt."""
        ...

    def request_cancel(self, job: Job) -> None:
        """Ask a worker to signal the job's process group now."""
        ...

    def request_schedule(self) -> None:
        """Ask for a scheduling pass now (a job became due for devices)."""
        ...
