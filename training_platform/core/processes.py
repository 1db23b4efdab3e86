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
from pathlib import Path
from typing import Any

import psutil

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
