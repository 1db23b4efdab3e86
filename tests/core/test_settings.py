"""Settings: defaults, TP_* overrides, URL normalisation, and errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training_platform.core.settings import (
    SettingsError,
    environ_for_children,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TP_* variable set and HOME pointing at an empty directory; returns that HOME."""
    for name in [n for n in os.environ if n.startswith("TP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_defaults(clean_env: Path) -> None:
    settings = load_settings()

    assert settings.home == (clean_env / ".training_platform").resolve()
    assert settings.home.is_absolute()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.database_url is None
    assert settings.resolved_database_url == f"sqlite:///{settings.home / 'platform.db'}"
    assert settings.resolved_api_url == "http://127.0.0.1:8000"
    assert settings.runs_dir == settings.home / "runs"
    assert settings.log_level == "INFO"
    assert settings.node_name
    assert not settings.home.exists()  # reading settings creates nothing


def test_tp_variables_override_the_defaults(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TP_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("TP_HOST", "0.0.0.0")
    monkeypatch.setenv("TP_PORT", "9123")
    monkeypatch.setenv("TP_REDIS_URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("TP_LOG_LEVEL", "debug")
    monkeypatch.setenv("TP_TRAINING_SLOTS", "3")
    monkeypatch.setenv("TP_NODE_NAME", "gpu-box-1")

    settings = load_settings()

    assert settings.home == (tmp_path / "elsewhere").resolve()
    assert settings.resolved_database_url == f"sqlite:///{settings.home / 'platform.db'}"
    assert (settings.host, settings.port) == ("0.0.0.0", 9123)
    assert settings.resolved_api_url == "http://0.0.0.0:9123"
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert settings.log_level == "DEBUG"
    assert settings.training_slots == 3
    assert settings.node_name == "gpu-box-1"


def test_a_relative_home_with_tilde_is_made_absolute(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TP_HOME", "~/platform-data")
    assert load_settings().home == (clean_env / "platform-data").resolve()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://tp:pw@db:5432/tp", "postgresql+psycopg://tp:pw@db:5432/tp"),
        ("postgres://tp@db/tp", "postgresql+psycopg://tp@db/tp"),
        ("postgresql+psycopg://tp@db/tp", "postgresql+psycopg://tp@db/tp"),
        ("sqlite:////var/lib/tp/platform.db", "sqlite:////var/lib/tp/platform.db"),
    ],
)
def test_database_urls_use_the_shipped_driver(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    monkeypatch.setenv("TP_DATABASE_URL", given)
    settings = load_settings()
    assert settings.database_url == expected
    assert settings.resolved_database_url == expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TP_PORT", "abc"),
        ("TP_PORT", "70000"),
        ("TP_PORT", "0"),
        ("TP_DATABASE_URL", "mysql://x"),
        ("TP_LOG_LEVEL", "LOUD"),
        ("TP_REDIS_URL", "http://x"),
        ("TP_TRAINING_SLOTS", "0"),
        ("TP_SUPERVISOR_INTERVAL_S", "-1"),
    ],
)
def test_an_invalid_value_names_the_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert variable in str(caught.value)


def test_only_the_bad_variables_are_named(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_PORT", "abc")
    monkeypatch.setenv("TP_LOG_LEVEL", "LOUD")
    monkeypatch.setenv("TP_HOST", "10.0.0.1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "TP_PORT" in message and "TP_LOG_LEVEL" in message
    assert "TP_HOST" not in message


def test_keyword_overrides_win_over_the_environment(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TP_PORT", "9000")
    settings = load_settings(port=9001, home=tmp_path / "h")
    assert settings.port == 9001
    assert settings.home == (tmp_path / "h").resolve()


def test_settings_are_frozen(clean_env: Path) -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1


def test_children_read_the_same_home_database_and_redis(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path / "h", redis_url="redis://127.0.0.1:1/0")
    for name, value in environ_for_children(settings).items():
        if name.startswith("TP_"):
            monkeypatch.setenv(name, value)

    child = load_settings()  # what a service started with that environment reads

    assert child.home == settings.home
    assert child.resolved_database_url == settings.resolved_database_url
    assert child.redis_url == settings.redis_url


def test_the_cli_refuses_to_start_with_a_bad_setting(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TP_")},
        "TP_HOME": str(tmp_path / "home"),
        "TP_PORT": "abc",
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, "-m", "training_platform", "status"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "TP_PORT" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists()
