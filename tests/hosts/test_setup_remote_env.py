"""scripts/setup_remote_env.sh: the environment check, and its install path with a stand-in pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "setup_remote_env.sh"


def setup(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def only_json_line(stdout: str) -> dict:  # type: ignore[type-arg]
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def test_check_describes_this_venv() -> None:
    done = setup("--check", "--venv", sys.prefix)
    assert done.returncode == 0, done.stderr
    info = only_json_line(done.stdout)
    assert set(info) == {
        "python",
        "venv",
        "platform",
        "torch",
        "torch_cuda",
        "cuda_available",
        "verl",
        "driver",
        "gpus",
        "ok",
        "problems",
    }
    import torch

    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert Path(info["venv"]) == Path(sys.prefix).resolve()
    assert info["platform"] is not None
    assert info["torch"] == torch.__version__
    assert info["cuda_available"] is torch.cuda.is_available()
    assert info["gpus"] == 0 and info["driver"] is None  # no NVIDIA GPU on the test machines
    assert info["ok"] is True and info["problems"] == []


def test_check_of_a_missing_venv_is_not_ok(tmp_path: Path) -> None:
    done = setup("--check", "--venv", str(tmp_path / "nowhere"))
    assert done.returncode == 1, done.stderr
    info = only_json_line(done.stdout)
    assert info["ok"] is False
    assert info["platform"] is None and info["torch"] is None and info["python"] is None
    assert any("no virtual environment" in problem for problem in info["problems"])


def test_bad_usage_exits_2() -> None:
    for args in (
        ["--check"],  # no --venv
        ["--venv"],
        ["--venv", "x", "--set", "cuda-everything"],
        ["--venv", "x", "--frobnicate"],
    ):
        done = setup(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == ""
        assert "usage:" in done.stderr


def test_install_pins_torch_and_installs_the_platform_without_deps(tmp_path: Path) -> None:
    """The install path, with a venv whose python runs a stand-in for pip (nothing downloads)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "pip-calls"
    (venv / "bin" / "python").write_text(
        f"""#!/usr/bin/env bash
if [[ "$1" == -m && "$2" == pip ]]; then
  shift 2
  echo "pip $*" >>{calls}
  while [[ $# -gt 0 ]]; do
    if [[ "$1" == -c ]]; then echo "constraints: $(cat "$2")" >>{calls}; fi
    shift
  done
  exit 0
fi
exec {sys.executable} "$@"
"""
    )
    (venv / "bin" / "python").chmod(0o755)

    done = setup("--venv", str(venv), "--set", "train-cpu", "--source", str(ROOT))
    assert done.returncode == 0, done.stderr
    assert only_json_line(done.stdout)["ok"] is True
    set_file = ROOT / "environments" / "train-cpu.txt"
    lines = calls.read_text().splitlines()
    assert lines[0].startswith(f"pip install -r {set_file} -c ")
    assert lines[1] == "constraints: torch==2.13.0"
    assert lines[2].startswith("pip install --no-deps -c ") and lines[2].endswith(f" {ROOT}")
    assert lines[3] == "constraints: torch==2.13.0"
    assert len(lines) == 4


def test_pythons_older_than_3_11_are_refused(tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text('#!/usr/bin/env bash\ncase "$*" in *print*) echo 3.9.18 ;; *) exit 1 ;; esac\n')
    old.chmod(0o755)
    done = setup("--venv", str(tmp_path / "venv"), env={"PYTHON": str(old)})
    assert done.returncode == 1
    assert "3.9.18" in done.stderr and "3.11 or newer" in done.stderr
    assert not (tmp_path / "venv").exists()
