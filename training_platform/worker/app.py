"""The Celery app. Import `app` from here; its configuration comes from worker/config.py."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.signals import beat_init, worker_init

from training_platform.core.db import get_engine, migrate
from training_platform.core.logging import keep_secrets_out_of_logs
from training_platform.core.settings import get_settings
from training_platform.worker.config import HOUSEKEEPING_TASKS, celery_config

TASK_MODULES = [
    "training_platform.datasets.tasks",
    "training_platform.evaluation.tasks",
    "training_platform.hosts.tasks",
    "training_platform.jobs.tasks",
    "training_platform.monitoring.tasks",
    "training_platform.pipelines.tasks",
    "training_platform.scheduling.tasks",
    "training_platform.serving.tasks",
    "training_platform.surgery.tasks",
    "training_platform.system.tasks",
]


class PlatformAMQP(AMQP):
    """Celery's messages, as Flower should see them: a housekeeping task sends no task-sent
    event (its `send_events` option silences only the worker's events of it), and a task's
    task-sent event names it as the worker's events do, by its shadow name (a task-sent event
    that reaches Flower after task-received would otherwise put the real name back)."""

    def as_task_v2(self, task_id: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """The message as Celery builds it, its task-sent event amended."""
        message = super().as_task_v2(task_id, name, *args, **kwargs)
        if message.sent_event is None:
            return message
        if name in HOUSEKEEPING_TASKS:
            return message._replace(sent_event=None)
        shadow = message.headers.get("shadow")
        if shadow:
            message.sent_event["name"] = shadow
        return message


def create_app() -> Celery:
    """A Celery app configured from the current settings."""
    celery = Celery("training_platform", include=TASK_MODULES, amqp=PlatformAMQP)
    celery.conf.update(celery_config(get_settings()))
    return celery


app = create_app()
keep_secrets_out_of_logs()


@worker_init.connect
@beat_init.connect
def _schema_at_head(**_: object) -> None:
    # A worker started on its own (not by `tp up`) must not run against an old schema.
    settings = get_settings()
    migrate(get_engine(settings), settings)
