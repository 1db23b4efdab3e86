"""Looks inside the Redis broker: which task messages wait or run, and queue depths."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from training_platform.worker.queues import (
    ALL_QUEUES,
    KEY_PREFIX,
    KEY_SEPARATOR,
    TRAINING,
    queue_keys,
)

log = logging.getLogger(__name__)
UNACKED_KEY = f"{KEY_PREFIX}unacked"


def _task_id(raw: bytes | str) -> str | None:
    try:
        message: Any = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
        message = message[0] if message else None
    if not isinstance(message, dict):
        return None
    task_id = message.get("headers", {}).get("id") or message.get("properties", {}).get(
        "correlation_id"
    )
    return str(task_id) if task_id else None


class RedisBrokerView:
    """Reads queue lists and the unacked hash of the Redis transport."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5)

    def host_training_queues(self) -> list[str]:
        """Per-host training queues (training.<node>) that exist in Redis now."""
        names = set()
        pattern = f"{KEY_PREFIX}{TRAINING}.*"
        for key in self.client.scan_iter(match=pattern, count=500):
            name = (key.decode() if isinstance(key, bytes) else str(key))[len(KEY_PREFIX) :]
            base = name.split(KEY_SEPARATOR, 1)[0]  # drop the priority suffix
            if "_kombu" not in base:
                names.add(base)
        return sorted(names)

    def pending_task_ids(self, queues: tuple[str, ...] | None = None) -> set[str] | None:
        """Ids of messages waiting in the queues or delivered but not yet acknowledged."""
        try:
            if queues is None:
                queues = (*ALL_QUEUES, *self.host_training_queues())
            found: set[str] = set()
            for queue in queues:
                for key in queue_keys(queue):
                    for raw in self.client.lrange(key, 0, -1):
                        if (task_id := _task_id(raw)) is not None:
                            found.add(task_id)
            for raw in self.client.hvals(UNACKED_KEY):
                if (task_id := _task_id(raw)) is not None:
                    found.add(task_id)
            return found
        except redis.RedisError:
            log.warning("cannot read the broker; lost messages are not checked this time")
            return None

    def depths(self, queues: tuple[str, ...] = ALL_QUEUES) -> dict[str, list[int]]:
        """Waiting messages per queue and per broker priority bucket (0 first)."""
        result: dict[str, list[int]] = {}
        pipe = self.client.pipeline()
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        counts = pipe.execute()
        position = 0
        for queue in queues:
            steps = len(queue_keys(queue))
            result[queue] = [int(c) for c in counts[position : position + steps]]
            position += steps
        return result
