"""The SSH runner against a real OpenSSH server: detached runs, offsets, cancel, drops, keys."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from training_platform.backends.base import LaunchPlan
from training_platform.runners.base import RunState
from training_platform.runners.ssh import (
    AuthenticationFailed,
    HostKey,
    HostKeyMismatch,
    SshRunner,
    SshTarget,
    Unreachable,
    scan_host_key,
)

TIMEOUT_S = 30.0


def script_plan(source: str) -> LaunchPlan:
    """A plan that runs a Python script with the platform's interpreter (cwd: the run dir)."""
    return LaunchPlan(
        backend="test",
        algorithm="script",
        argv=(sys.executable, "-c", textwrap.dedent(source)),
    )


def target_of(sshd, *, auth: str = "password", secret: str | None = None) -> SshTarget:  # type: ignore[no-untyped-def]
    key = scan_host_key(sshd.host, sshd.port)
    return SshTarget(
        name=f"test-{sshd.port}",
        address=sshd.host,
        port=sshd.port,
        user=sshd.user,
        auth=auth,
        secret=secret if secret is not None else sshd.password,
        host_key=key,
        timeout_s=5,
    )


@pytest.fixture
def runner(sshd):  # type: ignore[no-untyped-def]
    return SshRunner(target_of(sshd), python=sys.executable, work_root=str(sshd.home / "tp"))


def wait_for(check: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def wait_exit(runner: SshRunner, handle: dict) -> RunState:  # type: ignore[type-arg]
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        state = runner.poll(handle)
        if state.status != "running":
            return state
        time.sleep(0.2)
    raise AssertionError("the run did not end")


def test_a_run_starts_detached_in_the_remote_run_dir_and_reports_its_exit_code(
    runner: SshRunner, sshd
) -> None:  # type: ignore[no-untyped-def]
    run_dir = f"{runner.run_root}/1/attempt-1"
    handle = runner.submit(
        script_plan(
            """
            import getpass, json, os
            print("hello from", getpass.getuser(), os.getcwd(), flush=True)
            with open("metrics.jsonl", "w") as out:
                for step in (1, 2):
                    out.write(json.dumps({"type": "metrics", "step": step}) + "\\n")
            raise SystemExit(3)
            """
        ),
        run_dir,
    )
    assert handle["runner"] == "ssh" and handle["run_dir"] == run_dir
    state = wait_exit(runner, handle)
    assert (state.status, state.exit_code) == ("exited", 3)
    log = runner.read(handle, "log", 0, 1 << 20).decode()
    assert f"hello from {sshd.user} {run_dir}" in log
    first = runner.read(handle, "metrics", 0, 10)
    rest = runner.read(handle, "metrics", 10, 1 << 20)
    assert (first + rest).decode().count('"step"') == 2
    assert runner.find(run_dir) == handle
    assert runner.find(f"{runner.run_root}/nothing/attempt-1") is None
    # The files are the throwaway user's, in its home: nothing ran as root.
    assert (sshd.home / "tp" / "runs" / "1" / "attempt-1" / "exit.json").stat().st_uid == sshd.uid


def test_cancel_leaves_no_process_of_the_run_on_the_server(runner: SshRunner, sshd) -> None:  # type: ignore[no-untyped-def]
    handle = runner.submit(
        script_plan(
            """
            import subprocess, time
            subprocess.Popen(["sleep", "300"])
            print("started", flush=True)
            time.sleep(300)
            """
        ),
        f"{runner.run_root}/2/attempt-1",
    )
    # The launcher echoes the argv (which holds the word) first: wait for the printed line.
    wait_for(lambda: b"\nstarted\n" in runner.read(handle, "log", 0, 1 << 16))
    assert len(runner.pids(handle)) >= 3  # launcher, trainer, its sleep
    runner.cancel(handle, force=False)
    state = wait_exit(runner, handle)
    assert state.status == "exited" and state.signal is not None
    wait_for(lambda: sshd.user_processes() == [])


def test_a_dropped_connection_is_reopened_and_reads_lose_and_repeat_nothing(
    runner: SshRunner, sshd
) -> None:  # type: ignore[no-untyped-def]
    handle = runner.submit(
        script_plan(
            """
            import time
            for i in range(40):
                print(f"line {i}", flush=True)
                time.sleep(0.05)
            """
        ),
        f"{runner.run_root}/3/attempt-1",
    )
    received, offset = b"", 0
    dropped = False
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if offset > 100 and not dropped:
            sshd.drop_connections()
            dropped = True
        try:
            chunk = runner.read(handle, "log", offset, 64)
            state = runner.poll(handle)
        except Unreachable:
            time.sleep(0.3)  # backing off; the run goes on meanwhile
            continue
        received += chunk
        offset += len(chunk)
        if state.status != "running" and not chunk:
            break
        time.sleep(0.05)
    assert dropped
    lines = [line for line in received.decode().splitlines() if line.startswith("line ")]
    assert lines == [f"line {i}" for i in range(40)]


def test_uploads_go_once_per_content_hash(runner: SshRunner, sshd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\0" * 1000)
    remote = runner.upload(model, "abc123")
    assert remote == f"{runner.work_root}/cache/abc123/model"
    copied = sshd.home / "tp" / "cache" / "abc123" / "model"
    assert (copied / "sub" / "weights.bin").read_bytes() == b"\0" * 1000
    (copied / "marker").write_text("kept")
    assert runner.upload(model, "abc123") == remote  # present: not sent again
    assert (copied / "marker").exists()


def test_a_changed_host_key_is_refused_naming_both_fingerprints(sshd) -> None:  # type: ignore[no-untyped-def]
    target = target_of(sshd)
    wrong = HostKey(
        target.host_key.key_type,
        "AAAAC3NzaC1lZDI1NTE5AAAAIBgkJ0cmHlX8J0zTwz8C6Ph1v7H2QiyB0xCc0Q2k0Q2k",
    )  # type: ignore[union-attr]
    stale = SshTarget(**{**target.__dict__, "host_key": wrong, "name": "stale-key"})
    with pytest.raises(HostKeyMismatch) as refused:
        SshRunner(stale, python=sys.executable, work_root=str(sshd.home / "tp")).agent("info")
    assert wrong.fingerprint in str(refused.value)
    assert sshd.host_key_fingerprint in str(refused.value)


def test_a_wrong_password_and_key_login(sshd) -> None:  # type: ignore[no-untyped-def]
    bad = SshRunner(
        SshTarget(**{**target_of(sshd).__dict__, "secret": "wrong", "name": "bad-password"}),
        python=sys.executable,
        work_root=str(sshd.home / "tp"),
    )
    with pytest.raises(AuthenticationFailed, match="refused the password"):
        bad.agent("info")
    keyed = SshRunner(
        target_of(sshd, auth="key", secret=sshd.private_key_text),
        python=sys.executable,
        work_root=str(sshd.home / "tp"),
    )
    info = keyed.agent("info")
    assert info["home"] == str(sshd.home) and info["platform_dir"].endswith("training_platform")
