"""The runners of registered hosts, as the supervisor and workers see them.

`RemoteRunners` stands for every host of one runner kind (ssh or ray): it reads the host a
handle names from the database and hands the call to that host's runner, so the supervisor's
loop treats remote runs like local ones. Hosts are re-read when they change (a new key,
credential or root), and each process keeps one connection per host.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from training_platform.backends.base import LaunchPlan
from training_platform.core.settings import Settings
from training_platform.hosts import service
from training_platform.hosts.models import RemoteHost
from training_platform.jobs.models import Job
from training_platform.runners.base import Handle, Runner, RunnerError, RunState, Stream

REREAD_S = 10.0  # how long a host's row is trusted before it is read again


class RemoteRunners:
    """Every registered host of one kind behind the Runner protocol, chosen by handle."""

    def __init__(self, engine: Engine, settings: Settings, kind: str) -> None:
        self.kind = kind
        self._engine = engine
        self._settings = settings
        self._bound: dict[str, tuple[datetime, float, Runner]] = {}
        self._lock = threading.Lock()

    def for_host(self, name: str) -> Runner | None:
        """The runner of a registered host of this kind, or None."""
        now = time.monotonic()
        with self._lock:
            cached = self._bound.get(name)
            if cached is not None and now - cached[1] < REREAD_S:
                return cached[2]
        with Session(self._engine) as session:
            host = service.find_host(session=session, name=name)
            if host is None or host.runner != self.kind:
                return None
            with self._lock:
                cached = self._bound.get(name)
                if cached is not None and cached[0] == host.updated_at:
                    self._bound[name] = (cached[0], now, cached[2])
                    return cached[2]
                runner = service.runner_for(self._settings, host)
                self._bound[name] = (host.updated_at, now, runner)
                return runner

    def run_root(self, name: str) -> str | None:
        """Where runs of that host live, if it is one of ours."""
        with Session(self._engine) as session:
            host: RemoteHost | None = service.find_host(session=session, name=name)
            if host is None or host.runner != self.kind:
                return None
            return service.run_root(self._settings, host)

    def _runner(self, handle: Handle) -> Runner:
        runner = self.for_host(str(handle.get("host")))
        if runner is None:
            raise RunnerError(f"host {handle.get('host')!r} is no longer registered")
        return runner

    def find_job(self, job: Job) -> Handle | None:
        """A run of the job's current attempt already started on its host, if any."""
        if not job.node:
            return None
        runner, root = self.for_host(job.node), self.run_root(job.node)
        if runner is None or root is None:
            return None
        return runner.find(f"{root}/{job.id}/attempt-{job.attempt}")

    def owns(self, handle: Handle) -> bool:
        """A handle of a registered host of this kind."""
        if handle.get("runner") != self.kind:
            return False
        return self.for_host(str(handle.get("host"))) is not None

    def submit(self, plan: LaunchPlan, run_dir: str) -> Handle:
        """Not used: submissions go through the host's own runner (for_host)."""
        raise RunnerError("submit through RemoteRunners.for_host(name)")

    def find(self, run_dir: str) -> Handle | None:
        """Local run directories hold no remote runs (see find_job)."""
        return None

    def poll(self, handle: Handle) -> RunState:
        """The host runner's answer."""
        return self._runner(handle).poll(handle)

    def read(self, handle: Handle, stream: Stream, offset: int, limit: int) -> bytes:
        """The host runner's bytes."""
        return self._runner(handle).read(handle, stream, offset, limit)

    def cancel(self, handle: Handle, *, force: bool) -> None:
        """Signal the run on its host."""
        self._runner(handle).cancel(handle, force=force)

    def request_stop(self, handle: Handle) -> None:
        """Ask the run on its host to checkpoint and stop."""
        self._runner(handle).request_stop(handle)

    def suspend(self, handle: Handle) -> None:
        """Freeze the run on its host."""
        self._runner(handle).suspend(handle)

    def resume(self, handle: Handle) -> None:
        """Continue the run on its host."""
        self._runner(handle).resume(handle)

    def stack_dump(self, handle: Handle) -> str | None:
        """Stacks of the run's processes on its host."""
        return self._runner(handle).stack_dump(handle)
