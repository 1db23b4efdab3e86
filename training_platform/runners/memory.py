"""In-memory runner: runs nothing, lets tests of the supervisor script what a run does.

Named as what it is: it exists so that the supervisor's decisions (ingest, finish, cancel,
adopt) can be tested step by step; the local runner is the one that really runs.
"""

from __future__ import annotations

import itertools
import signal
from dataclasses import dataclass, field

from training_platform.backends.base import LaunchPlan
from training_platform.runners.base import Handle, RunState, Stream

KIND = "memory"


@dataclass
class ScriptedRun:
    """What a test has made a run do so far."""

    plan: LaunchPlan
    log: bytearray = field(default_factory=bytearray)
    metrics: bytearray = field(default_factory=bytearray)
    state: RunState = field(default_factory=lambda: RunState("running"))
    signals: list[int] = field(default_factory=list)
    stops_on_term: bool = True
    stop_requested: bool = False
    suspended: bool = False


class MemoryRunner:
    """A Runner whose runs are scripted by the test."""

    kind = KIND

    def __init__(self) -> None:
        self.runs: dict[str, ScriptedRun] = {}
        self._ids = itertools.count(1)

    def submit(self, plan: LaunchPlan, run_dir: str) -> Handle:
        """Record the plan as a running run."""
        self.runs[run_dir] = ScriptedRun(plan)
        return {"runner": KIND, "run_dir": run_dir, "id": next(self._ids)}

    def find(self, run_dir: str) -> Handle | None:
        """The handle of a run submitted into run_dir."""
        if run_dir not in self.runs:
            return None
        return {"runner": KIND, "run_dir": run_dir, "id": 0}

    def owns(self, handle: Handle) -> bool:
        """Every memory handle belongs to this runner."""
        return handle.get("runner") == KIND

    def poll(self, handle: Handle) -> RunState:
        """The scripted state."""
        return self.runs[handle["run_dir"]].state

    def read(self, handle: Handle, stream: Stream, offset: int, limit: int) -> bytes:
        """Bytes the test wrote to the run's log or metrics."""
        run = self.runs[handle["run_dir"]]
        data = {"log": run.log, "metrics": run.metrics}.get(stream, b"")
        return bytes(data[offset : offset + limit])

    def cancel(self, handle: Handle, *, force: bool) -> None:
        """Record the signal; the run ends if it would."""
        run = self.runs[handle["run_dir"]]
        sig = signal.SIGKILL if force else signal.SIGTERM
        run.signals.append(int(sig))
        if run.state.status == "running" and (force or run.stops_on_term):
            run.state = RunState("exited", exit_code=-int(sig), signal=int(sig))

    def request_stop(self, handle: Handle) -> None:
        """Record the request; the test decides how the run answers it."""
        self.runs[handle["run_dir"]].stop_requested = True

    def suspend(self, handle: Handle) -> None:
        """Record the suspension."""
        self.runs[handle["run_dir"]].suspended = True

    def resume(self, handle: Handle) -> None:
        """Record the continuation."""
        self.runs[handle["run_dir"]].suspended = False

    def stack_dump(self, handle: Handle) -> str | None:
        """A scripted dump naming the run (the in-memory runner has no processes)."""
        return f"scripted stacks of {handle['run_dir']}"

    # --- what the test makes the run do ---

    def write(self, run_dir: str, stream: Stream, data: bytes) -> None:
        """Append output as the trainer would."""
        run = self.runs[run_dir]
        (run.log if stream == "log" else run.metrics).extend(data)

    def finish(self, run_dir: str, exit_code: int) -> None:
        """End the run with an exit code."""
        self.runs[run_dir].state = RunState("exited", exit_code=exit_code)

    def kill(self, run_dir: str, sig: int) -> None:
        """End the run as a signal would (SIGKILL from the OOM killer, SIGSEGV...)."""
        self.runs[run_dir].state = RunState("exited", exit_code=-sig, signal=sig)

    def vanish(self, run_dir: str) -> None:
        """End the run without an exit status (host reboot, launcher killed)."""
        self.runs[run_dir].state = RunState("lost", detail="no exit status")
