"""The process a local run starts: it runs the plan's argv and records how it ended.

`python -I -S .../runners/launcher.py RUN_DIR` (or `python -m training_platform.runners.launcher
RUN_DIR`) is started in a new session, so the launcher leads the run's process group. It uses
the standard library only, so that it can start without site-packages. It runs the trainer as
its child with a clean environment, waits for it, stops any process the trainer left behind in
the group, and only then writes exit.json (atomically). exit.json is the only source of a run's
exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

PLAN_FILE = "plan.json"
LOG_FILE = "output.log"
METRICS_FILE = "metrics.jsonl"
EXIT_FILE = "exit.json"
CHILD_PID_FILE = "child.pid"
# Created by the platform to ask the trainer to save a checkpoint and exit (pause, time
# limit). Trainers that honour it check for it after every step, then exit EXIT_STOPPED.
STOP_FILE = "stop-request"
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on request at a checkpoint, not finished

# Variables the trainer inherits; everything else (TP_* settings and secrets above all)
# stays behind.
INHERITED = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "RAY_TMPDIR",
    "TORCHINDUCTOR_CACHE_DIR",
)


def child_environment(
    plan_env: dict[str, str], base: dict[str, str] | None = None
) -> dict[str, str]:
    """The trainer's environment: an allowlist of ours plus the plan's variables."""
    source = os.environ if base is None else base
    env = {name: source[name] for name in INHERITED if name in source}
    env.update(plan_env)
    return env


class Trainer(Protocol):
    """The started trainer, as the launcher uses it (a subprocess.Popen, or warm.py's fork)."""

    pid: int

    def send_signal(self, sig: int) -> None: ...

    def wait(self) -> int: ...


def popen(
    argv: list[str], cwd: Path, env: dict[str, str], log: Any, run_as: str | None = None
) -> Trainer:
    """Start the trainer as a new program (the cold start), as `run_as` (uid:gid) if given."""
    identity: dict[str, Any] = {}
    if run_as:
        uid, gid = (int(part) for part in run_as.split(":"))
        identity = {"user": uid, "group": gid, "extra_groups": []}
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        **identity,
    )


def write_new(path: Path, data: bytes) -> None:
    """Write a file the launcher owns into the run directory, where the trainer may have left
    any name: never through a symbolic link, always a file of its own (fsynced)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def open_log(path: Path) -> Any:
    """The run's log, appended to (never through a symbolic link)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    return os.fdopen(os.open(path, flags, 0o644), "ab", buffering=0)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    write_new(temporary, json.dumps(data).encode())
    temporary.replace(path)


def _log(log: Any, message: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    log.write(f"[launcher {stamp}] {message}\n".encode())


def _stop_stragglers(grace_s: float = 5.0) -> None:
    # Processes the trainer left in our group (data loader workers, helpers) must not outlive
    # the run; we are the group leader, so everything else in the group is theirs.
    me, group = os.getpid(), os.getpgid(0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        others = [pid for pid in _group_members(group) if pid != me]
        if not others:
            return
        for pid in others:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and [p for p in _group_members(group) if p != me]:
            time.sleep(0.1)


def _group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces) start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members


def run(run_dir: Path, start: Callable[..., Trainer] = popen, run_as: str | None = None) -> int:
    """Run the plan in run_dir to its end; return the trainer's return code.

    `start(argv, cwd, env, log, run_as)` starts the trainer (popen, or a fork from a warm
    server), as the user `run_as` ("uid:gid") when given."""
    plan = json.loads((run_dir / PLAN_FILE).read_text())
    argv = [str(a) for a in plan["argv"]]
    stop_requested: list[int] = []
    child: Trainer | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        # A signal aimed at the launcher alone still reaches the trainer; one that arrives
        # before the trainer exists is remembered and delivered as soon as it does.
        stop_requested.append(signum)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    with open_log(run_dir / LOG_FILE) as log:
        if stop_requested:  # stopped before the trainer even started: do not start it
            _log(log, f"stopped by {signal.Signals(stop_requested[-1]).name} before starting")
            _write_json_atomic(
                run_dir / EXIT_FILE,
                {
                    "returncode": -stop_requested[-1],
                    "signal": stop_requested[-1],
                    "finished_at": _now(),
                },
            )
            return -stop_requested[-1]
        env = child_environment({str(k): str(v) for k, v in plan.get("env", {}).items()})
        _log(log, f"starting {argv!r}")
        # The devices the trainer may use, as it sees them: leases are checked against this.
        _log(log, f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')}")
        try:
            child = start(argv, run_dir, env, log, run_as)
        except OSError as error:
            _log(log, f"could not start: {error}")
            _write_json_atomic(
                run_dir / EXIT_FILE,
                {"returncode": 127, "signal": None, "finished_at": _now(), "error": str(error)},
            )
            return 127
        write_new(run_dir / CHILD_PID_FILE, str(child.pid).encode())
        if stop_requested:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(stop_requested[-1])
        returncode = child.wait()
        _stop_stragglers()
        died_by = -returncode if returncode < 0 else None
        if died_by:
            _log(log, f"trainer killed by {signal.Signals(died_by).name}")
        else:
            _log(log, f"trainer exited with code {returncode}")
    _write_json_atomic(
        run_dir / EXIT_FILE,
        {"returncode": returncode, "signal": died_by, "finished_at": _now()},
    )
    return returncode


def _now() -> str:
    return datetime.now(UTC).isoformat()


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m training_platform.runners.launcher RUN_DIR [--as UID:GID]`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "--as"):
        print(
            "usage: python -m training_platform.runners.launcher RUN_DIR [--as UID:GID]",
            file=sys.stderr,
        )
        return 2
    run(Path(args[0]).resolve(), run_as=args[2] if len(args) == 3 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
