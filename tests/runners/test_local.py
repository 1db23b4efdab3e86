"""The local runner and its launcher, with real detached processes in temporary run dirs.

Every plan runs `sys.executable -c <script>`; scripts that must stay alive wait for a `go` file
in their run dir (their working directory) so that the tests decide when they end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from training_platform.backends.base import LaunchPlan
from training_platform.runners.base import Handle, RunnerError, RunState
from training_platform.runners.launcher import EXIT_FILE, LOG_FILE, PLAN_FILE
from training_platform.runners.local import LocalRunner

NODE = "test-node"
TIMEOUT_S = 15.0

# Snippets the scripts are built from (the script's cwd is its run dir).
WAIT_FOR_GO = """
import os, time
while not os.path.exists("go"):
    time.sleep(0.02)
"""
SPAWN_GRANDCHILD = """
import pathlib, subprocess
grandchild = subprocess.Popen(["sleep", "300"])
pathlib.Path("grandchild.pid").write_text(str(grandchild.pid))
"""
READY = """
import pathlib
pathlib.Path("ready").write_text("")
"""


def script_plan(
    *snippets: str, env: dict[str, str] | None = None, files: dict[str, str] | None = None
) -> LaunchPlan:
    """A plan that runs the snippets, in order, as one Python script."""
    source = "\n".join(textwrap.dedent(snippet) for snippet in snippets)
    return LaunchPlan(
        backend="test",
        algorithm="script",
        argv=(sys.executable, "-c", source),
        env=env or {},
        files=files or {},
    )


def wait_for(condition: Callable[[], object], what: str, timeout: float = TIMEOUT_S) -> None:
    """Poll `condition` until it is truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def wait_ended(runner: LocalRunner, handle: Handle) -> RunState:
    """Poll until the run no longer runs; return its final state."""
    states: list[RunState] = []

    def ended() -> bool:
        states.append(runner.poll(handle))
        return states[-1].status != "running"

    wait_for(ended, f"the run in {handle['run_dir']} to end")
    return states[-1]


def alive(pid: int) -> bool:
    """Whether the pid is a live process (a zombie has finished)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def live_group_members(group: int) -> list[int]:
    """Live processes whose process group is `group`."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
    return members


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[LocalRunner]:
    """A local runner; runs a test left alive under tmp_path are killed at teardown."""
    local = LocalRunner(node=NODE)
    yield local
    for recorded in tmp_path.rglob("launcher.json"):
        handle = local.find(str(recorded.parent))
        if handle is not None and local.poll(handle).status == "running":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(handle["pid"]), signal.SIGKILL)


def start(runner: LocalRunner, plan: LaunchPlan, run_dir: Path) -> Handle:
    """Submit a plan that includes READY and wait until its trainer has got that far."""
    handle = runner.submit(plan, str(run_dir))
    wait_for((run_dir / "ready").exists, "the trainer to be ready")
    return handle


# --- output, exit status ------------------------------------------------------------------


def test_stdout_stderr_and_metrics_are_recorded_and_read_from_an_offset(
    runner: LocalRunner, tmp_path: Path
) -> None:
    plan = script_plan(
        """
        import sys
        print("out-line-1", flush=True)
        print("err-line-1", file=sys.stderr, flush=True)
        print("out-line-2", flush=True)
        with open("metrics.jsonl", "a") as metrics:
            metrics.write('{"step": 1, "loss": 2.5}\\n')
            metrics.write('{"step": 2, "loss": 1.5}\\n')
        """
    )
    handle = runner.submit(plan, str(tmp_path / "run"))

    assert wait_ended(runner, handle) == RunState("exited", exit_code=0, signal=None)
    log = runner.read(handle, "log", 0, 1 << 20)
    assert log == (tmp_path / "run" / LOG_FILE).read_bytes()
    # Both streams, in the order they were written.
    assert log.index(b"out-line-1") < log.index(b"err-line-1") < log.index(b"out-line-2")
    offset = log.index(b"err-line-1")
    assert runner.read(handle, "log", offset, 10) == b"err-line-1"
    assert runner.read(handle, "log", offset, 1 << 20) == log[offset:]
    assert runner.read(handle, "log", len(log), 100) == b""

    metrics = runner.read(handle, "metrics", 0, 1 << 20)
    assert [json.loads(line) for line in metrics.splitlines()] == [
        {"step": 1, "loss": 2.5},
        {"step": 2, "loss": 1.5},
    ]
    second = metrics.index(b'{"step": 2')
    assert runner.read(handle, "metrics", second, 1 << 20) == b'{"step": 2, "loss": 1.5}\n'


def test_read_before_a_stream_exists_is_empty(runner: LocalRunner, tmp_path: Path) -> None:
    handle = runner.submit(script_plan("pass"), str(tmp_path / "run"))
    wait_ended(runner, handle)
    assert runner.read(handle, "metrics", 0, 100) == b""


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_recorded_in_exit_json_and_reported(
    runner: LocalRunner, tmp_path: Path, code: int
) -> None:
    # Text that looks like a failure must not decide anything; only the exit code does.
    plan = script_plan(
        f"""
        import sys
        print("Traceback (most recent call last): ERROR failed", flush=True)
        sys.exit({code})
        """
    )
    handle = runner.submit(plan, str(tmp_path / "run"))

    assert wait_ended(runner, handle) == RunState("exited", exit_code=code, signal=None)
    recorded = json.loads((tmp_path / "run" / EXIT_FILE).read_text())
    assert recorded["returncode"] == code
    assert recorded["signal"] is None


def test_poll_reads_the_outcome_from_exit_json(runner: LocalRunner, tmp_path: Path) -> None:
    handle = runner.submit(script_plan("pass"), str(tmp_path / "run"))
    assert wait_ended(runner, handle).exit_code == 0

    exit_file = tmp_path / "run" / EXIT_FILE
    exit_file.write_text(json.dumps({"returncode": 42, "signal": None}))
    assert runner.poll(handle) == RunState("exited", exit_code=42, signal=None)
    exit_file.unlink()
    assert runner.poll(handle).status == "lost"


def test_a_trainer_killed_by_a_signal_is_recorded_with_that_signal(
    runner: LocalRunner, tmp_path: Path
) -> None:
    plan = script_plan("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    handle = runner.submit(plan, str(tmp_path / "run"))

    state = wait_ended(runner, handle)
    assert state.status == "exited"
    assert state.signal == signal.SIGKILL
    assert state.exit_code == -signal.SIGKILL


def test_a_program_that_cannot_start_exits_127_with_the_reason(
    runner: LocalRunner, tmp_path: Path
) -> None:
    plan = LaunchPlan(backend="test", algorithm="script", argv=(str(tmp_path / "no-such-binary"),))
    handle = runner.submit(plan, str(tmp_path / "run"))

    state = wait_ended(runner, handle)
    assert (state.status, state.exit_code) == ("exited", 127)
    assert "no-such-binary" in state.detail


def test_poll_says_running_while_the_trainer_runs(runner: LocalRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    handle = start(runner, script_plan(READY, WAIT_FOR_GO), run_dir)

    for _ in range(5):
        assert runner.poll(handle).status == "running"
        time.sleep(0.05)
    assert not (run_dir / EXIT_FILE).exists()

    (run_dir / "go").touch()
    assert wait_ended(runner, handle) == RunState("exited", exit_code=0, signal=None)


# --- plan, environment, files -------------------------------------------------------------


def test_plan_env_and_files_are_applied_and_runner_secrets_stay_behind(
    runner: LocalRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TP_SECRET_PROBE", "x")
    run_dir = tmp_path / "run"
    plan = script_plan(
        """
        import json, os
        with open("env.json", "w") as out:
            json.dump({"env": dict(os.environ), "cwd": os.getcwd()}, out)
        """,
        env={"PLAN_VARIABLE": "from-the-plan", "OMP_NUM_THREADS": "3"},
        files={"train_config.json": '{"lr": 0.1}', "nested/dir/notes.txt": "hello"},
    )
    handle = runner.submit(plan, str(run_dir))
    assert wait_ended(runner, handle).exit_code == 0

    seen = json.loads((run_dir / "env.json").read_text())
    assert seen["env"]["PLAN_VARIABLE"] == "from-the-plan"
    assert seen["env"]["OMP_NUM_THREADS"] == "3"
    assert "TP_SECRET_PROBE" not in seen["env"]
    assert [name for name in seen["env"] if name.startswith("TP_")] == []
    assert Path(seen["cwd"]).resolve() == run_dir.resolve()

    assert json.loads((run_dir / PLAN_FILE).read_text()) == plan.to_dict()
    assert (run_dir / "train_config.json").read_text() == '{"lr": 0.1}'
    assert (run_dir / "nested" / "dir" / "notes.txt").read_text() == "hello"


@pytest.mark.parametrize("relative", ["../escaped.txt", "sub/../../escaped.txt", "ABSOLUTE"])
def test_a_plan_file_outside_the_run_dir_is_refused(
    runner: LocalRunner, tmp_path: Path, relative: str
) -> None:
    outside = tmp_path / "escaped.txt"
    name = str(outside) if relative == "ABSOLUTE" else relative
    run_dir = tmp_path / "run"
    plan = script_plan(READY, files={name: "pwned"})

    with pytest.raises(RunnerError, match="escapes the run directory"):
        runner.submit(plan, str(run_dir))

    assert not outside.exists()
    assert runner.find(str(run_dir)) is None  # nothing was started
    time.sleep(0.3)
    assert not (run_dir / "ready").exists()


# --- cancel -------------------------------------------------------------------------------


def test_cancel_stops_the_whole_process_group(runner: LocalRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    handle = start(runner, script_plan(SPAWN_GRANDCHILD, READY, WAIT_FOR_GO), run_dir)
    group = int(handle["pid"])
    grandchild = int((run_dir / "grandchild.pid").read_text())
    trainer = int((run_dir / "child.pid").read_text())
    assert os.getpgid(grandchild) == group
    assert {group, trainer, grandchild} <= set(live_group_members(group))

    runner.cancel(handle, force=False)

    state = wait_ended(runner, handle)
    assert state.status == "exited"
    assert state.signal == signal.SIGTERM
    assert json.loads((run_dir / EXIT_FILE).read_text())["signal"] == signal.SIGTERM
    wait_for(lambda: not alive(grandchild), "the grandchild to die", timeout=5)
    assert not alive(trainer)
    assert live_group_members(group) == []


def test_force_cancel_kills_a_trainer_that_ignores_sigterm(
    runner: LocalRunner, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    plan = script_plan(
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)",
        SPAWN_GRANDCHILD,
        READY,
        WAIT_FOR_GO,
    )
    handle = start(runner, plan, run_dir)
    group = int(handle["pid"])

    runner.cancel(handle, force=False)
    time.sleep(0.5)
    assert runner.poll(handle).status == "running"  # it really ignores SIGTERM

    runner.cancel(handle, force=True)

    state = wait_ended(runner, handle)
    assert state.status == "exited"
    assert state.signal == signal.SIGKILL
    assert json.loads((run_dir / EXIT_FILE).read_text())["signal"] == signal.SIGKILL
    assert live_group_members(group) == []


def test_cancel_of_an_ended_run_does_nothing(runner: LocalRunner, tmp_path: Path) -> None:
    handle = runner.submit(script_plan("pass"), str(tmp_path / "run"))
    wait_ended(runner, handle)
    runner.cancel(handle, force=False)
    runner.cancel(handle, force=True)
    assert runner.poll(handle) == RunState("exited", exit_code=0, signal=None)


def test_the_launcher_stops_processes_the_trainer_left_behind(
    runner: LocalRunner, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    handle = runner.submit(script_plan(SPAWN_GRANDCHILD), str(run_dir))

    assert wait_ended(runner, handle) == RunState("exited", exit_code=0, signal=None)
    assert not alive(int((run_dir / "grandchild.pid").read_text()))
    assert live_group_members(int(handle["pid"])) == []


# --- lost runs, re-adoption, stale handles ------------------------------------------------


def test_a_run_killed_with_its_launcher_is_lost(runner: LocalRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    handle = start(runner, script_plan(READY, WAIT_FOR_GO), run_dir)

    os.killpg(int(handle["pid"]), signal.SIGKILL)

    state = wait_ended(runner, handle)
    assert state.status == "lost"
    assert state.exit_code is None
    assert not (run_dir / EXIT_FILE).exists()


def test_find_returns_the_handle_written_at_submit(runner: LocalRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert runner.find(str(run_dir)) is None
    handle = start(runner, script_plan(READY, WAIT_FOR_GO), run_dir)

    found = runner.find(str(run_dir))
    assert found == handle
    assert found["pid"] == int(handle["pid"]) and alive(found["pid"])

    # Another runner on the same node (a restarted worker) adopts the run from the handle.
    adopter = LocalRunner(node=NODE)
    assert adopter.owns(found)
    assert adopter.poll(found).status == "running"
    (run_dir / "go").touch()
    assert wait_ended(adopter, found) == RunState("exited", exit_code=0, signal=None)


def test_a_handle_is_owned_only_by_a_local_runner_on_its_node(
    runner: LocalRunner, tmp_path: Path
) -> None:
    handle = runner.submit(script_plan("pass"), str(tmp_path / "run"))
    assert runner.owns(handle)
    assert not LocalRunner(node="other-node").owns(handle)
    assert not runner.owns({**handle, "runner": "ssh"})
    wait_ended(runner, handle)


def test_a_recycled_pid_is_not_our_run_and_is_never_signalled(
    runner: LocalRunner, tmp_path: Path
) -> None:
    # The pid of a finished run now belongs to another run's launcher (a group leader with
    # children): a stale handle must neither see it as alive nor touch it.
    other_dir = tmp_path / "other"
    other = start(runner, script_plan(SPAWN_GRANDCHILD, READY, WAIT_FOR_GO), other_dir)
    other_members = live_group_members(int(other["pid"]))
    assert len(other_members) == 3

    stale_dir = tmp_path / "stale"
    stale_dir.mkdir()
    stale = {
        **other,
        "run_dir": str(stale_dir),
        "create_time": other["create_time"] - 3600,
        "started_s": other["started_s"] - 3600,
    }

    assert runner.poll(stale).status == "lost"
    runner.cancel(stale, force=False)
    runner.cancel(stale, force=True)
    time.sleep(0.3)
    assert sorted(live_group_members(int(other["pid"]))) == sorted(other_members)
    assert runner.poll(other).status == "running"

    (other_dir / "go").touch()
    assert wait_ended(runner, other) == RunState("exited", exit_code=0, signal=None)


def test_a_recycled_pid_of_a_plain_process_is_not_signalled(
    runner: LocalRunner, tmp_path: Path
) -> None:
    unrelated = subprocess.Popen(["sleep", "300"])
    try:
        created = psutil.Process(unrelated.pid).create_time()
        stale = {
            "runner": "local",
            "node": NODE,
            "run_dir": str(tmp_path / "gone"),
            "pid": unrelated.pid,
            "create_time": created - 3600,
        }
        assert runner.poll(stale).status == "lost"
        runner.cancel(stale, force=True)
        time.sleep(0.2)
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


def test_submitting_into_a_live_run_dir_is_refused(runner: LocalRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first_plan = script_plan(READY, WAIT_FOR_GO)
    first = start(runner, first_plan, run_dir)

    with pytest.raises(RunnerError, match="already alive"):
        runner.submit(script_plan("print('second')"), str(run_dir))

    # The live run is untouched: same handle, same plan, still running.
    assert runner.find(str(run_dir)) == first
    assert json.loads((run_dir / PLAN_FILE).read_text()) == first_plan.to_dict()
    assert runner.poll(first).status == "running"
    (run_dir / "go").touch()
    assert wait_ended(runner, first).exit_code == 0

    # Once it has ended, the dir may be used again.
    second = runner.submit(script_plan("print('second')"), str(run_dir))
    assert wait_ended(runner, second).exit_code == 0
    assert b"second" in runner.read(second, "log", 0, 1 << 20)


def test_the_run_outlives_the_process_that_submitted_it(
    runner: LocalRunner, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    plan = script_plan(READY, WAIT_FOR_GO, "print('finished', flush=True)")
    submitter = textwrap.dedent(
        """
        import json, sys
        from training_platform.backends.base import LaunchPlan
        from training_platform.runners.local import LocalRunner
        plan = LaunchPlan.from_dict(json.loads(sys.argv[1]))
        print(json.dumps(LocalRunner(node=sys.argv[3]).submit(plan, sys.argv[2])))
        """
    )
    # A timeout here also means the launcher kept the submitter's pipes open.
    result = subprocess.run(
        [sys.executable, "-c", submitter, json.dumps(plan.to_dict()), str(run_dir), NODE],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    handle = json.loads(result.stdout)
    wait_for((run_dir / "ready").exists, "the trainer to be ready")

    assert runner.find(str(run_dir)) == handle
    assert runner.poll(handle).status == "running"
    (run_dir / "go").touch()
    assert wait_ended(runner, handle) == RunState("exited", exit_code=0, signal=None)
    assert json.loads((run_dir / EXIT_FILE).read_text())["returncode"] == 0
    assert b"finished" in runner.read(handle, "log", 0, 1 << 20)


def test_a_watcher_wakes_when_the_run_writes_not_at_its_timeout(
    runner: LocalRunner, tmp_path: Path
) -> None:
    handle = {"runner": "local", "node": NODE, "run_dir": str(tmp_path)}
    waiter = runner.output_waiter(handle, timeout_s=5.0)
    assert waiter is not None
    try:
        for line in range(3):
            started = time.monotonic()
            with (tmp_path / "metrics.jsonl").open("a") as out:
                out.write(f'{{"step": {line}}}\n')
            waiter.wait()
            assert time.monotonic() - started < 1.0  # woken by the line, not the 5 s timeout
        (tmp_path / ".exit.json.tmp").write_text("{}")
        started = time.monotonic()
        (tmp_path / ".exit.json.tmp").replace(tmp_path / EXIT_FILE)  # as the launcher ends
        waiter.wait()
        assert time.monotonic() - started < 1.0
    finally:
        waiter.close()
    quiet = runner.output_waiter(handle, timeout_s=0.2)
    assert quiet is not None
    started = time.monotonic()
    quiet.wait()
    quiet.close()
    assert 0.15 < time.monotonic() - started < 2.0  # nothing written: the timeout
