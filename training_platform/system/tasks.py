"""A ping task: records when it ran, so callers can measure round trips and ordering."""

from __future__ import annotations

import os
import time

import redis

from training_platform.core.settings import get_settings
from training_platform.worker.app import app
from training_platform.worker.config import redis_url
from training_platform.worker.queues import KEY_PREFIX

PING_LIST = f"{KEY_PREFIX}ping:"


@app.task(name="tp.system.ping")
def ping(channel: str, label: str) -> None:
    """Append `label`, the time it ran and the worker process to the list tp:ping:<channel>."""
    client = redis.Redis.from_url(redis_url(get_settings()))
    client.rpush(PING_LIST + channel, f"{label} {time.time()} {os.getpid()}")
    client.expire(PING_LIST + channel, 3600)
