"""Local runner: runs a plan as a detached process group on this machine."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from training_platform.backends.base import LaunchPlan
from training_platform.core import confine, processes
from training_platform.runners import launcher, warm
from training_platform.runners.base import (
    OUTPUT_FILES,
    Handle,
    RunnerError,
    RunState,
    Stream,
    read_stream,
    write_run_dir,
)
from training_platform.runners.launcher import (
    EXIT_FILE,
    LOG_FILE,
    METRICS_FILE,
    PLAN_FILE,
    STOP_FILE,
    child_environment,
)

log = logging.getLogger(__name__)
KIND = "local"
LAUNCHER_FILE = "launcher.json"
LAUNCHER_PATH = str(Path(launcher.__file__).resolve())
_STREAM_FILES: dict[str, str] = {"log": LOG_FILE, "metrics": METRICS_FILE, **OUTPUT_FILES}


class LocalRunner:
    """Start plans as detached process groups under run directories on this node."""

    kind = KIND

    def __init__(
        self,
        *,
        node: str,
        python: str | None = None,
        warm_dir: Path | None = None,
        run_as: confine.Account | None = None,
    ) -> None:
        self.node = node
        self.python = python or sys.executable
        # Whom trainers run as (core/confine.py); None: the platform's own user.
        self.run_as = run_as
        # Where warm servers listen (runners/warm.py); None: every run starts cold.
        self.warm = warm.WarmStarter(warm_dir, self.python) if warm_dir else None

    def owns(self, handle: Handle) -> bool:
        """A local handle can only be watched from the node that started it."""
        return handle.get("runner") == KIND and handle.get("node") == self.node

    def submit(self, plan: LaunchPlan, run_dir: str) -> Handle:
        """Write the plan and its files into run_dir, then start the launcher detached."""
        directory = Path(run_dir)
        existing = self.find(run_dir)
        if existing is not None and self.poll(existing).status == "running":
            raise RunnerError(f"a run is already alive in {run_dir}")
        write_run_dir(plan, directory, PLAN_FILE)
        launcher.open_log(directory / "launcher.log").close()
        if self.run_as is not None:
            secrets = [directory / relative for relative in plan.secrets]
            confine.hand_over(directory, self.run_as, secrets)
        pid = self._start_warm(plan, directory)
        if pid is not None:
            return self._record(directory, pid)
        identity = ["--as", self.run_as.spec] if self.run_as is not None else []
        with launcher.open_log(directory / "launcher.log") as launcher_log:
            process = subprocess.Popen(
                # By path, isolated and without site-packages: the launcher needs only the
                # standard library, and its start is on the way to every trainer's.
                [self.python, "-I", "-S", LAUNCHER_PATH, str(directory), *identity],
                cwd=directory,
                env=child_environment(self._identity_environment()),
                stdin=subprocess.DEVNULL,
                stdout=launcher_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        return self._record(directory, process.pid)

    def _start_warm(self, plan: LaunchPlan, directory: Path) -> int | None:
        if self.warm is None:
            return None
        base = {**os.environ, **self._identity_environment()}
        env = child_environment({str(k): str(v) for k, v in plan.env.items()}, base=base)
        run_as = self.run_as.spec if self.run_as is not None else None
        return self.warm.start(directory.resolve(), [str(a) for a in plan.argv], env, run_as)

    def _identity_environment(self) -> dict[str, str]:
        return self.run_as.environment() if self.run_as is not None else {}

    def _record(self, directory: Path, pid: int) -> Handle:
        handle: Handle = {
            "runner": KIND,
            "node": self.node,
            "run_dir": str(directory),
            **processes.identity(pid),
        }
        launcher.write_new(directory / LAUNCHER_FILE, json.dumps(handle).encode())
        return handle

    def find(self, run_dir: str) -> Handle | None:
        """The handle recorded in run_dir by an earlier submit."""
        path = Path(run_dir) / LAUNCHER_FILE
        try:
            handle: Handle = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return handle

    def poll(self, handle: Handle) -> RunState:
        """Running while any process of the group lives; then exit.json tells how it ended."""
        _reap(int(handle["pid"]))
        if _group_alive(handle):
            return RunState("running")
        exit_path = Path(handle["run_dir"]) / EXIT_FILE
        try:
            ended = json.loads(exit_path.read_text())
        except (OSError, ValueError):
            return RunState("lost", detail="the run ended without writing exit.json")
        code = int(ended["returncode"])
        died_by = ended.get("signal")
        detail = str(ended.get("error", ""))
        return RunState("exited", exit_code=code, signal=died_by, detail=detail)

    def pids(self, handle: Handle) -> list[int]:
        """Live processes of the run (its whole process group)."""
        return _members(handle)

    def read(self, handle: Handle, stream: Stream, offset: int, limit: int) -> bytes:
        """Bytes of the run's log or metrics file from offset (empty if not written yet)."""
        return read_stream(handle["run_dir"], _STREAM_FILES[stream], offset, limit)

    def output_waiter(self, handle: Handle, timeout_s: float) -> OutputWaiter | None:
        """Something to block on until the run writes (None where files cannot be watched)."""
        try:
            return OutputWaiter(handle["run_dir"], timeout_s)
        except Exception as error:  # no inotify (limits, odd file systems): poll instead
            log.warning("cannot watch %s (%s); polling it", handle["run_dir"], error)
            return None

    def request_stop(self, handle: Handle) -> None:
        """Create the stop file the trainer looks for after each step."""
        path = Path(handle["run_dir"]) / STOP_FILE
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            descriptor = os.open(path, flags, 0o644)
        except FileExistsError:  # asked already (or a name the run left there)
            return
        with os.fdopen(descriptor, "w") as stop:
            stop.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))

    def suspend(self, handle: Handle) -> None:
        """SIGSTOP every process of the run."""
        self._signal_all(handle, signal.SIGSTOP)

    def resume(self, handle: Handle) -> None:
        """SIGCONT every process of the run."""
        self._signal_all(handle, signal.SIGCONT)

    def stack_dump(self, handle: Handle) -> str | None:
        """py-spy's dump of each process of the run but the launcher; None without py-spy."""
        spy = _py_spy()
        if spy is None:
            return None
        leader = int(handle["pid"])
        dumps = []
        for pid in _members(handle):
            if pid == leader:
                continue
            dumps.append(_dump(spy, pid))
        return "\n\n".join(dumps) if dumps else None

    def _signal_all(self, handle: Handle, sig: signal.Signals) -> None:
        for pid in _members(handle):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def cancel(self, handle: Handle, *, force: bool) -> None:
        """SIGTERM the whole group; with force, SIGKILL the trainer side first, then the rest.

        A suspended group is continued after the SIGTERM, so that it can act on it.
        """
        leader = int(handle["pid"])
        members = _members(handle)
        if not members:
            return
        if not force:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if leader in members:
                    os.killpg(leader, signal.SIGTERM)
                else:
                    for pid in members:
                        os.kill(pid, signal.SIGTERM)
            self._signal_all(handle, signal.SIGCONT)
            return
        # Kill everything but the launcher so that it can still record the SIGKILL in
        # exit.json; then the launcher itself if it does not finish promptly.
        for pid in members:
            if pid != leader:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and leader in _members(handle):
            _reap(leader)
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if leader in _members(handle):
                os.killpg(leader, signal.SIGKILL)


class OutputWaiter:
    """Blocks until a run reports something (a metrics line, exit.json) or a timeout.

    A watcher reacts to a trainer's metrics within milliseconds instead of at its next poll.
    Log lines and other files (heartbeat, checkpoints) are followed at LOG_INTERVAL_S: a
    trainer's console output must not cost a database round per line. Between wakes it rests
    RESTS times as long as it worked, so following even a run that writes flat out takes a
    bounded share of a core, in batches. The change notification runs in a thread of its own
    and the caller waits on an event, so signals reach the caller as usual (watchfiles turns a
    signal that arrives during its own wait into a return value).
    """

    MIN_INTERVAL_S = 0.005
    LOG_INTERVAL_S = 0.25
    RESTS = 1
    URGENT = (METRICS_FILE, EXIT_FILE)

    def __init__(self, run_dir: str, timeout_s: float) -> None:
        from watchfiles._rust_notify import RustNotify

        # Watching starts here: a line written before the first wait() is not missed.
        self._notify = RustNotify([run_dir], False, False, 100, False, False)
        self._timeout_s = timeout_s
        self._urgent = threading.Event()
        self._other = threading.Event()
        self._stop = threading.Event()
        self._woke = time.monotonic()
        self._thread = threading.Thread(target=self._follow, name="run-dir-watch", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        debounce_ms = int(self.MIN_INTERVAL_S * 1000)
        while not self._stop.is_set():
            changes = self._notify.watch(debounce_ms, 1, 1000, self._stop)
            if not isinstance(changes, set):
                continue
            if any(path.endswith(self.URGENT) for _, path in changes):
                self._urgent.set()
            else:
                self._other.set()

    def wait(self) -> None:
        """Return when the run reported something, other output waited long enough, or the
        timeout passed."""
        busy = time.monotonic() - self._woke
        # Resting matters only when more arrived while the caller worked (a run writing flat
        # out); a line that comes after a quiet spell is taken at once.
        pending = self._urgent.is_set() or self._other.is_set()
        rest = max(self.MIN_INTERVAL_S - busy, self.RESTS * busy if pending else 0.0)
        if rest > 0:
            time.sleep(rest)
        deadline = self._woke + self._timeout_s
        while not self._urgent.is_set():
            now = time.monotonic()
            if now >= deadline or (
                self._other.is_set() and now >= self._woke + self.LOG_INTERVAL_S
            ):
                break
            due = self._woke + self.LOG_INTERVAL_S if self._other.is_set() else now + 0.05
            self._urgent.wait(max(min(due, deadline) - now, 0.0))
        # What changes from here on is read by the caller or waits for the next wake.
        self._urgent.clear()
        self._other.clear()
        self._woke = time.monotonic()

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._notify.close()


def _dump(spy: str, pid: int, attempts: int = 3) -> str:
    """One process's stacks; py-spy reads a live process and can fail mid-read: retried."""
    text = ""
    for _ in range(attempts):
        try:
            done = subprocess.run(
                [spy, "dump", "--pid", str(pid)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"process {pid}: py-spy failed: {error}"
        text = done.stdout.strip() or done.stderr.strip()
        if done.returncode == 0:
            return text
        time.sleep(0.2)
    return f"process {pid}: {text}"


def _py_spy() -> str | None:
    # Installed with the platform (a console script next to this interpreter) or on PATH.
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def _leader_is_ours(handle: Handle) -> bool:
    # Guards against a recycled pid: the leader must be the very process we started.
    try:
        process = psutil.Process(int(handle["pid"]))
        return processes.is_same(process, handle) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pid_taken_by_another(handle: Handle) -> bool:
    try:
        return not processes.is_same(psutil.Process(int(handle["pid"])), handle)
    except psutil.Error:
        return False


def _members(handle: Handle) -> list[int]:
    """Live processes of the run's process group."""
    group = int(handle["pid"])
    leader_ours = _leader_is_ours(handle)
    if not leader_ours and _pid_taken_by_another(handle):
        # The kernel reuses no pid while a process group of that id exists, so another
        # process under our pid means our group is gone and any group there is theirs.
        return []
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE or os.getpgid(process.pid) != group:
                continue
        except (ProcessLookupError, psutil.Error):
            continue
        if process.pid == group and not leader_ours:
            continue
        # Without our leader, only processes born after it can be ours.
        try:
            if not leader_ours and processes.started_before(process, handle):
                continue
        except psutil.Error:
            continue
        found.append(process.pid)
    return found


def _group_alive(handle: Handle) -> bool:
    return _leader_is_ours(handle) or bool(_members(handle))


def _reap(pid: int) -> None:
    # The launcher is our child only in the process that started it; reap it there so it
    # does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
