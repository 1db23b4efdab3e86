"""Ray runner: runs a plan as a Ray job whose entrypoint is the platform's launcher.

The run directory lies on a filesystem that this machine and the Ray node share (the local
head of runners/ray_head.py, or a cluster mounting the platform's runs directory): plan and
files are written there, the launcher runs the trainer exactly as for a local run, and the
log, metrics and exit.json are read back from there. Ray only starts, watches and stops the
launcher; exit.json stays the source of truth for how a run ended.

What Ray 2.60 does that shapes this module (read in ray/dashboard/modules/job/,
ray/dashboard/modules/dashboard_sdk.py and ray/_private/authentication/):

- Auth. With token auth on (RAY_AUTH_MODE=token where the head started, or a token file
  present there when the mode is unset), every Jobs API path but a few health checks
  answers 401 without `Authorization: Bearer <token>` and 403 with a wrong one (the
  dashboard also accepts `X-Ray-Authorization`). JobSubmissionClient(headers=...) sends
  our headers on every request; it only adds a token of its own (RAY_AUTH_TOKEN,
  RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) when RAY_AUTH_MODE=token is set in *this*
  process and no Authorization header was given. So a runner with a `token` sends exactly
  that token and touches no environment; without one it sends none (unless this process
  opted in through RAY_AUTH_MODE=token). 401/403 arrive as ray.exceptions.AuthenticationError.
- RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, in this process's environment silently replace
  the address given to JobSubmissionClient; we refuse to run with one that differs from the
  host's address rather than talk to another cluster.
- The SDK sets no timeout on its HTTP requests; a subclass adds one so that a head that
  accepts connections and never answers cannot hang the supervisor.
- The entrypoint is run by `/bin/sh -c` in a new session (dash does not exec the last
  command), then stop_job SIGTERMs the entrypoint and its descendants and SIGKILLs them
  after RAY_JOB_STOP_WAIT_TIME_S (3 s by default), and a watcher SIGKILLs the whole group
  once the job ends. We `exec` the launcher so that it leads that session, as it expects
  (it stops stragglers of its process group, which would otherwise include the shell).
- entrypoint_num_gpus makes Ray reserve GPUs for the entrypoint and set its
  CUDA_VISIBLE_DEVICES; the launcher then gives the trainer the plan's own
  CUDA_VISIBLE_DEVICES (the platform's lease), so Ray's count only keeps the books.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from training_platform.backends.base import LaunchPlan
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
)

KIND = "ray"
HANDLE_FILE = "ray.json"
LAUNCHER_MODULE = "training_platform.runners.launcher"
REQUEST_TIMEOUT_S = 30.0
# How long a forced cancel lets the launcher record the trainer's death before killing it.
FORCE_GRACE_S = 5.0
_STREAM_FILES: dict[str, str] = {"log": LOG_FILE, "metrics": METRICS_FILE, **OUTPUT_FILES}
_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_LIVE = {JobStatus.PENDING, JobStatus.RUNNING}
_MESSAGE_MAX = 2000


class _HttpError(RuntimeError):
    """The Jobs API answered with an error status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"the Ray Jobs API answered {status}: {text.strip()[:500]}")
        self.status = status


class _Client(JobSubmissionClient):
    """JobSubmissionClient with a timeout on every request and errors that keep their status."""

    def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
        return super()._do_request(method, endpoint, **kwargs)

    def _raise_error(self, r: Any) -> None:
        raise _HttpError(int(r.status_code), str(r.text))

    def ray_version(self) -> str:
        """The Ray version the cluster runs."""
        response = self._do_request("GET", "/api/version")
        if response.status_code != 200:
            self._raise_error(response)
        return str(response.json()["ray_version"])


def check_address(address: str, *, token: str | None = None) -> str:
    """The Ray version of the cluster whose Jobs API answers at address (RunnerError if none)."""
    client = _connect(address.rstrip("/"), token)
    try:
        return client.ray_version()
    except Exception as error:
        raise _runner_error(address, error) from None


def _connect(address: str, token: str | None) -> _Client:
    for name in _ADDRESS_VARIABLES:
        value = os.environ.get(name)
        if value and value.rstrip("/") != address.rstrip("/"):
            raise RunnerError(
                f"{name}={value} is set in the platform's environment and would replace the "
                f"host's Ray address {address}; unset it"
            )
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return _Client(address, headers=headers)
    except Exception as error:
        raise _runner_error(address, error) from None


def _runner_error(address: str, error: Exception) -> RunnerError:
    """A RunnerError that says what went wrong talking to the Ray cluster at address."""
    if isinstance(error, RunnerError):
        return error
    if isinstance(error, AuthenticationError):
        # Ray's own message explains how to set up a token for its CLI, not for us.
        return RunnerError(
            f"the Ray cluster at {address} refused the request: {error.message.splitlines()[0]}; "
            "check the host's Ray token"
        )
    if isinstance(error, _HttpError):
        return RunnerError(f"{address}: {error}")
    if isinstance(error, OSError):  # refused, timed out, DNS (requests' errors are OSErrors)
        return RunnerError(f"cannot reach the Ray Jobs API at {address}: {error}")
    return RunnerError(f"the Ray Jobs API at {address} failed: {error}")


# How long a submission Ray does not know yet still counts as starting, not lost.
UNKNOWN_GRACE_S = 60.0


class RayRunner:
    """Start plans as Ray jobs on one registered Ray cluster."""

    kind = KIND

    def __init__(self, *, host: str, address: str, python: str, token: str | None = None) -> None:
        self.host = host
        self.address = address.rstrip("/")
        self.python = python
        self._token = token
        self._client: _Client | None = None

    def _jobs(self) -> _Client:
        # Connecting costs two version requests: reuse the client until a request fails.
        if self._client is None:
            self._client = _connect(self.address, self._token)
        return self._client

    def _forget_client(self) -> None:
        self._client = None

    def owns(self, handle: Handle) -> bool:
        """A Ray handle belongs to the runner of the host it was submitted to."""
        return handle.get("runner") == KIND and handle.get("host") == self.host

    def submit(self, plan: LaunchPlan, run_dir: str) -> Handle:
        """Write the plan and its files into run_dir, then submit the launcher as a Ray job."""
        # Absolute: the entrypoint runs in whatever directory Ray gives it.
        directory = Path(run_dir).absolute()
        existing = self.find(run_dir)
        if existing is not None and self.poll(existing).status == "running":
            raise RunnerError(f"a run is already alive in {run_dir}")
        write_run_dir(plan, directory, PLAN_FILE)
        submission_id = _submission_id(directory)
        handle: Handle = {
            "runner": KIND,
            "host": self.host,
            "address": self.address,
            "submission_id": submission_id,
            "run_dir": str(directory),
            "submitted_at": time.time(),
        }
        # Recorded before submitting: a crash in between leaves a handle that polls as lost
        # rather than a job nobody can find again.
        (directory / HANDLE_FILE).write_text(json.dumps(handle))
        # `exec`: the launcher must replace Ray's `sh -c` and lead the job's session.
        entrypoint = shlex.join(["exec", self.python, "-m", LAUNCHER_MODULE, str(directory)])
        try:
            self._jobs().submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                # The launcher applies the plan's environment itself, from plan.json.
                runtime_env={},
                metadata={"platform_host": self.host, "run_dir": str(directory)},
                entrypoint_num_cpus=1,
                entrypoint_num_gpus=_gpu_count(plan),
            )
        except Exception as error:
            (directory / HANDLE_FILE).unlink(missing_ok=True)
            self._forget_client()
            raise _runner_error(self.address, error) from None
        return handle

    def find(self, run_dir: str) -> Handle | None:
        """The handle recorded in run_dir by an earlier submit."""
        try:
            handle: Handle = json.loads((Path(run_dir) / HANDLE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return handle

    def poll(self, handle: Handle) -> RunState:
        """Running while Ray runs the job; then exit.json, or Ray's word without one."""
        details = self._details(str(handle["submission_id"]))
        if details is not None and details.status in _LIVE:
            return RunState("running")
        ended = _exit_record(handle)
        if ended is not None:
            return ended
        if details is None:
            # Ray's job table can lag behind a fresh submission, and a head restart forgets
            # runs whose launcher still lives here: the process decides, then a grace period.
            if _launcher_of(Path(handle["run_dir"]).absolute()) is not None:
                return RunState("running")
            if time.time() - float(handle.get("submitted_at", 0.0)) < UNKNOWN_GRACE_S:
                return RunState("running")
            return RunState(
                "lost",
                detail=f"Ray knows no job {handle['submission_id']} (was the head restarted?)",
            )
        if details.status == JobStatus.STOPPED:
            return RunState(
                "exited",
                exit_code=-int(signal.SIGTERM),
                signal=int(signal.SIGTERM),
                detail="stopped through Ray",
            )
        return RunState("lost", detail=_shorten(details.message or f"Ray job {details.status}"))

    def read(self, handle: Handle, stream: Stream, offset: int, limit: int) -> bytes:
        """Bytes of the run's log or metrics file from offset (empty if not written yet)."""
        return read_stream(handle["run_dir"], _STREAM_FILES[stream], offset, limit)

    def cancel(self, handle: Handle, *, force: bool) -> None:
        """Stop the Ray job (SIGTERM, SIGKILL after Ray's wait); force kills what is left now.

        Forcing kills, on this machine, the launcher's process group and any process working
        in the run directory: a run on another node is left to Ray's own escalation.
        """
        failure: RunnerError | None = None
        try:
            self._jobs().stop_job(str(handle["submission_id"]))
        except _HttpError as error:
            if error.status != 404:  # a job Ray forgot has nothing left to stop through Ray
                failure = _runner_error(self.address, error)
        except RunnerError as error:
            failure = error
        except Exception as error:
            self._forget_client()
            failure = _runner_error(self.address, error)
        if force:
            _kill_local(Path(handle["run_dir"]))
        if failure is not None:
            raise failure

    def request_stop(self, handle: Handle) -> None:
        """Create the stop file the trainer looks for after each step."""
        path = Path(handle["run_dir"]) / STOP_FILE
        if not path.exists():
            path.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))

    def suspend(self, handle: Handle) -> None:
        """Not possible through Ray."""
        raise RunnerError("the Ray runner cannot suspend a run; pause with a checkpoint instead")

    def resume(self, handle: Handle) -> None:
        """Not possible through Ray."""
        raise RunnerError("the Ray runner cannot resume a run; pause with a checkpoint instead")

    def stack_dump(self, handle: Handle) -> str | None:
        """Not available through Ray."""
        return None

    def _details(self, submission_id: str) -> JobDetails | None:
        """Ray's record of the job, None if Ray has none; RunnerError if Ray cannot be asked."""
        try:
            return self._jobs().get_job_info(submission_id)
        except _HttpError as error:
            if error.status == 404:
                return None
            raise _runner_error(self.address, error) from None
        except Exception as error:
            self._forget_client()
            raise _runner_error(self.address, error) from None


def _submission_id(directory: Path) -> str:
    """Unique per submit; names the run directory so that Ray's job list is readable."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", directory.name).strip("-")[:40] or "run"
    return f"tp-{slug}-{uuid.uuid4().hex[:8]}"


def _gpu_count(plan: LaunchPlan) -> int:
    devices = plan.env.get("CUDA_VISIBLE_DEVICES", "")
    return len([d for d in devices.split(",") if d.strip()])


def _exit_record(handle: Handle) -> RunState | None:
    """How the launcher recorded the end of the run, if it did."""
    try:
        ended = json.loads((Path(handle["run_dir"]) / EXIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    died_by = ended.get("signal")
    return RunState(
        "exited",
        exit_code=int(ended["returncode"]),
        signal=int(died_by) if died_by else None,
        detail=str(ended.get("error", "")),
    )


def _shorten(message: str) -> str:
    # Ray's message on failure carries up to 20,000 characters of log tail; the end matters.
    message = message.strip()
    return message if len(message) <= _MESSAGE_MAX else "..." + message[-_MESSAGE_MAX:]


def _kill_local(run_dir: Path) -> None:
    """SIGKILL the run's processes on this machine: trainer side first, then the launcher."""
    launcher = _launcher_of(run_dir)
    group = None
    if launcher is not None:
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            group = os.getpgid(launcher.pid)
    # Everything but the launcher, so that it can still record the SIGKILL in exit.json.
    for process in _run_processes(run_dir, group):
        if launcher is None or process.pid != launcher.pid:
            with contextlib.suppress(psutil.Error):
                process.kill()
    if launcher is not None:
        with contextlib.suppress(psutil.Error):
            launcher.wait(timeout=FORCE_GRACE_S)
    left = _run_processes(run_dir, group)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    # A SIGKILL takes effect asynchronously: return once they are really gone.
    psutil.wait_procs(left, timeout=FORCE_GRACE_S)


def _launcher_of(run_dir: Path) -> psutil.Process | None:
    """The live launcher process of run_dir on this machine (its argv names the run dir)."""
    tail = ["-m", LAUNCHER_MODULE, str(run_dir)]
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if command[-3:] == tail:
            return process
    return None


def _run_processes(run_dir: Path, group: int | None) -> list[psutil.Process]:
    """Live processes of the launcher's group, or working inside the run directory."""
    run_dir = run_dir.resolve()  # the launcher gives the trainer the resolved path as cwd
    found = []
    for process in psutil.process_iter(["cwd", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cwd = process.info["cwd"]
        inside = bool(cwd) and Path(cwd).is_relative_to(run_dir)
        try:
            member = group is not None and os.getpgid(process.pid) == group
        except ProcessLookupError:
            continue
        if inside or member:
            found.append(process)
    return found
