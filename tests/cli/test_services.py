"""Process management of `tp up`: a private Redis when none answers, clean stops."""

from __future__ import annotations

import pytest

from training_platform.cli import services


def test_a_private_redis_is_started_when_none_answers(sqlite_settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    closed = f"redis://127.0.0.1:{services.free_port()}/0"
    monkeypatch.setattr(services, "DEFAULT_REDIS_URL", closed)
    settings = sqlite_settings.model_copy(update={"redis_url": None})
    url = services.ensure_redis(settings)
    try:
        assert url != closed and services.redis_answers(url)
        state = services.read_state(settings, services.REDIS)
        assert services.is_alive(state)
        assert services.effective_redis_url(settings) == url
        assert services.ensure_redis(settings) == url  # found again, not started twice
    finally:
        assert services.stop(settings, services.REDIS)
    assert not services.is_alive(state)
    assert services.group_members(int(state["pid"])) == []
    assert not services.redis_answers(url)


def test_an_unreachable_configured_redis_is_an_error(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    settings = sqlite_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with pytest.raises(services.ServiceError, match="does not answer"):
        services.ensure_redis(settings)


def test_the_flower_password_is_generated_once_and_private(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    sqlite_settings.home.mkdir(parents=True)
    first = services.flower_password(sqlite_settings)
    assert first == services.flower_password(sqlite_settings) and len(first) >= 16
    assert (sqlite_settings.home / "flower-password").stat().st_mode & 0o077 == 0


def test_secrets_stay_off_command_lines(sqlite_settings) -> None:  # type: ignore[no-untyped-def]
    sqlite_settings.home.mkdir(parents=True)
    password = services.flower_password(sqlite_settings)
    for spec in services.service_specs(sqlite_settings, "redis://127.0.0.1:6379/0"):
        assert password not in " ".join(spec.argv)
