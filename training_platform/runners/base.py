"""The runner seam: start a LaunchPlan somewhere, watch it, read its files, stop it.

Implementations: local.py (processes on this machine), memory.py (tests of the supervisor).
A handle is plain JSON persisted on the job, so any process can pick a run up again.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from training_platform.backends.base import LaunchPlan

# A run's files the platform reads: its log and metrics, an evaluation's generations and result.
Stream = Literal["log", "metrics", "predictions", "results", "endpoint"]
OUTPUT_FILES: dict[str, str] = {
    "predictions": "predictions.jsonl",
    "results": "results.json",
    "endpoint": "endpoint.json",  # where a serve job's server listens (trainers/serve.py)
}
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


def write_run_dir(plan: LaunchPlan, directory: Path, plan_file: str) -> None:
    """Lay out a fresh run directory: the plan's files (never outside it) and the plan.

    A directory left by a start that was interrupted before its handle was recorded is
    replaced; callers refuse first when a live run is there.
    """
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for secret, (relative, content) in [
        *((False, item) for item in plan.files.items()),
        *((True, item) for item in plan.secrets.items()),
    ]:
        target = (directory / relative).resolve()
        if not target.is_relative_to(directory.resolve()):
            raise RunnerError(f"plan file {relative!r} escapes the run directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        if secret:
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(content)
        else:
            target.write_text(content)
    (directory / plan_file).write_text(json.dumps(plan.to_dict(), indent=2))


def read_stream(run_dir: str, name: str, offset: int, limit: int) -> bytes:
    """Up to `limit` bytes of a run-directory file from `offset` (empty if not written yet)."""
    # The run writes these files: a symbolic link it left in their place is not followed
    # (the platform may read what the run may not).
    try:
        descriptor = os.open(Path(run_dir) / name, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return b""
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RunnerError(f"{name} in {run_dir} is a symbolic link; not read") from None
        raise
    with os.fdopen(descriptor, "rb") as source:
        source.seek(offset)
        return source.read(limit)
