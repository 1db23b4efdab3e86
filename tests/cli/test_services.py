"""Process management of `tp up`: a private Redis when none answers, clean stops."""

from __future__ import annotations

import psutil
import pytest
import redis

from training_platform.cli import services


def state_pid(settings) -> int:  # type: ignore[no-untyped-def]
    return int(services.read_state(settings, services.REDIS)["pid"])


def test_a_private_redis_is_started_when_none_answers(sqlite_settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    closed = f"redis://127.0.0.1:{services.free_port()}/0"
    monkeypatch.setattr(services, "DEFAULT_REDIS_URL", closed)
    settings = sqlite_settings.model_copy(update={"redis_url": None})
    url = services.ensure_redis(settings)
    try:
        assert url != closed and services.redis_answers(url)
        # its password, generated into TP_HOME: nothing answers without it
        password = (settings.home / "redis-password").read_text().strip()
        assert len(password) >= 24 and f":{password}@" in url
        assert (settings.home / "redis-password").stat().st_mode & 0o077 == 0
        assert (settings.state_dir / services.REDIS_URL_FILE).stat().st_mode & 0o077 == 0
        open_url = url.replace(f":{password}@", "")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(open_url).ping()
        assert password not in " ".join(psutil.Process(int(state_pid(settings))).cmdline())
        assert password not in services.shown_url(url) and "***" in services.shown_url(url)
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


def test_without_flower_nothing_starts_it_no_event_is_sent_and_status_says_off(
    sqlite_settings,
) -> None:  # type: ignore[no-untyped-def]
    from training_platform.worker.config import celery_config

    sqlite_settings.home.mkdir(parents=True)
    assert services.FLOWER in [s.name for s in services.service_specs(sqlite_settings, "redis://x")]
    assert celery_config(sqlite_settings)["worker_send_task_events"] is True
    off = sqlite_settings.model_copy(update={"flower": False})
    assert services.FLOWER not in [s.name for s in services.service_specs(off, "redis://x")]
    config = celery_config(off)
    assert config["worker_send_task_events"] is False and config["task_send_sent_event"] is False
    flower = next(s for s in services.health(off) if s.name == services.FLOWER)
    assert (flower.running, flower.healthy) == (False, True) and "TP_FLOWER=false" in flower.detail
    stopped = next(s for s in services.health(sqlite_settings) if s.name == services.FLOWER)
    assert (stopped.running, stopped.healthy) == (False, False)
