"""The dependency rules of docs/architecture.md, checked on every import of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "training_platform"
EFFECTFUL = (
    "subprocess",
    "socket",
    "shutil",
    "os",
    "threading",
    "multiprocessing",
    "asyncio",
    "sqlalchemy",
    "sqlmodel",
    "celery",
    "kombu",
    "fastapi",
    "starlette",
    "httpx",
    "redis",
    "psutil",
    "paramiko",
    "ray",
    "urllib",
    "requests",
)
WEB_AND_QUEUE = ("fastapi", "starlette", "celery", "kombu")
PLATFORM_RUNTIME = (
    "celery",
    "kombu",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "sqlmodel",
    "redis",
    "alembic",
    "httpx",
    "typer",
    "rich",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (functions included), made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (
        _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _files(*globs: str) -> list[Path]:
    files: list[Path] = []
    for pattern in globs:
        files.extend(sorted(PACKAGE.glob(pattern)))
    assert files, globs
    return files


def _offending(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        name
        for name in _imports(path)
        if any(name == p or name.startswith(p + ".") for p in prefixes)
    )


def _platform_imports(path: Path) -> set[str]:
    return {n for n in _imports(path) if n.startswith("training_platform.")}


ALL_FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_parses_and_the_walk_sees_the_package() -> None:
    assert len(ALL_FILES) > 40
    assert "training_platform.jobs.service" in {_module_name(p) for p in ALL_FILES}


@pytest.mark.parametrize("path", _files("core/*.py"), ids=lambda p: p.name)
def test_core_depends_on_no_context(path: Path) -> None:
    outside = sorted(
        n for n in _platform_imports(path) if not n.startswith("training_platform.core")
    )
    assert outside == []


@pytest.mark.parametrize(
    "path",
    [p for p in _files("backends/**/*.py") if p.name != "routes.py"],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_backends_are_pure_translators(path: Path) -> None:
    assert _offending(path, EFFECTFUL) == []
    allowed = ("training_platform.backends", "training_platform.core.errors")
    assert sorted(n for n in _platform_imports(path) if not n.startswith(allowed)) == []


SERVICES = _files(
    "*/service.py",
    "*/state.py",
    "jobs/supervisor.py",
    "jobs/execution.py",
    "jobs/ingest.py",
    "jobs/preparation.py",
    "pipelines/engine.py",
    "pipelines/definition.py",
    "runners/*.py",
    "scheduling/scheduler.py",
    "scheduling/inventory.py",
    "scheduling/placement.py",
    "datasets/formats.py",
    "datasets/reader.py",
    "bootstrap.py",
)


def test_pipeline_definitions_are_pure() -> None:
    # Parsing and checking a definition touches no database, process or network.
    path = PACKAGE / "pipelines" / "definition.py"
    assert _offending(path, EFFECTFUL) == []


@pytest.mark.parametrize(
    "path",
    _files("scheduling/placement.py", "datasets/formats.py"),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_placement_and_formats_are_pure(path: Path) -> None:
    assert _offending(path, EFFECTFUL) == []
    assert sorted(_platform_imports(path)) == []


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_services_know_nothing_of_http_or_celery(path: Path) -> None:
    assert _offending(path, WEB_AND_QUEUE) == []


@pytest.mark.parametrize(
    "path", _files("*/routes.py", "api/*.py"), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_routes_never_touch_celery_or_runners_directly(path: Path) -> None:
    assert _offending(path, ("celery", "kombu", "training_platform.runners")) == []


@pytest.mark.parametrize("path", _files("worker/*.py"), ids=lambda p: p.name)
def test_worker_package_is_only_celery_wiring(path: Path) -> None:
    outside = sorted(
        n
        for n in _platform_imports(path)
        if not n.startswith(("training_platform.core", "training_platform.worker"))
    )
    assert outside == []  # task modules are named by string in worker/app.py


@pytest.mark.parametrize(
    "path",
    _files("trainers/*.py", "runners/launcher.py"),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_launched_programs_need_no_platform_runtime(path: Path) -> None:
    # They run inside a run directory, possibly on a GPU host that has only the training
    # environment: no Celery, web stack or database there.
    assert _offending(path, PLATFORM_RUNTIME) == []
    # rewards/builtin.py is standalone (verl loads it by path): the one number parser.
    allowed = (
        "training_platform.trainers",
        "training_platform.runners.launcher",
        "training_platform.rewards.builtin",
    )
    assert sorted(n for n in _platform_imports(path) if not n.startswith(allowed)) == []


def test_the_api_client_of_the_cli_needs_only_settings() -> None:
    imports = _platform_imports(PACKAGE / "cli" / "client.py")
    assert sorted(n for n in imports if not n.startswith("training_platform.core.settings")) == []


def test_no_eval_exec_or_shell_strings_anywhere() -> None:
    for path in ALL_FILES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name):
                    assert func.id not in ("eval", "exec", "compile"), (path, node.lineno)
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    dotted = f"{func.value.id}.{func.attr}"
                    assert dotted not in ("os.system", "os.popen"), (path, node.lineno)
                for keyword in node.keywords:
                    if keyword.arg == "shell":
                        assert (
                            isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                        ), (path, node.lineno)
