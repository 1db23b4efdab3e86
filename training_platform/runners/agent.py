"""The platform's hands on a remote host: `python -m training_platform.runners.agent VERB`.

The SSH runner runs this with the host's own Python (the environment `tp hosts bootstrap`
installs) and reads one JSON document from its stdout. It is the local runner, executed
over there: the same detached launcher, process group, exit.json and signals. Arguments
that carry data (plans, handles) arrive on stdin as JSON, never on the command line.

    info                      the host: Python, platform, GPUs (NVML / nvidia-smi), CPUs
    submit RUN_DIR            stdin: a plan (LaunchPlan.to_payload()); prints the handle
    find RUN_DIR              the handle recorded in RUN_DIR, or null
    poll|cancel|force-cancel|stop|suspend|resume|stack|pids      stdin: a handle
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training_platform.backends.base import LaunchPlan
from training_platform.runners.base import RunnerError
from training_platform.runners.local import LocalRunner

HANDLE_VERBS = ("poll", "cancel", "force-cancel", "stop", "suspend", "resume", "stack", "pids")


def info() -> dict[str, Any]:
    """What the platform needs to know of this host."""
    import training_platform
    from training_platform.scheduling.inventory import read_local

    reading = read_local(None)
    return {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform_version": training_platform.__version__,
        "platform_dir": str(Path(training_platform.__file__).resolve().parent),
        "home": str(Path.home()),
        "cpus": os.cpu_count() or 1,
        "gpu_source": reading.gpu_source,
        "gpus": [asdict(device) for device in reading.devices],
        "gpu_info": reading.info,
    }


def _handle_verb(runner: LocalRunner, verb: str, handle: dict[str, Any]) -> Any:
    if verb == "poll":
        return asdict(runner.poll(handle))
    if verb in ("cancel", "force-cancel"):
        runner.cancel(handle, force=verb == "force-cancel")
    elif verb == "stop":
        runner.request_stop(handle)
    elif verb == "suspend":
        runner.suspend(handle)
    elif verb == "resume":
        runner.resume(handle)
    elif verb == "stack":
        return runner.stack_dump(handle)
    elif verb == "pids":
        return runner.pids(handle)
    return None


def run(argv: list[str], stdin: str) -> Any:
    """Carry out one verb; the result is what gets printed as JSON."""
    if not argv:
        raise RunnerError("usage: agent VERB [RUN_DIR]")
    verb, rest = argv[0], argv[1:]
    runner = LocalRunner(node=socket.gethostname())
    if verb == "info":
        return info()
    if verb in ("submit", "find"):
        if len(rest) != 1 or not rest[0].startswith("/"):
            raise RunnerError(f"{verb} needs an absolute RUN_DIR")
        if verb == "find":
            return runner.find(rest[0])
        return runner.submit(LaunchPlan.from_dict(json.loads(stdin)), rest[0])
    if verb in HANDLE_VERBS:
        return _handle_verb(runner, verb, json.loads(stdin))
    raise RunnerError(f"unknown verb {verb!r}")


def main() -> int:
    """Entry point; prints {"ok": true, "result": ...} or {"ok": false, "error": ...}."""
    verb_args = sys.argv[1:]
    needs_stdin = bool(verb_args) and verb_args[0] not in ("info", "find")
    stdin = sys.stdin.read() if needs_stdin else ""
    try:
        result = {"ok": True, "result": run(verb_args, stdin)}
    except (RunnerError, OSError, ValueError, KeyError) as error:
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
