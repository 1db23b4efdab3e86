"""Which process a recorded pid is: identity by start time, immune to wall-clock steps.

A pid is recycled, so a recorded process is (pid, start time). The start time is taken as
seconds since boot (the kernel's own count, /proc/PID/stat), never as a wall-clock time:
psutil's epoch create_time is the boot time read from /proc/stat plus that count, and the
boot time moves whenever the system clock is stepped (NTP, a virtual machine resumed), which
made a live process look like another one. Records written before this (only an epoch
`create_time`) are still compared the old way.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

# How much lower than its caller a bookkeeping thread runs (the nice value added).
BACKGROUND_NICE = 10

# Start times are kept in clock ticks (1/100 s); a tick of slack for rounding.
SAME_START_S = 0.05
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def started_s(process: psutil.Process) -> float:
    """Seconds after boot at which process started (field 22 of /proc/PID/stat).

    Where there is no /proc, psutil's create_time stands in (an epoch time, so still
    subject to clock steps there)."""
    try:
        data = Path(f"/proc/{process.pid}/stat").read_bytes()
    except FileNotFoundError:
        if not Path("/proc/self").is_dir():
            return float(process.create_time())
        raise psutil.NoSuchProcess(process.pid) from None
    except OSError as error:
        raise psutil.AccessDenied(process.pid) from error
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19]) / _TICKS


def identity(pid: int) -> dict[str, Any]:
    """What to record about a process just started, to know it again later."""
    try:
        process = psutil.Process(pid)
        return {
            "pid": pid,
            "create_time": process.create_time(),  # for people and older readers
            "started_s": started_s(process),
        }
    except psutil.Error:  # gone already: no live process will match this record
        return {"pid": pid, "create_time": 0.0, "started_s": -1.0}


def is_same(process: psutil.Process, record: dict[str, Any]) -> bool:
    """Whether process is the one the record names (not another under a recycled pid)."""
    if record.get("started_s") is not None:
        return abs(started_s(process) - float(record["started_s"])) < SAME_START_S
    return abs(process.create_time() - float(record["create_time"])) < 1.0


def started_before(process: psutil.Process, record: dict[str, Any], slack_s: float = 1.0) -> bool:
    """Whether process started more than slack_s before the recorded one (so it cannot be its
    child or a member of a group it made)."""
    if record.get("started_s") is not None:
        return started_s(process) < float(record["started_s"]) - slack_s
    return process.create_time() < float(record["create_time"]) - slack_s


def thread_nice() -> int:
    """The calling thread's nice value (Linux keeps one per thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def at_low_priority(work: Callable[[], T], name: str = "low-priority") -> T:
    """Run work in a thread of its own, BACKGROUND_NICE lower in CPU priority, and return
    what it returns (or raise what it raised).

    For bookkeeping that must not compete with what people wait for: a worker watching a run
    (ingesting its metrics and logs) yields the CPU to the trainer and to the API's requests.
    Only that thread is lowered: the calling thread keeps its priority, and so do the
    processes it starts later (a child inherits the nice value of the thread that forks it).
    Elsewhere than on Linux the work runs in the calling thread, unchanged.
    """
    if sys.platform != "linux":
        return work()
    result: list[T] = []
    raised: list[BaseException] = []

    def body() -> None:
        try:
            lowered = min(19, thread_nice() + BACKGROUND_NICE)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), lowered)
        except OSError:
            pass  # not allowed here: run at the caller's priority
        try:
            result.append(work())
        except BaseException as error:  # handed to the caller, who raises it
            raised.append(error)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # short joins: the caller still handles its signals
    if raised:
        raise raised[0]
    return result[0]
