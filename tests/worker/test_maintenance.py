"""The maintenance tick: one beat message per period runs the supervisor, surgery, pipelines,
evaluation, serving and notification passes, in that order, each even when one before it
failed."""

from __future__ import annotations

from typing import Any

import pytest

from training_platform.core.settings import load_settings
from training_platform.system import tasks
from training_platform.worker.config import celery_config


def test_beat_sends_one_maintenance_message_per_period() -> None:
    schedule = celery_config(load_settings(supervisor_interval_s=2))["beat_schedule"]
    every_period = {e["task"] for e in schedule.values() if e["schedule"] == 2}
    assert every_period == {"tp.system.tick"}
    assert [name for name, _ in tasks.MAINTENANCE] == [
        "supervisor",
        "surgery",
        "pipelines",
        "evaluation",
        "serving",
        "notifications",
    ]


def test_a_failing_pass_is_reported_and_the_later_ones_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []

    def part(name: str, fails: bool = False) -> Any:
        def run() -> dict[str, Any]:
            ran.append(name)
            if fails:
                raise RuntimeError("database is gone")
            return {"done": name}

        return run

    monkeypatch.setattr(
        tasks,
        "MAINTENANCE",
        (("supervisor", part("supervisor", fails=True)), ("pipelines", part("pipelines"))),
    )
    report = tasks.maintenance_tick()
    assert ran == ["supervisor", "pipelines"]
    assert report == {
        "supervisor": {"error": "RuntimeError: database is gone"},
        "pipelines": {"done": "pipelines"},
    }
