"""The one Celery configuration shared by API, workers, beat and Flower.

Producer and consumers with different transport options leave messages sitting in Redis
without an error, so nothing else may configure Celery.
"""

from __future__ import annotations

from typing import Any

from training_platform.core.settings import Settings
from training_platform.worker.queues import (
    ALL_QUEUES,
    BROKER_PRIORITY_STEPS,
    DEFAULT,
    EVALUATION,
    KEY_PREFIX,
    KEY_SEPARATOR,
    MAINTENANCE,
    PREPROCESSING,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    TRAINING,
    broker_priority,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# Beat's periodic tasks and the passes they run: a message every supervisor period that would
# bury the jobs' own tasks in Flower (1,460 ticks to 7 trainings in an afternoon). They send
# no task events, so Flower never lists them; the supervisor's heartbeat (`tp status`) and the
# general worker's log show that they run.
HOUSEKEEPING_TASKS = frozenset(
    {
        "tp.system.tick",
        "tp.supervisor.tick",
        "tp.scheduling.pass",
        "tp.scheduling.refresh",
        "tp.pipelines.tick",
        "tp.evaluation.tick",
        "tp.serving.tick",
        "tp.surgery.tick",
        "tp.hosts.refresh",
        "tp.monitoring.notify",
    }
)


def redis_url(settings: Settings) -> str:
    """The broker URL: TP_REDIS_URL, else the conventional local Redis."""
    return settings.redis_url or DEFAULT_REDIS_URL


def transport_options(settings: Settings) -> dict[str, Any]:
    """Options of the Redis transport; identical in every process or messages get stranded."""
    return {
        "priority_steps": BROKER_PRIORITY_STEPS,
        "sep": KEY_SEPARATOR,
        "queue_order_strategy": "priority",
        # Trainings hold their message until they end (acks_late); a redelivered copy finds
        # the job no longer queued and does nothing, so this only bounds how long a message
        # of a dead worker waits before it is looked at again.
        "visibility_timeout": settings.broker_visibility_timeout_s,
        "global_keyprefix": KEY_PREFIX,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting of the platform."""
    from kombu import Exchange, Queue  # here: the API imports this module without Celery

    exchange = Exchange("tp", type="direct")
    return {
        "broker_url": redis_url(settings),
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_queues": [Queue(name, exchange, routing_key=name) for name in ALL_QUEUES],
        "task_default_queue": DEFAULT,
        "task_default_exchange": "tp",
        "task_default_routing_key": DEFAULT,
        "task_default_priority": broker_priority(PRIORITY_DEFAULT),
        "task_queue_max_priority": PRIORITY_MAX,
        "task_routes": {
            "tp.jobs.run": {"queue": TRAINING, "routing_key": TRAINING},
            "tp.jobs.prepare": {"queue": PREPROCESSING, "routing_key": PREPROCESSING},
            "tp.system.tick": {"queue": MAINTENANCE, "routing_key": MAINTENANCE},
            "tp.supervisor.tick": {"queue": MAINTENANCE, "routing_key": MAINTENANCE},
            "tp.scheduling.pass": {"queue": MAINTENANCE, "routing_key": MAINTENANCE},
            "tp.scheduling.refresh": {"queue": MAINTENANCE, "routing_key": MAINTENANCE},
            "tp.pipelines.tick": {"queue": MAINTENANCE, "routing_key": MAINTENANCE},
            "tp.evaluation.tick": {"queue": MAINTENANCE, "routing_key": MAINTENANCE},
            "tp.evaluation.score": {"queue": EVALUATION, "routing_key": EVALUATION},
            "tp.serving.tick": {"queue": MAINTENANCE, "routing_key": MAINTENANCE},
            "tp.hosts.refresh": {"queue": MAINTENANCE, "routing_key": MAINTENANCE},
            "tp.monitoring.notify": {"queue": MAINTENANCE, "routing_key": MAINTENANCE},
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "worker_prefetch_multiplier": 1,
        # Pool processes are recycled, so that what a task leaves behind (imported libraries,
        # caches of big datasets) cannot make a long-lived worker grow without bound.
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child,
        "worker_max_memory_per_child": settings.worker_max_memory_per_child_mb * 1024,  # KiB
        # Task events feed Flower; nothing else reads them. Housekeeping tasks send none
        # (`send_events` here for a worker's events; worker/app.py drops their task-sent).
        "worker_send_task_events": settings.flower,
        "task_send_sent_event": settings.flower,
        "task_annotations": {name: {"send_events": False} for name in HOUSEKEEPING_TASKS},
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            # The supervisor, pipelines, evaluation, ... passes (system/tasks.py), in one message.
            "maintenance": {
                "task": "tp.system.tick",
                "schedule": settings.supervisor_interval_s,
                "options": {
                    "queue": MAINTENANCE,
                    "priority": broker_priority(PRIORITY_MAX),
                    # A tick that waited this long is stale; the next one is already coming.
                    "expires": max(settings.supervisor_interval_s * 5, 10.0),
                },
            },
            "gpu-inventory": {
                "task": "tp.scheduling.refresh",
                "schedule": settings.gpu_refresh_interval_s,
                "options": {
                    "queue": MAINTENANCE,
                    "priority": broker_priority(PRIORITY_MAX),
                    "expires": max(settings.gpu_refresh_interval_s * 3, 10.0),
                },
            },
            "remote-hosts": {
                "task": "tp.hosts.refresh",
                "schedule": settings.remote_refresh_interval_s,
                "options": {
                    "queue": MAINTENANCE,
                    "priority": broker_priority(PRIORITY_MAX),
                    "expires": max(settings.remote_refresh_interval_s * 3, 10.0),
                },
            },
        },
    }
