"""`make up` and `make down` themselves: everything starts healthy, everything stops."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_make_up_starts_everything_and_make_down_leaves_nothing(  # type: ignore[no-untyped-def]
    tmp_path: Path, tiny_model_dir: Path, isolated_redis_url: str
) -> None:
    import psutil

    home = tmp_path / "home"
    (home / "models" / "builtin").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, home / "models" / "builtin" / "tiny-qwen2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    env.update(
        TP_HOME=str(home),
        TP_REDIS_URL=isolated_redis_url,
        TP_PORT=str(_free_port()),
        TP_FLOWER_PORT=str(_free_port()),
        TP_RUN_AS=os.environ["TP_RUN_AS"],  # the suite's throwaway run user, not tp-runner
    )
    up = subprocess.run(
        ["make", "-s", "up"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"training_platform is up: http://127.0.0.1:{env['TP_PORT']}" in up.stdout
        status = subprocess.run(
            ["make", "-s", "status"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert status.returncode == 0, status.stdout
        pids = [json_pid(path) for path in (home / "run").glob("*.json")]
        assert len(pids) == 5  # api, two workers, beat, flower (Redis is the test's own)
    finally:
        down = subprocess.run(
            ["make", "-s", "down"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert down.returncode == 0, down.stdout + down.stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.3)
    from training_platform.cli.services import group_members

    # Each service led its own process group: no member of any group (pool children too) is left.
    assert [p for p in pids if group_members(p)] == []
    assert list((home / "run").glob("*.json")) == []


def json_pid(path: Path) -> int:
    import json

    return int(json.loads(path.read_text())["pid"])


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
