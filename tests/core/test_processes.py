"""Process identity: a recorded (pid, start) names one process, whatever the wall clock did."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from training_platform.core import processes


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def test_a_live_process_is_known_again(sleeper: subprocess.Popen[bytes]) -> None:
    record = processes.identity(sleeper.pid)
    assert record["pid"] == sleeper.pid and record["started_s"] > 0
    assert processes.is_same(psutil.Process(sleeper.pid), record)


def test_a_stepped_wall_clock_does_not_make_a_live_process_another_one(
    sleeper: subprocess.Popen[bytes],
) -> None:
    # After the record was written the system clock was stepped by 5 s (a VM resumed, NTP):
    # the epoch create_time read now differs from the recorded one by those 5 s, the start
    # time since boot does not. This made a running training look vanished.
    record = processes.identity(sleeper.pid)
    stepped = {**record, "create_time": record["create_time"] - 5.0}
    assert processes.is_same(psutil.Process(sleeper.pid), stepped)


def test_another_process_under_the_same_pid_is_not_the_recorded_one(
    sleeper: subprocess.Popen[bytes],
) -> None:
    record = processes.identity(sleeper.pid)
    earlier = {**record, "started_s": record["started_s"] - 1.0}
    assert not processes.is_same(psutil.Process(sleeper.pid), earlier)
    assert processes.started_before(psutil.Process(sleeper.pid), {**record, "started_s": 1e9})
    assert not processes.started_before(psutil.Process(sleeper.pid), record)


def test_records_written_before_start_times_since_boot_compare_the_old_way(
    sleeper: subprocess.Popen[bytes],
) -> None:
    record = processes.identity(sleeper.pid)
    old = {"pid": sleeper.pid, "create_time": record["create_time"]}
    assert processes.is_same(psutil.Process(sleeper.pid), old)
    assert not processes.is_same(psutil.Process(sleeper.pid), {**old, "create_time": 0.0})


def test_a_process_gone_before_it_was_recorded_matches_nothing() -> None:
    process = subprocess.Popen(["true"])
    process.wait()
    record = processes.identity(process.pid)
    assert record["started_s"] == -1.0
    assert not processes.is_same(psutil.Process(), {**record, "pid": psutil.Process().pid})


def test_a_command_name_with_spaces_and_parentheses_is_read(tmp_path: Path) -> None:
    # /proc/PID/stat puts the command name in parentheses; the name may hold both.
    odd = tmp_path / "a) (b c"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", odd)
    process = subprocess.Popen([str(odd), "300"])
    try:
        time.sleep(0.05)
        started = processes.started_s(psutil.Process(process.pid))
        assert processes.is_same(psutil.Process(process.pid), processes.identity(process.pid))
        assert started > processes.started_s(psutil.Process())
    finally:
        process.kill()
        process.wait()


def test_low_priority_work_runs_lowered_and_leaves_its_caller_and_later_children_as_they_were() -> (
    None
):
    before = processes.thread_nice()
    inside = processes.at_low_priority(processes.thread_nice)
    assert inside == min(19, before + processes.BACKGROUND_NICE)
    assert processes.thread_nice() == before
    # A process started afterwards by the caller runs at the caller's priority, not lowered.
    child = subprocess.run(
        ["python3", "-c", "import os; print(os.nice(0))"], capture_output=True, text=True
    )
    assert int(child.stdout) == before


def test_low_priority_work_hands_its_error_to_the_caller() -> None:
    def broken() -> None:
        raise KeyError("lost")

    with pytest.raises(KeyError, match="lost"):
        processes.at_low_priority(broken)
