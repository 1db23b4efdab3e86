"""The Ray runner against a real Ray head of our own (ray_head), on loopback with token auth.

One head serves the whole module (starting one takes seconds); every plan runs
`sys.executable -c <script>` through the launcher, as in test_local.py. Scripts that must stay
alive wait for a `go` file in their run dir (their working directory).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from training_platform.backends.base import LaunchPlan
from training_platform.runners.base import Handle, RunnerError, RunState
from training_platform.runners.launcher import STOP_FILE
from training_platform.runners.ray import RayRunner, check_address
from training_platform.runners.ray_head import head_status, head_token, start_head, stop_head

pytestmark = pytest.mark.slow

HOST = "ray-test"
TIMEOUT_S = 30.0
READY = """
import pathlib
pathlib.Path("ready").write_text("")
"""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def script_plan(*snippets: str, env: dict[str, str] | None = None) -> LaunchPlan:
    """A plan that runs the snippets, in order, as one Python script."""
    source = "\n".join(textwrap.dedent(snippet) for snippet in snippets)
    return LaunchPlan(
        backend="test", algorithm="script", argv=(sys.executable, "-c", source), env=env or {}
    )


def wait_for(condition: Callable[[], object], what: str, timeout: float = TIMEOUT_S) -> None:
    """Poll `condition` until it is truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def wait_ended(runner: RayRunner, handle: Handle, timeout: float = TIMEOUT_S) -> RunState:
    """Poll until the run no longer runs; return its final state."""
    states: list[RunState] = []

    def ended() -> bool:
        states.append(runner.poll(handle))
        return states[-1].status != "running"

    wait_for(ended, f"the run in {handle['run_dir']} to end", timeout)
    return states[-1]


def processes_of(run_dir: Path) -> list[psutil.Process]:
    """Live processes working in run_dir or naming it in their command line."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        command = " ".join(process.info["cmdline"] or ())
        if str(run_dir) in command or (process.info["cwd"] or "").startswith(str(run_dir)):
            found.append(process)
    return found


def processes_naming(text: str) -> list[str]:
    """Command lines of live processes that contain text."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        command = " ".join(process.info["cmdline"] or ())
        if text in command and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(command)
    return found


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[str, Path]]:
    """A Ray head of our own for the module: (address, temp dir); nothing of it survives."""
    # Short, under /tmp: Ray's unix socket paths must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="tprh-", dir="/tmp"))
    try:
        address = start_head(
            temp_dir=temp_dir, port=free_port(), dashboard_port=free_port(), num_cpus=4
        )
        yield address, temp_dir
    finally:
        stop_head(temp_dir)
    assert not head_status(temp_dir)["alive"]
    assert processes_naming(str(temp_dir)) == []
    shutil.rmtree(temp_dir)


@pytest.fixture
def runner(head: tuple[str, Path]) -> RayRunner:
    """A runner bound to the module's head, with its token."""
    address, temp_dir = head
    return RayRunner(host=HOST, address=address, python=sys.executable, token=head_token(temp_dir))


def test_the_head_is_ours_on_loopback_with_token_auth(head: tuple[str, Path]) -> None:
    address, temp_dir = head
    status = head_status(temp_dir)
    assert status["alive"] and status["address"] == address
    assert address.startswith("http://127.0.0.1:")
    assert (temp_dir / "auth_token").stat().st_mode & 0o777 == 0o600
    assert check_address(address, token=head_token(temp_dir)).startswith("2.")
    for token in (None, "wrong"):
        with pytest.raises(RunnerError, match="refused"):
            check_address(address, token=token)


def test_a_long_temp_dir_is_reached_through_a_short_alias(tmp_path: Path) -> None:
    temp_dir = tmp_path / ("a-temp-dir-too-long-for-unix-sockets-" * 2) / "head"
    try:
        address = start_head(temp_dir=temp_dir, port=free_port(), dashboard_port=free_port())
        alias = Path(json.loads((temp_dir / "head.json").read_text())["ray_temp_dir"])
        assert alias.is_symlink() and alias.resolve() == temp_dir.resolve()
        assert len(str(alias)) < 30
        assert check_address(address, token=head_token(temp_dir)).startswith("2.")
    finally:
        stop_head(temp_dir)
    assert not head_status(temp_dir)["alive"]
    assert not alias.exists() and not alias.parent.exists()
    assert processes_naming(str(temp_dir)) == processes_naming(str(alias)) == []


def test_a_port_in_use_is_refused_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(RuntimeError, match=f"port {port} .* in use"):
            start_head(temp_dir=tmp_path / "head", port=port, dashboard_port=free_port())
    assert not head_status(tmp_path / "head")["alive"]


def test_every_socket_of_the_head_and_its_workers_listens_on_loopback(
    runner: RayRunner, head: tuple[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    handle = runner.submit(script_plan(READY, "import time; time.sleep(300)"), str(run_dir))
    wait_for((run_dir / "ready").exists, "the trainer to be ready")
    leader = psutil.Process(int(head_status(head[1])["pid"]))

    def listening() -> list[tuple[str, str]]:
        ours = {leader.pid: leader.name()}
        for process in leader.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ours[process.pid] = process.name()
        return [
            (ours[c.pid], str(c.laddr[0]))
            for c in psutil.net_connections(kind="inet")
            if c.pid in ours and c.status == psutil.CONN_LISTEN and c.laddr
        ]

    # The raylet and the agents come up after the Jobs API already answers.
    wait_for(lambda: {"raylet", "gcs_server"} <= {name for name, _ in listening()}, "raylet")
    assert {ip for _, ip in listening()} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening()
    runner.cancel(handle, force=True)


def test_output_metrics_and_exit_code_zero(runner: RayRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    plan = script_plan(
        """
        import sys
        print("hello from the trainer")
        print("to stderr", file=sys.stderr)
        with open("metrics.jsonl", "a") as metrics:
            metrics.write('{"step": 1, "loss": 2.5}\\n')
            metrics.write('{"step": 2, "loss": 1.5}\\n')
        """
    )
    handle = runner.submit(plan, str(run_dir))
    assert handle["runner"] == "ray" and handle["host"] == HOST
    assert handle["submission_id"].startswith("tp-run-")
    assert runner.find(str(run_dir)) == handle
    assert runner.owns(handle)
    assert not RayRunner(host="other", address=runner.address, python=sys.executable).owns(handle)
    assert wait_ended(runner, handle) == RunState("exited", exit_code=0)
    log = runner.read(handle, "log", 0, 1 << 20)
    assert b"hello from the trainer" in log and b"to stderr" in log
    assert b"[launcher " in log and b"trainer exited with code 0" in log
    metrics = runner.read(handle, "metrics", 0, 1 << 20)
    second = metrics.index(b'{"step": 2')
    assert runner.read(handle, "metrics", second, 1 << 20) == b'{"step": 2, "loss": 1.5}\n'
    assert json.loads(metrics[:second]) == {"step": 1, "loss": 2.5}
    assert runner.find(str(run_dir)) == handle


def test_a_nonzero_exit_code_is_reported(runner: RayRunner, tmp_path: Path) -> None:
    handle = runner.submit(script_plan("raise SystemExit(3)"), str(tmp_path / "run"))
    assert wait_ended(runner, handle) == RunState("exited", exit_code=3)


def test_the_token_reaches_no_process_of_the_run(
    runner: RayRunner, head: tuple[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    plan = script_plan(
        """
        import json, os
        json.dump(dict(os.environ), open("environ.json", "w"))
        launcher = open(f"/proc/{os.getppid()}/environ", "rb").read()
        open("launcher-environ", "wb").write(launcher)
        """,
        env={"TP_RUN_SETTING": "kept"},
    )
    handle = runner.submit(plan, str(run_dir))
    assert wait_ended(runner, handle) == RunState("exited", exit_code=0)
    token = head_token(head[1]).encode()
    environ = json.loads((run_dir / "environ.json").read_text())
    assert environ["TP_RUN_SETTING"] == "kept"
    assert not any(name.startswith("RAY_") for name in environ)
    assert token not in (run_dir / "environ.json").read_bytes()
    assert token not in (run_dir / "launcher-environ").read_bytes()
    assert token not in (run_dir / "plan.json").read_bytes()


def test_cancel_stops_the_run_and_leaves_no_process(runner: RayRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    handle = runner.submit(script_plan(READY, "import time; time.sleep(300)"), str(run_dir))
    wait_for((run_dir / "ready").exists, "the trainer to be ready")
    assert runner.poll(handle).status == "running"
    runner.cancel(handle, force=False)
    state = wait_ended(runner, handle, timeout=20)
    assert state.status == "exited" and state.signal == 15, state
    wait_for(lambda: not processes_of(run_dir), "every process of the run to end", timeout=10)
    runner.cancel(handle, force=False)  # idempotent on a finished job
    runner.cancel(handle, force=True)


def test_force_cancel_kills_a_trainer_that_ignores_sigterm(
    runner: RayRunner, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    plan = script_plan(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)",
        READY,
        "time.sleep(300)",
    )
    handle = runner.submit(plan, str(run_dir))
    wait_for((run_dir / "ready").exists, "the trainer to be ready")
    runner.cancel(handle, force=True)
    assert not processes_of(run_dir)
    state = wait_ended(runner, handle, timeout=20)
    assert state.status == "exited" and state.signal in (9, 15), state


def test_a_run_alive_in_the_run_dir_is_not_replaced(runner: RayRunner, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    handle = runner.submit(script_plan(READY, "import time; time.sleep(300)"), str(run_dir))
    wait_for((run_dir / "ready").exists, "the trainer to be ready")
    with pytest.raises(RunnerError, match="already alive"):
        runner.submit(script_plan("pass"), str(run_dir))
    runner.cancel(handle, force=True)
    wait_ended(runner, handle, timeout=20)
    second = runner.submit(script_plan("pass"), str(run_dir))
    assert second["submission_id"] != handle["submission_id"]
    assert wait_ended(runner, second) == RunState("exited", exit_code=0)


def test_a_plan_file_outside_the_run_dir_is_refused(runner: RayRunner, tmp_path: Path) -> None:
    plan = LaunchPlan(
        backend="test", algorithm="script", argv=("true",), files={"../escape.txt": "x"}
    )
    with pytest.raises(RunnerError, match="escapes"):
        runner.submit(plan, str(tmp_path / "run"))
    assert not (tmp_path / "escape.txt").exists()


def test_request_stop_creates_the_stop_file_and_suspend_is_refused(
    runner: RayRunner, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    handle: Handle = {"runner": "ray", "host": HOST, "submission_id": "x", "run_dir": str(run_dir)}
    runner.request_stop(handle)
    assert (run_dir / STOP_FILE).exists()
    with pytest.raises(RunnerError, match="cannot suspend"):
        runner.suspend(handle)
    with pytest.raises(RunnerError, match="cannot resume"):
        runner.resume(handle)
    assert runner.stack_dump(handle) is None
    assert runner.read(handle, "log", 0, 100) == b""


def test_a_launcher_that_cannot_start_is_lost_with_rays_message(
    head: tuple[str, Path], tmp_path: Path
) -> None:
    address, temp_dir = head
    runner = RayRunner(
        host=HOST, address=address, python="/nonexistent/python", token=head_token(temp_dir)
    )
    handle = runner.submit(script_plan("pass"), str(tmp_path / "run"))
    state = wait_ended(runner, handle)
    assert state.status == "lost" and "/nonexistent/python" in state.detail, state


def test_a_job_ray_does_not_know_is_lost(runner: RayRunner, tmp_path: Path) -> None:
    handle: Handle = {
        "runner": "ray",
        "host": HOST,
        "submission_id": "tp-never-submitted",
        "run_dir": str(tmp_path),
    }
    state = runner.poll(handle)
    assert state.status == "lost" and "knows no job" in state.detail


def test_an_unreachable_address_raises_quickly(tmp_path: Path) -> None:
    runner = RayRunner(host=HOST, address=f"http://127.0.0.1:{free_port()}", python=sys.executable)
    started = time.monotonic()
    with pytest.raises(RunnerError, match="cannot reach"):
        runner.submit(script_plan("pass"), str(tmp_path / "run"))
    handle: Handle = {"runner": "ray", "host": HOST, "submission_id": "x", "run_dir": str(tmp_path)}
    with pytest.raises(RunnerError, match="cannot reach"):
        runner.poll(handle)
    assert time.monotonic() - started < 10
    assert runner.find(str(tmp_path / "run")) is None


def test_a_wrong_token_is_refused_with_a_clear_error(
    head: tuple[str, Path], tmp_path: Path
) -> None:
    runner = RayRunner(host=HOST, address=head[0], python=sys.executable, token="not-the-token")
    with pytest.raises(RunnerError, match="refused the request"):
        runner.submit(script_plan("pass"), str(tmp_path / "run"))
