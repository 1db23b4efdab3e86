"""Warm starts (runners/warm.py): a real server imports the TRL trainer's libraries once and
forks the launchers of later runs; the runs end as cold-started ones do.

The trainer is the real `training_platform.trainers.trl_train`, given a config it refuses (exit
2 with "config error"): what is proven here is how the run is started and recorded; the e2e
suites train through the same path (their platforms run with warm starts on)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.runners.test_local import NODE, wait_ended, wait_for
from training_platform.backends.base import LaunchPlan
from training_platform.runners import warm
from training_platform.runners.launcher import CHILD_PID_FILE, LOG_FILE, child_environment
from training_platform.runners.local import LocalRunner

pytestmark = pytest.mark.slow  # the server imports torch, transformers and TRL (~6 s of CPU)

TRAINER = "training_platform.trainers.trl_train"
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def trainer_plan(env: dict[str, str] | None = None) -> LaunchPlan:
    return LaunchPlan(
        backend="trl",
        algorithm="sft",
        argv=(sys.executable, "-m", TRAINER, "--config", "c.json"),
        env=ENV if env is None else env,
        files={"c.json": "{}"},
    )


@pytest.fixture(scope="module")
def warm_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("warm-root") / "warm"
    yield directory
    warm.stop_all(directory)


def run(runner: LocalRunner, run_dir: Path, plan: LaunchPlan) -> tuple[int | None, str]:
    handle = runner.submit(plan, str(run_dir))
    state = wait_ended(runner, handle)
    return state.exit_code, (run_dir / LOG_FILE).read_text()


def test_runs_after_the_first_fork_warm_and_end_as_cold_runs_do(
    warm_dir: Path, tmp_path: Path
) -> None:
    runner = LocalRunner(node=NODE, warm_dir=warm_dir)
    code, log = run(runner, tmp_path / "cold", trainer_plan())
    assert code == 2 and "config error" in log
    assert "forked warm" not in log  # the first run starts the server and goes cold
    name = warm.key(sys.executable, TRAINER, child_environment(ENV))
    wait_for((warm_dir / f"{name}.sock").exists, "the warm server to listen", timeout=120)
    assert oct(warm_dir.stat().st_mode & 0o777) == "0o700"

    started = time.monotonic()
    code, log = run(runner, tmp_path / "warm", trainer_plan())
    assert code == 2 and "config error" in log
    assert "forked warm" in log
    assert time.monotonic() - started < 15
    exit_json = json.loads((tmp_path / "warm" / "exit.json").read_text())
    assert exit_json["returncode"] == 2 and exit_json["signal"] is None
    handle = json.loads((tmp_path / "warm" / "launcher.json").read_text())
    assert int((tmp_path / "warm" / CHILD_PID_FILE).read_text()) != handle["pid"]

    # Another environment is another server's: this run starts cold.
    code, log = run(runner, tmp_path / "other-env", trainer_plan({**ENV, "OMP_NUM_THREADS": "2"}))
    assert code == 2 and "forked warm" not in log

    # A server runs only plans of its own program, in run directories that hold one.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    foreign_plan = {"argv": [sys.executable, "-c", "print('no')"], "env": {}}
    (foreign / "plan.json").write_text(json.dumps(foreign_plan))
    assert warm._request(warm_dir / f"{name}.sock", foreign) is None
    assert warm._request(warm_dir / f"{name}.sock", tmp_path / "missing") is None
    assert not (foreign / "exit.json").exists()

    # A server killed outright leaves its socket: the next run starts cold and a new server.
    first = int((warm_dir / f"{name}.pid").read_text())
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(first) or _zombie(first), "the server to die")
    assert (warm_dir / f"{name}.sock").exists()
    code, log = run(runner, tmp_path / "after-kill", trainer_plan())
    assert code == 2 and "forked warm" not in log

    warm.stop_all(warm_dir)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def test_only_trainer_programs_of_the_runners_interpreter_are_eligible() -> None:
    assert warm.eligible([sys.executable, "-m", TRAINER, "--config", "c"], sys.executable)
    assert not warm.eligible([sys.executable, "-c", "pass"], sys.executable)
    assert not warm.eligible([sys.executable, "-m", "os"], sys.executable)
    assert not warm.eligible(["/usr/bin/python3", "-m", TRAINER], sys.executable)


def test_a_directory_others_can_enter_is_not_used(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)  # mkdir's mode is masked by the umask
    runner = LocalRunner(node=NODE, warm_dir=shared)
    code, log = run(runner, tmp_path / "run", trainer_plan())
    assert code == 2 and "forked warm" not in log
    assert list(shared.iterdir()) == []  # no server was started there
