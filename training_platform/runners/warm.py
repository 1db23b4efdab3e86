"""Warm starts: a local run's launcher forked from a process that has already imported torch.

A trainer process spends its first seconds importing torch, transformers, TRL and datasets
(about 5 s of CPU on a small machine, every run). A warm server imports them once and then
forks, for each run, a launcher that forks the trainer: the run starts with the libraries in
memory. Everything else about the run is as on the cold path (launcher.py): the launcher leads
a new session and process group, the trainer is its child, exit.json is written the same way.

What keeps this exact:
- A server serves one environment. It is started with the trainer's environment (the
  launcher's allowlist plus the plan's variables) and its key hashes that environment, the
  interpreter, and the modification times of the installed packages and of the platform's
  trainer code; a run whose key matches no server is started cold. Libraries that read
  variables at import (OMP_NUM_THREADS, HF_HUB_OFFLINE) therefore read the run's own.
- It forks only what it can fork safely: a single thread and no GPU driver opened (checked
  after the imports; a server that fails either check refuses, records why, and is not
  started again for that key).
- It answers only processes of its own user (SO_PEERCRED), on a socket in a directory only
  that user can enter, and runs nothing but the named trainer modules in run directories the
  request names.
- The first run of a key starts the server in the background and itself starts cold; a
  server exits after `IDLE_EXIT_S` without a request. If anything in the warm path fails, the
  run starts cold.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from training_platform.core import confine
from training_platform.runners import launcher

_HF = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
)
# The trainer programs a server can run (one per server), and what it imports before forking.
PRELOAD: dict[str, tuple[str, ...]] = {
    "training_platform.trainers.trl_train": (
        *_HF,
        "datasets",
        "peft",
        "trl.trainer.sft_trainer",
        "trl.trainer.dpo_trainer",
    ),
    "training_platform.trainers.evaluate": _HF,
    "training_platform.trainers.merge": (
        *_HF,
        "peft",
        "mergekit.config",
        "mergekit.merge",
        "mergekit.options",
    ),
}
# Native threads that the libraries start at import and that survive a fork by design:
# pyarrow's jemalloc purges in a background thread, and its fork handlers restart it.
FORK_SAFE_THREADS = frozenset({"jemalloc_bg_thd"})
IDLE_EXIT_S = 900.0
SETTLE_S = 10.0  # how long a server waits for helper threads of the imports to end
REQUEST_TIMEOUT_S = 10.0  # the server's wait for a request
ANSWER_TIMEOUT_S = 120.0  # the client's wait for the forked launcher's pid
_CODE_DIRS = ("trainers", "runners")


def key(python: str, module: str, env: dict[str, str]) -> str:
    """What a server must match to start a run: interpreter, program, environment and the
    installed code."""
    digest = hashlib.sha256()
    digest.update(json.dumps([os.path.realpath(python), module, sorted(env.items())]).encode())
    digest.update(_fingerprint(python).encode())
    return digest.hexdigest()[:20]


def _fingerprint(python: str) -> str:
    # Installing, upgrading or removing a package changes its site-packages directory; an
    # edit of the platform's trainer code changes that file.
    stamps = []
    prefix = Path(python).resolve().parent.parent
    for site in sorted(prefix.glob("lib/python*/site-packages")):
        stamps.append(f"{site}:{site.stat().st_mtime_ns}")
    package = Path(__file__).resolve().parents[1]
    for name in _CODE_DIRS:
        for path in sorted((package / name).rglob("*.py")):
            stamps.append(f"{path.name}:{path.stat().st_mtime_ns}")
    return "\n".join(stamps)


def eligible(argv: list[str], python: str) -> bool:
    """Whether a plan's argv is a trainer a server can run: `<python> -m <module> ...`."""
    return (
        len(argv) >= 3
        and os.path.realpath(argv[0]) == os.path.realpath(python)
        and argv[1] == "-m"
        and argv[2] in PRELOAD
    )


def _private_dir(directory: Path) -> Path | None:
    """The servers' directory, created 0700; None when it is not ours alone."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700, parents=True)
    info = directory.lstat()
    if not directory.is_dir() or directory.is_symlink():
        return None
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return directory


class WarmStarter:
    """The client side, used by LocalRunner: start a run's launcher from a server, or say no."""

    def __init__(self, directory: Path, python: str) -> None:
        self.directory = directory
        self.python = python

    def start(
        self, run_dir: Path, argv: list[str], env: dict[str, str], run_as: str | None = None
    ) -> int | None:
        """The pid of a launcher a server forked for run_dir (its trainer to run as `run_as`,
        uid:gid, when given); None: start it cold."""
        if not eligible(argv, self.python):
            return None
        try:
            directory = _private_dir(self.directory)
            if directory is None:
                return None
            name = key(self.python, argv[2], env)
            path = directory / f"{name}.sock"
            if not path.exists():
                self._spawn(directory, name, argv[2], env)
                return None
            try:
                return _request(path, run_dir, run_as)
            except (ConnectionRefusedError, FileNotFoundError):
                # A server that died without removing its socket: start another.
                self._spawn(directory, name, argv[2], env)
                return None
        except (OSError, ValueError):
            return None

    def _spawn(self, directory: Path, name: str, module: str, env: dict[str, str]) -> None:
        if (directory / f"{name}.refused").exists():
            return
        with (directory / f"{name}.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a server holds it, or another process is starting one
            # No server lives (it would hold the lock): what is left of one is stale.
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{name}.sock").unlink()
            with (directory / f"{name}.log").open("ab") as log:
                subprocess.Popen(
                    [
                        self.python,
                        "-m",
                        "training_platform.runners.warm",
                        str(directory),
                        name,
                        module,
                        str(lock.fileno()),
                    ],
                    cwd=directory,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(lock.fileno(),),  # the server holds the lock while it lives
                )


def _request(path: Path, run_dir: Path, run_as: str | None = None) -> int | None:
    # Once the request is sent, the server may fork: the answer is awaited for long (a
    # server whose answer cannot be delivered kills the launcher it forked; see _answer).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(ANSWER_TIMEOUT_S)
        connection.connect(str(path))
        if _peer_uid(connection) != os.getuid():
            return None
        request = {"run_dir": str(run_dir), "run_as": run_as}
        connection.sendall(json.dumps(request).encode() + b"\n")
        answer = json.loads(_read_line(connection))
    pid = answer.get("pid")
    return pid if isinstance(pid, int) and pid > 0 else None


def _peer_uid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


def _read_line(connection: socket.socket, limit: int = 65536) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(4096)
        if not chunk or len(data) > limit:
            raise ValueError("incomplete message")
        data += chunk
    return data


# --- the server --------------------------------------------------------------------------


def _unsafe_to_fork() -> str | None:
    """Why forking this process would not give a trainer a clean start, if it would not."""
    if threading.active_count() > 1:
        return f"{threading.active_count()} Python threads after the imports"
    others = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            if int(task.name) != os.getpid():
                others.append((task / "comm").read_text().strip())
    unsafe = [name for name in others if name not in FORK_SAFE_THREADS]
    if unsafe:
        return f"threads {unsafe} after the imports"
    for entry in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if str(entry.readlink()).startswith("/dev/nvidia"):
                return "a GPU driver was opened during the imports"
    return None


def serve(
    directory: Path, name: str, module: str, lock: int, idle_exit_s: float = IDLE_EXIT_S
) -> int:
    """Import a trainer's libraries, then fork a launcher for each request until idle.

    `lock` is the descriptor of the key's lock file, held while this server lives."""
    started = time.monotonic()
    # Known from the start, so that stop_all finds a server still importing (tens of seconds
    # under load), and removed on every way out.
    pid_file = directory / f"{name}.pid"
    signal.signal(signal.SIGTERM, _exit_on_signal)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        return _serve(directory, name, module, lock, idle_exit_s, started)
    finally:
        with contextlib.suppress(OSError):
            pid_file.unlink()


def _serve(
    directory: Path, name: str, module: str, lock: int, idle_exit_s: float, started: float
) -> int:
    import importlib

    from training_platform.trainers.lean import skip_unused_imports

    # What the trainer program does before its first import (its main()). The program itself
    # is run afresh for each run, as `python -m` runs it: it must not stay imported here.
    program = importlib.import_module(module)
    defaults = dict(getattr(program, "HF_ENV_DEFAULTS", {}))
    del sys.modules[module]
    for variable, value in defaults.items():
        os.environ.setdefault(variable, value)
    skip_unused_imports()
    for name_ in PRELOAD[module]:
        importlib.import_module(name_)
    reason = _unsafe_to_fork()
    deadline = time.monotonic() + SETTLE_S
    while reason and time.monotonic() < deadline:  # threads some imports start and end
        time.sleep(0.5)
        reason = _unsafe_to_fork()
    if reason:
        (directory / f"{name}.refused").write_text(reason + "\n")
        print(f"refusing to serve: {reason}", flush=True)
        return 1
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the launchers are reaped by the kernel
    path = directory / f"{name}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = directory / f".{name}.{os.getpid()}.sock"
    listener.bind(str(temporary))
    temporary.chmod(0o600)
    listener.listen(16)
    temporary.replace(path)  # appears only once it answers
    print(f"serving {path} after {time.monotonic() - started:.1f} s of imports", flush=True)
    try:
        while True:
            ready, _, _ = select.select([listener], [], [], idle_exit_s)
            if not ready:
                return 0
            connection, _ = listener.accept()
            with connection:
                try:
                    _answer(connection, listener, module, lock)
                except Exception:  # one bad exchange must not end the server
                    traceback.print_exc()
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        listener.close()


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def stop_all(directory: Path) -> int:
    """SIGTERM the warm servers that listen in directory; how many there were."""
    stopped = 0
    for pid_file in directory.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"training_platform.runners.warm" in command:
                os.kill(pid, signal.SIGTERM)
                stopped += 1
    return stopped


def _answer(connection: socket.socket, listener: socket.socket, module: str, lock: int) -> None:
    connection.settimeout(REQUEST_TIMEOUT_S)
    try:
        if _peer_uid(connection) != os.getuid():
            return
        request = json.loads(_read_line(connection))
        run_dir = Path(str(request["run_dir"]))
        run_as = request.get("run_as")
        if run_as is not None and not re.fullmatch(r"[0-9]+:[0-9]+", str(run_as)):
            raise ValueError(f"run_as {run_as!r} is not uid:gid")
        if not (run_dir / launcher.PLAN_FILE).is_file():
            raise ValueError(f"no plan in {run_dir}")
        plan = json.loads((run_dir / launcher.PLAN_FILE).read_text())
        argv = [str(a) for a in plan["argv"]]
        if not eligible(argv, sys.executable) or argv[2] != module:
            raise ValueError("not the trainer this server runs")
    except (OSError, ValueError, KeyError, TypeError) as error:
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"error": str(error)}).encode() + b"\n")
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the launcher
        code = 1
        try:
            listener.close()
            connection.close()
            with contextlib.suppress(OSError):
                os.close(lock)
            code = _launch(run_dir, run_as)
        finally:
            os._exit(code)
    try:
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        # The client gave up and will start the run cold: this run must not start twice.
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # the launcher and the trainer it may have forked
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # a launcher that has not yet led its session
        raise


def _launch(run_dir: Path, run_as: str | None) -> int:
    """In the forked launcher: lead a new session, then run the plan as launcher.py does."""
    os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(run_dir)
    null = os.open(os.devnull, os.O_RDONLY)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    log = os.open(run_dir / "launcher.log", flags, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    launcher.run(run_dir, start=_fork_trainer, run_as=run_as)
    return 0


class _Forked:
    """The trainer as the launcher sees it: what it needs of a subprocess.Popen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def _fork_trainer(
    argv: list[str], cwd: Path, env: dict[str, str], log: Any, run_as: str | None = None
) -> _Forked:
    """Fork the trainer `python -m MODULE ARGS` with the libraries already imported, as the
    user `run_as` (uid:gid) when given."""
    module, arguments = argv[2], argv[3:]
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        launcher._log(log, f"trainer forked warm (pid {pid}): its libraries came imported")
        return _Forked(pid)
    code = 1
    try:
        if run_as:
            confine.become(run_as)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(cwd)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        log.close()
        os.environ.clear()
        os.environ.update(env)
        sys.path[0] = str(cwd)
        sys.argv = [argv[0], *arguments]
        code = _run_module(module)
    finally:
        os._exit(code)


def _run_module(module: str) -> int:
    """Run a module as `python -m` would, and shut down as the interpreter would."""
    import atexit
    import runpy

    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()  # waits for non-daemon threads, as the interpreter's exit does
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """`python -m training_platform.runners.warm DIRECTORY KEY MODULE LOCK_FD`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4 or args[2] not in PRELOAD:
        print(
            "usage: python -m training_platform.runners.warm DIRECTORY KEY MODULE LOCK_FD",
            file=sys.stderr,
        )
        return 2
    return serve(Path(args[0]), args[1], args[2], int(args[3]))


if __name__ == "__main__":
    sys.exit(main())
