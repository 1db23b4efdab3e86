"""The Celery app. Import `app` from here; its configuration comes from worker/config.py."""

from __future__ import annotations

from celery import Celery
from celery.signals import beat_init, worker_init

from training_platform.core.db import get_engine, migrate
from training_platform.core.logging import keep_secrets_out_of_logs
from training_platform.core.settings import get_settings
from training_platform.worker.config import celery_config

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


def create_app() -> Celery:
    """A Celery app configured from the current settings."""
    celery = Celery("training_platform", include=TASK_MODULES)
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
