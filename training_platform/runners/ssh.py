"""SSH runner: runs plans on a remote host through paramiko, exactly as the local runner does.

Every remote action is the local runner executed there by `runners/agent.py` with the host's
own Python: the same detached launcher in its own process group, the same exit.json. Files
travel over SFTP: inputs are uploaded once per content hash into WORK_ROOT/cache, logs and
metrics are read back by byte offset (so a dropped connection loses or repeats nothing).

Host keys are pinned: a connection compares the key the server presents with the one stored
when the user confirmed its fingerprint, and refuses a different one. Commands are argv
lists joined with shlex for the remote shell; secrets never appear in a command line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import posixpath
import shlex
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from training_platform.backends.base import LaunchPlan
from training_platform.runners.base import OUTPUT_FILES, Handle, RunnerError, RunState, Stream
from training_platform.runners.launcher import EXIT_FILE, LOG_FILE, METRICS_FILE, STOP_FILE

if TYPE_CHECKING:  # imported where used: processes that never open SSH never load it
    import paramiko

log = logging.getLogger(__name__)

KIND = "ssh"
AGENT = "training_platform.runners.agent"
_STREAM_FILES: dict[str, str] = {"log": LOG_FILE, "metrics": METRICS_FILE, **OUTPUT_FILES}
# Backoff between reconnection attempts after a dropped connection (seconds).
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# How long a "still running" answer of the agent is trusted before asking again.
LIVENESS_TTL_S = 5.0
_T = TypeVar("_T")


class Unreachable(RunnerError):
    """The host does not answer (DNS, refused, timeout, dropped)."""


class AuthenticationFailed(RunnerError):
    """The server refused the user's password or key."""


class HostKeyMismatch(RunnerError):
    """The server presented another key than the pinned (or confirmed) one."""

    def __init__(self, host: str, expected: str, presented: str) -> None:
        super().__init__(
            f"the host key of {host} changed: recorded {expected}, presented {presented}. "
            "This may be an attack; if the server was reinstalled, check the new fingerprint "
            "out of band and accept it with `tp hosts trust-key`"
        )
        self.expected = expected
        self.presented = presented


def fingerprint(key_bytes: bytes) -> str:
    """OpenSSH's fingerprint of a public key blob: SHA256:<base64, no padding>."""
    digest = base64.b64encode(hashlib.sha256(key_bytes).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


@dataclass(frozen=True)
class HostKey:
    """A server's public host key."""

    key_type: str
    base64: str

    @property
    def fingerprint(self) -> str:
        """SHA256 fingerprint, as ssh-keygen -l prints it."""
        return fingerprint(base64.b64decode(self.base64))


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to log in; `secret` is the password or private key text."""

    name: str
    address: str
    port: int
    user: str
    auth: str  # password | key
    secret: str = field(repr=False)
    host_key: HostKey | None = None  # None: only scan_host_key may connect
    timeout_s: float = 10.0


def load_private_key(text: str) -> paramiko.PKey:
    """A private key from its text (OpenSSH or PEM; ed25519, ECDSA or RSA)."""
    import paramiko

    errors = []
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError) as error:
            errors.append(type(error).__name__)
    raise AuthenticationFailed(
        "the private key cannot be read (an unencrypted ed25519, ECDSA or RSA key is needed)"
    )


def _open_transport(address: str, port: int, timeout_s: float) -> paramiko.Transport:
    import paramiko

    try:
        sock = socket.create_connection((address, port), timeout=timeout_s)
    except OSError as error:
        raise Unreachable(f"cannot reach {address}:{port}: {error.strerror or error}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout_s)
    except (paramiko.SSHException, OSError, EOFError) as error:
        transport.close()
        raise Unreachable(f"{address}:{port} does not speak SSH: {error}") from None
    return transport


def scan_host_key(address: str, port: int, timeout_s: float = 10.0) -> HostKey:
    """The key a server presents, without logging in (for the user to confirm)."""
    transport = _open_transport(address, port, timeout_s)
    try:
        key = transport.get_remote_server_key()
        return HostKey(key.get_name(), key.get_base64())
    finally:
        transport.close()


class SshSession:
    """One authenticated connection: run argv lists, move files. Thread-safe."""

    def __init__(self, target: SshTarget) -> None:
        if target.host_key is None:
            raise RunnerError(f"host {target.name} has no confirmed host key")
        self.target = target
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()

    def connect(self) -> None:
        """Open the connection if it is not open: pinned host key first, then the login."""
        import paramiko

        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return
            self.close()
            target = self.target
            assert target.host_key is not None
            transport = _open_transport(target.address, target.port, target.timeout_s)
            try:
                presented = transport.get_remote_server_key()
                if (presented.get_name(), presented.get_base64()) != (
                    target.host_key.key_type,
                    target.host_key.base64,
                ):
                    raise HostKeyMismatch(
                        target.name,
                        target.host_key.fingerprint,
                        fingerprint(presented.asbytes()),
                    )
                try:
                    if target.auth == "password":
                        transport.auth_password(target.user, target.secret)
                    else:
                        transport.auth_publickey(target.user, load_private_key(target.secret))
                except paramiko.AuthenticationException:
                    raise AuthenticationFailed(
                        f"{target.address}:{target.port} refused the {target.auth} of user "
                        f"{target.user!r}"
                    ) from None
                except (paramiko.SSHException, OSError, EOFError) as error:
                    raise Unreachable(f"login to {target.name} failed: {error}") from None
                transport.set_keepalive(15)
            except BaseException:
                transport.close()
                raise
            self._transport = transport

    def close(self) -> None:
        """Drop the connection (the next call reconnects)."""
        with self._lock:
            if self._sftp is not None:
                with contextlib.suppress(Exception):
                    self._sftp.close()
            if self._transport is not None:
                with contextlib.suppress(Exception):
                    self._transport.close()
            self._sftp, self._transport = None, None

    def _live_transport(self) -> paramiko.Transport:
        self.connect()
        assert self._transport is not None
        return self._transport

    def run(
        self, argv: list[str], *, stdin: bytes = b"", timeout_s: float = 120.0
    ) -> tuple[int, bytes, bytes]:
        """Run argv (joined with shlex for the remote shell); (exit status, stdout, stderr)."""
        import paramiko

        try:
            channel = self._live_transport().open_session(timeout=self.target.timeout_s)
        except (paramiko.SSHException, OSError, EOFError) as error:
            self.close()
            raise Unreachable(f"cannot open a channel to {self.target.name}: {error}") from None
        out, err = bytearray(), bytearray()
        try:
            channel.settimeout(timeout_s)
            channel.exec_command(shlex.join(argv))
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            deadline = time.monotonic() + timeout_s
            while True:
                while channel.recv_ready():
                    out += channel.recv(65536)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                if channel.exit_status_ready() and not channel.recv_ready():
                    while channel.recv_stderr_ready():
                        err += channel.recv_stderr(65536)
                    break
                if time.monotonic() > deadline:
                    raise Unreachable(f"{argv[0]} on {self.target.name} took over {timeout_s} s")
                if self._transport is None or not self._transport.is_active():
                    raise Unreachable(f"the connection to {self.target.name} dropped")
                time.sleep(0.01)
            return channel.recv_exit_status(), bytes(out), bytes(err)
        except (paramiko.SSHException, OSError, EOFError) as error:
            self.close()
            raise Unreachable(f"the connection to {self.target.name} dropped: {error}") from None
        finally:
            channel.close()

    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP client (callers hold `lock` while they use it)."""
        import paramiko

        with self._lock:
            if self._sftp is None:
                try:
                    self._sftp = self._live_transport().open_sftp_client()
                except (paramiko.SSHException, OSError, EOFError) as error:
                    self.close()
                    raise Unreachable(f"SFTP to {self.target.name} failed: {error}") from None
            return self._sftp

    @property
    def lock(self) -> threading.RLock:
        """Held around SFTP use: one SFTP channel serves one request at a time."""
        return self._lock


_SESSIONS: dict[tuple[str, str, int, str, str], SshSession] = {}
_BACKOFF: dict[str, tuple[int, float]] = {}  # host -> (failures in a row, no attempt before)
_BACKOFF_LOCK = threading.Lock()
_SESSIONS_LOCK = threading.Lock()


def session_for(target: SshTarget) -> SshSession:
    """The process's connection to a target (one per host, login and pinned key)."""
    assert target.host_key is not None
    key = (target.name, target.address, target.port, target.user, target.host_key.base64)
    secret_id = hashlib.sha256(target.secret.encode()).hexdigest()
    with _SESSIONS_LOCK:
        found = _SESSIONS.get(key)
        if found is not None and hashlib.sha256(found.target.secret.encode()).hexdigest() == (
            secret_id
        ):
            return found
        if found is not None:
            found.close()
        created = SshSession(target)
        _SESSIONS[key] = created
        return created


def close_session(target: SshTarget) -> None:
    """Close the process's connection to a target: the next call logs in (and checks) anew."""
    session_for(target).close()


def _is_missing(error: OSError) -> bool:
    return isinstance(error, FileNotFoundError) or getattr(error, "errno", None) == 2


class SshRunner:
    """Runs plans on one remote host (see the module docstring)."""

    kind = KIND

    def __init__(
        self,
        target: SshTarget,
        *,
        python: str,
        work_root: str,
    ) -> None:
        self.target = target
        self.python = python
        self.work_root = work_root.rstrip("/")
        self.run_root = f"{self.work_root}/runs"
        self._alive_until: dict[str, float] = {}

    # --- plumbing ------------------------------------------------------------------------

    def _with_retry(self, action: Callable[[SshSession], _T]) -> _T:
        """Run an action; a dropped connection is reopened once at once, then with backoff.

        After a failed reconnection the host is left alone for a growing delay (0.5 s up to
        RECONNECT_DELAYS[-1]); calls in that time fail fast, so a supervisor pass never
        sleeps on one dead host while others wait. Reads go by offset, so nothing is lost
        or repeated across the gap.
        """
        name = self.target.name
        with _BACKOFF_LOCK:
            failures, retry_at = _BACKOFF.get(name, (0, 0.0))
        wait = retry_at - time.monotonic()
        if wait > 0:
            raise Unreachable(f"{name} is unreachable; next attempt in {wait:.1f} s")
        session = session_for(self.target)
        for last in (False, True):
            try:
                result = action(session)
            except Unreachable as error:
                session.close()
                if not last:
                    continue
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                with _BACKOFF_LOCK:
                    _BACKOFF[name] = (failures + 1, time.monotonic() + delay)
                log.warning("host %s: %s; next attempt in %.1f s", name, error, delay)
                raise
            if failures:
                with _BACKOFF_LOCK:
                    _BACKOFF.pop(name, None)
                log.info("host %s: connection restored", name)
            return result
        raise AssertionError("unreachable")

    def agent(self, verb: str, *args: str, payload: Any = None, timeout_s: float = 120.0) -> Any:
        """Run the agent on the host and return its result (RunnerError when it failed)."""
        stdin = json.dumps(payload).encode() if payload is not None else b""
        argv = [self.python, "-m", AGENT, verb, *args]
        code, out, err = self._with_retry(lambda s: s.run(argv, stdin=stdin, timeout_s=timeout_s))
        lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        try:
            answer = json.loads(lines[-1])
        except (IndexError, ValueError):
            tail = err.decode(errors="replace").strip()[-600:]
            raise RunnerError(
                f"the platform's agent did not answer on {self.target.name} (exit {code}): "
                f"{tail or 'no output'}; is the environment {self.python} bootstrapped?"
            ) from None
        if not answer.get("ok"):
            raise RunnerError(f"{self.target.name}: {answer.get('error')}")
        return answer.get("result")

    # --- files ---------------------------------------------------------------------------

    def _mkdirs(self, sftp: paramiko.SFTPClient, path: str) -> None:
        parts = path.strip("/").split("/")
        current = ""
        for part in parts:
            current += f"/{part}"
            try:
                sftp.stat(current)
            except OSError as error:
                if not _is_missing(error):
                    raise
                with contextlib.suppress(OSError):
                    sftp.mkdir(current, 0o755)

    def upload(self, local: Path, digest: str) -> str:
        """Copy a file or directory into WORK_ROOT/cache/<digest>/<name> unless it is there.

        The copy is made under a temporary name and renamed at the end, so a present
        target is always complete.
        """
        import paramiko

        target = f"{self.work_root}/cache/{digest}/{local.name}"

        def send(session: SshSession) -> str:
            with session.lock:
                sftp = session.sftp()
                try:
                    sftp.stat(target)
                    return target  # uploaded before: same content, same name
                except OSError as error:
                    if not _is_missing(error):
                        raise
                parent = posixpath.dirname(target)
                self._mkdirs(sftp, parent)
                partial = f"{parent}/.partial-{uuid.uuid4().hex[:8]}-{local.name}"
                try:
                    if local.is_dir():
                        self._mkdirs(sftp, partial)
                        for item in sorted(local.rglob("*")):
                            remote = f"{partial}/{item.relative_to(local).as_posix()}"
                            if item.is_dir():
                                self._mkdirs(sftp, remote)
                            elif item.is_file():
                                sftp.put(str(item), remote)
                    else:
                        sftp.put(str(local), partial)
                    sftp.posix_rename(partial, target)
                except (OSError, paramiko.SSHException, EOFError) as error:
                    session.close()
                    raise Unreachable(f"upload of {local.name} failed: {error}") from None
                return target

        return self._with_retry(send)

    def exists(self, path: str) -> bool:
        """Whether a path exists on the host."""

        def probe(session: SshSession) -> bool:
            with session.lock:
                try:
                    session.sftp().stat(path)
                    return True
                except OSError as error:
                    if _is_missing(error):
                        return False
                    session.close()
                    raise Unreachable(str(error)) from None

        return self._with_retry(probe)

    def _read_file(self, path: str, offset: int, limit: int) -> bytes | None:
        import paramiko

        def fetch(session: SshSession) -> bytes | None:
            with session.lock:
                try:
                    with session.sftp().open(path, "rb") as remote:
                        remote.seek(offset)
                        return bytes(remote.read(limit))
                except OSError as error:
                    if _is_missing(error):
                        return None
                    session.close()
                    raise Unreachable(f"reading {path} failed: {error}") from None
                except (paramiko.SSHException, EOFError) as error:
                    session.close()
                    raise Unreachable(f"reading {path} failed: {error}") from None

        return self._with_retry(fetch)

    def list_dir(self, path: str) -> list[tuple[str, bool, int]]:
        """(name, is_dir, size) of each entry of a remote directory."""

        def listing(session: SshSession) -> list[tuple[str, bool, int]]:
            with session.lock:
                try:
                    entries = session.sftp().listdir_attr(path)
                except OSError as error:
                    if _is_missing(error):
                        return []
                    raise Unreachable(str(error)) from None
                return [
                    (e.filename, stat.S_ISDIR(e.st_mode or 0), int(e.st_size or 0)) for e in entries
                ]

        return self._with_retry(listing)

    # --- the Runner protocol -------------------------------------------------------------

    def owns(self, handle: Handle) -> bool:
        """Any manager process can reach the host; the handle names which one."""
        return handle.get("runner") == KIND and handle.get("host") == self.target.name

    def submit(self, plan: LaunchPlan, run_dir: str) -> Handle:
        """Start the plan in run_dir on the host (the agent writes its files there)."""
        if not run_dir.startswith(f"{self.run_root}/"):
            raise RunnerError(f"{run_dir} is outside the host's run root {self.run_root}")
        inner = self.agent("submit", run_dir, payload=plan.to_payload())
        return {"runner": KIND, "host": self.target.name, "run_dir": run_dir, "remote": inner}

    def find(self, run_dir: str) -> Handle | None:
        """The run already started in run_dir on the host, if any."""
        inner = self.agent("find", run_dir)
        if inner is None:
            return None
        return {"runner": KIND, "host": self.target.name, "run_dir": run_dir, "remote": inner}

    def poll(self, handle: Handle) -> RunState:
        """exit.json ends it; while there is none, the agent says whether the group lives."""
        run_dir = str(handle["run_dir"])
        ended = self._read_file(f"{run_dir}/{EXIT_FILE}", 0, 1 << 16)
        if ended:
            try:
                record = json.loads(ended)
                return RunState(
                    "exited",
                    exit_code=int(record["returncode"]),
                    signal=record.get("signal"),
                    detail=str(record.get("error", "")),
                )
            except (ValueError, KeyError):
                pass  # being written: ask the agent
        if time.monotonic() < self._alive_until.get(run_dir, 0.0):
            return RunState("running")
        state = self.agent("poll", payload=handle["remote"])
        if state["status"] == "running":
            self._alive_until[run_dir] = time.monotonic() + LIVENESS_TTL_S
        return RunState(
            state["status"],
            exit_code=state.get("exit_code"),
            signal=state.get("signal"),
            detail=str(state.get("detail") or ""),
        )

    def read(self, handle: Handle, stream: Stream, offset: int, limit: int) -> bytes:
        """Bytes of the run's log or metrics file from offset, over SFTP."""
        data = self._read_file(f"{handle['run_dir']}/{_STREAM_FILES[stream]}", offset, limit)
        return data or b""

    def cancel(self, handle: Handle, *, force: bool) -> None:
        """SIGTERM (or SIGKILL) the run's whole process group on the host."""
        self._alive_until.pop(str(handle["run_dir"]), None)
        self.agent("force-cancel" if force else "cancel", payload=handle["remote"])

    def request_stop(self, handle: Handle) -> None:
        """Create the stop file in the remote run directory."""
        run_dir = str(handle["run_dir"])

        def write(session: SshSession) -> None:
            with session.lock, session.sftp().open(f"{run_dir}/{STOP_FILE}", "w") as remote:
                remote.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))

        self._with_retry(write)

    def suspend(self, handle: Handle) -> None:
        """SIGSTOP the run's process group on the host."""
        self.agent("suspend", payload=handle["remote"])

    def resume(self, handle: Handle) -> None:
        """SIGCONT the run's process group on the host."""
        self._alive_until.pop(str(handle["run_dir"]), None)
        self.agent("resume", payload=handle["remote"])

    def stack_dump(self, handle: Handle) -> str | None:
        """py-spy's dump of the run's processes, taken on the host."""
        result = self.agent("stack", payload=handle["remote"], timeout_s=180)
        return str(result) if result else None

    def pids(self, handle: Handle) -> list[int]:
        """Live processes of the run on the host."""
        return [int(pid) for pid in self.agent("pids", payload=handle["remote"])]
