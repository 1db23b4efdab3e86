"""A Ray head of the platform's own: one node on loopback, token auth, owned by process group.

`start_head` runs `ray start --head --block` in a new session, so the `ray start` process
leads a process group that holds the GCS, the raylet, the dashboard and the agents. Ray
workers (the job supervisor actors, idle workers) get process groups of their own from the
raylet, and the launchers of running jobs sessions of their own; `stop_head` therefore
kills the group, every descendant of the head, and every process that names the head's temp
dir in its command line, and nothing else: other Ray clusters on the host are left alone.

What Ray 2.60 does that shapes this module (read in ray/scripts/scripts.py,
ray/_private/services.py, ray/_private/authentication/ and ray/dashboard/):

- Auth. `ray start --head` reads RAY_AUTH_MODE from its environment: "token" or "disabled"
  are obeyed; unset means token auth only if a token already exists (RAY_AUTH_TOKEN,
  the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, which any local `ray.init()`
  creates), else disabled. We set RAY_AUTH_MODE=token explicitly and point
  RAY_AUTH_TOKEN_PATH at a 0600 file holding a token we generate (256 bits, like Ray's own
  generator), so the token never appears in a command line or in the environment of Ray's
  workers, the launcher or the trainer. We choose token auth even on loopback because the
  Jobs API runs arbitrary commands as the platform's user: without a token any local user
  (or any local process, a trainer's included) could. The HTTP API then wants
  `Authorization: Bearer <token>` on everything but a few health paths (/api/version too).
- Loopback. On Linux `--node-ip-address=127.0.0.1` is silently replaced by the host's
  routable address, and the gRPC servers listen on it. Ray only keeps a loopback node IP in
  its single-machine mode, switched by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its name
  notwithstanding, it works on Linux): then the GCS, raylet, agents and dashboard all
  listen on 127.0.0.1, and no other node can join.
- Fixed default ports (dashboard agent 52365, Ray client 10001, dashboard metrics 44227,
  autoscaler metrics 44217) would collide with any other head on the host: we pass free
  ones.
- SIGTERM makes `ray start --block` drain the node for up to 30 s first; we turn that off
  (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0): this head serves no traffic worth draining.
- Unix sockets live under TEMP_DIR/session_<date>_<pid>/sockets/ and must fit in 107
  bytes, so a temp dir longer than SHORT_TEMP_DIR_MAX is reached through a short symlink
  under /tmp that Ray uses instead.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from training_platform.core import processes
from training_platform.runners.launcher import INHERITED

STATE_FILE = "head.json"
TOKEN_FILE = "auth_token"  # noqa: S105  (a file name, not a secret)
LOG_FILE = "head.log"
# Longest temp dir Ray's socket paths fit after: the longest is about
# TEMP_DIR/session_YYYY-MM-DD_HH-MM-SS_NNNNNN_PPPPPPP/sockets/dash_MetricsHead (70 bytes),
# within the 107 of AF_UNIX; kept with a margin for socket names of later versions.
SHORT_TEMP_DIR_MAX = 30
# SIGTERM to SIGKILL. Nothing in the head needs long (its state dies with it anyway); a
# raylet stopped soon after it started may sit on a SIGTERM for 10 s or more.
STOP_GRACE_S = 5.0
# The `ray start` processes this module started, so that stopping them also reaps them.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}
# Variables of ours that the head's environment may not carry: Ray would read them, or
# pass them to every job it runs.
_DROPPED_RAY_VARIABLES = (
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_AUTH_MODE",
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
)


class _ExitedAtStart(RuntimeError):
    """`ray start` ended before its head answered (a part of it failed to start)."""


def start_head(
    *,
    temp_dir: Path,
    port: int,
    dashboard_port: int,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    timeout_s: float = 90,
) -> str:
    """Start a loopback Ray head with token auth; return its Jobs API address once it and its
    node's agent answer.

    A head whose start fails is started once more, on fresh ports of its agents: a raylet
    exits when one of its agents cannot start, as when another Ray starting on the machine
    at the same moment takes a port it was given."""
    try:
        return _start_once(temp_dir, port, dashboard_port, num_cpus, num_gpus, timeout_s)
    except _ExitedAtStart:
        return _start_once(temp_dir, port, dashboard_port, num_cpus, num_gpus, timeout_s)


def _start_once(
    temp_dir: Path,
    port: int,
    dashboard_port: int,
    num_cpus: int | None,
    num_gpus: int | None,
    timeout_s: float,
) -> str:
    temp_dir = Path(temp_dir).absolute()
    state = _read_state(temp_dir)
    if state is not None:
        if _leader(state) is not None:
            raise RuntimeError(
                f"a Ray head started from {temp_dir} still runs (pid {state['pid']})"
            )
        stop_head(temp_dir)  # what a head that died left behind (an orphaned raylet...)
    for taken in (port, dashboard_port):
        # Ray waits for a GCS on a port someone else holds instead of failing: check first.
        if not _port_free(taken):
            raise RuntimeError(f"port {taken} on 127.0.0.1 is in use; choose another")
    temp_dir.mkdir(parents=True, exist_ok=True)
    temp_dir.chmod(0o700)
    ray_temp_dir = _ray_temp_dir(temp_dir)
    token_path = temp_dir / TOKEN_FILE
    _write_private(token_path, secrets.token_hex(32))
    address = f"http://127.0.0.1:{dashboard_port}"
    agent_port = _free_port()
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--ray-client-server-port={_free_port()}",
        f"--temp-dir={ray_temp_dir}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    with (temp_dir / LOG_FILE).open("ab") as log:
        process = subprocess.Popen(
            command,
            env=_head_environment(token_path),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _STARTED[process.pid] = process
    state = {
        **processes.identity(process.pid),
        "address": address,
        "port": port,
        "dashboard_port": dashboard_port,
        "temp_dir": str(temp_dir),
        "ray_temp_dir": str(ray_temp_dir),
        "token_file": str(token_path),
    }
    _write_private(temp_dir / STATE_FILE, json.dumps(state))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_head(temp_dir)
            raise _ExitedAtStart(
                f"ray start exited with code {process.returncode}:\n{_log_tail(temp_dir)}"
            )
        # The job list is served by the dashboard's job module, the last part to come up;
        # jobs are submitted through the node's agent, which answers once its raylet lives.
        token = token_path.read_text()
        if _answers(dashboard_port, "/api/jobs/", token) and _answers(
            agent_port, "/api/local_raylet_healthz", token
        ):
            return address
        time.sleep(0.25)
    stop_head(temp_dir)
    raise RuntimeError(
        f"the Ray head did not answer on {address} within {timeout_s:.0f}s:\n{_log_tail(temp_dir)}"
    )


def stop_head(temp_dir: Path, *, grace_s: float = STOP_GRACE_S) -> None:
    """Stop the head started from temp_dir and every process of it; no other Ray process."""
    temp_dir = Path(temp_dir).absolute()
    state = _read_state(temp_dir)
    if state is None:
        return
    markers = _markers(temp_dir, state)
    leader = _leader(state)
    # Workers leave the head's process group and get reparented when the raylet dies: take
    # the whole tree while it still hangs together.
    doomed = _ours(state, markers)
    if leader is not None:
        doomed.update({p.pid: p for p in _descendants(leader)})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if leader is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(state["pid"]), sig)
        for process in doomed.values():
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            doomed = {pid: p for pid, p in doomed.items() if _alive(p)}
            doomed.update(_ours(state, markers))
            if not doomed:
                break
            time.sleep(0.1)
        if not doomed:
            break
    started = _STARTED.pop(int(state["pid"]), None)
    if started is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.wait(timeout=5)
    alias = Path(str(state.get("ray_temp_dir") or temp_dir))
    if alias.is_symlink():  # the short alias of a long temp dir, in a directory of its own
        alias.unlink()
        with contextlib.suppress(OSError):
            alias.parent.rmdir()


def head_status(temp_dir: Path) -> dict[str, Any]:
    """The recorded head of temp_dir: pid, whether it is alive, its address and token file."""
    state = _read_state(Path(temp_dir).absolute())
    if state is None:
        return {"pid": None, "alive": False, "address": None, "token_file": None}
    return {
        "pid": state["pid"],
        "alive": _leader(state) is not None,
        "address": state["address"],
        "token_file": state["token_file"],
    }


def head_token(temp_dir: Path) -> str:
    """The auth token of the head started from temp_dir (for RayRunner's `token`)."""
    return (Path(temp_dir).absolute() / TOKEN_FILE).read_text().strip()


def _head_environment(token_path: Path) -> dict[str, str]:
    # An allowlist, like the launcher's: the platform's own settings and secrets would
    # otherwise reach every Ray worker and job. RAY_* tuning of the operator passes.
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # Ray counts the GPUs it may hand out from it
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    env.update(
        {
            name: value
            for name, value in os.environ.items()
            if name.startswith("RAY_") and name not in _DROPPED_RAY_VARIABLES
        }
    )
    env.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "DASHBOARD_METRIC_PORT": str(_free_port()),
            "AUTOSCALER_METRIC_PORT": str(_free_port()),
        }
    )
    return env


def _ray_temp_dir(temp_dir: Path) -> Path:
    """temp_dir itself when short enough for Ray's socket paths, else a short symlink to it."""
    if len(str(temp_dir).encode()) <= SHORT_TEMP_DIR_MAX:
        return temp_dir
    # The link lives in a fresh 0700 directory of ours, not at a guessable name in /tmp that
    # another user could create first or swap. /tmp itself, not TMPDIR: that may be long.
    private = Path(tempfile.mkdtemp(prefix="tp-ray-", dir="/tmp"))
    alias = private / "r"
    alias.symlink_to(temp_dir, target_is_directory=True)
    return alias


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start: the token must never be readable by others, not even
    # between a write and a chmod.
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # As servers do, so that a port in TIME_WAIT counts as free and one listened on not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(port: int, path: str, token: str) -> bool:
    """Whether the dashboard on the loopback port answers 200 to an authenticated GET."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _read_state(temp_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((temp_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


def _leader(state: dict[str, Any]) -> psutil.Process | None:
    """The recorded `ray start` process if it still lives (not a recycled pid)."""
    try:
        process = psutil.Process(int(state["pid"]))
        if processes.is_same(process, state) and _alive(process):
            return process
    except psutil.Error:
        pass
    return None


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return list(process.children(recursive=True))
    except psutil.Error:
        return []


def _markers(temp_dir: Path, state: dict[str, Any]) -> re.Pattern[str]:
    """Matches the head's temp dir (or its alias) as a whole path or a path's prefix."""
    paths = {str(temp_dir), str(state.get("ray_temp_dir") or temp_dir)}
    alternatives = "|".join(re.escape(path) for path in sorted(paths))
    return re.compile(f"(?:{alternatives})(?=/|\\s|$)")


def _ours(state: dict[str, Any], markers: re.Pattern[str]) -> dict[int, psutil.Process]:
    """Live processes in the head's process group or naming its temp dir in their argv."""
    group = int(state["pid"])
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            # A group id outlives no member, but an old process cannot belong to a group
            # made after it: the create time guards against a recycled leader pid.
            in_group = os.getpgid(process.pid) == group and not processes.started_before(
                process, state
            )
        except (ProcessLookupError, psutil.Error):
            continue
        command = " ".join(process.info["cmdline"] or ())
        if in_group or markers.search(command):
            found[process.pid] = process
    return found


def _log_tail(temp_dir: Path, size: int = 4000) -> str:
    try:
        return (temp_dir / LOG_FILE).read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"
