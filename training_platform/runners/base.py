"""The runner seam: start a LaunchPlan somewhere, watch it, read its files, stop it.

Implementations: local.py (processes on this machine), memory.py (tests of the supervisor).
A handle is plain JSON persisted on the job, so any process can pick a run up again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from training_platform.backends.base import LaunchPlan

Stream = Literal["log", "metrics"]
Handle = dict[str, Any]


@dataclass(frozen=True)
class RunState:
    """What a runner knows about a run right now."""

    status: Literal["running", "exited", "lost"]
    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""


class RunnerError(RuntimeError):
    """The runner could not do what was asked (start failed, host unreachable...)."""


class Runner(Protocol):
    """Start, watch and stop runs on one kind of target."""

    kind: str

    def submit(self, plan: LaunchPlan, run_dir: str) -> Handle:
        """Start the plan detached in run_dir and return its handle without waiting."""
        ...

    def find(self, run_dir: str) -> Handle | None:
        """The handle of a run already started in run_dir, if any (re-adoption)."""
        ...

    def poll(self, handle: Handle) -> RunState:
        """Whether the run still runs, and how it ended."""
        ...

    def read(self, handle: Handle, stream: Stream, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes of the run's log or metrics file from `offset`."""
        ...

    def cancel(self, handle: Handle, *, force: bool) -> None:
        """Ask the whole process group to stop (SIGTERM), or kill it (force)."""
        ...

    def owns(self, handle: Handle) -> bool:
        """Whether this runner instance can reach the run (same node for local runs)."""
        ...

    def request_stop(self, handle: Handle) -> None:
        """Ask the trainer to save a checkpoint and exit (it checks for STOP_FILE)."""
        ...

    def suspend(self, handle: Handle) -> None:
        """Stop the whole process group in place (SIGSTOP); it keeps its memory."""
        ...

    def resume(self, handle: Handle) -> None:
        """Continue a suspended process group (SIGCONT)."""
        ...

    def stack_dump(self, handle: Handle) -> str | None:
        """The Python stacks of the run's processes, where a tool can read them."""
        ...
