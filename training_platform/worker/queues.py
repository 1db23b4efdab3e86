"""Queue names and the direction of priorities, defined once for every process.

Users give priorities 0-9 where 9 is the most urgent. Celery's Redis transport works the
other way round (0 is served first), so every send converts with broker_priority().
"""

from __future__ import annotations

TRAINING = "training"
EVALUATION = "evaluation"
DEFAULT = "default"
PREPROCESSING = "preprocessing"
MAINTENANCE = "maintenance"
# Starts of runs on remote hosts (upload inputs, launch, return): the supervisor watches them,
# so no worker slot is held while they train.
REMOTE = "remote"
ALL_QUEUES = (TRAINING, EVALUATION, DEFAULT, PREPROCESSING, MAINTENANCE, REMOTE)
# Consumed by the general worker; training has workers of its own so that light tasks never
# wait behind a training and priorities across queues cannot starve each other.
GENERAL_QUEUES = (DEFAULT, MAINTENANCE, PREPROCESSING, EVALUATION, REMOTE)

PRIORITY_MIN = 0
PRIORITY_MAX = 9
PRIORITY_DEFAULT = 5
BROKER_PRIORITY_STEPS = list(range(PRIORITY_MIN, PRIORITY_MAX + 1))
KEY_PREFIX = "tp:"
KEY_SEPARATOR = ":"
# Unix time of the last supervisor pass, written by the tick: `tp status` reads it.
SUPERVISOR_HEARTBEAT_KEY = f"{KEY_PREFIX}supervisor:last_tick"


def training_queue(node: str) -> str:
    """The training queue of one host: only that host's training worker consumes it."""
    return f"{TRAINING}.{node}"


def broker_priority(priority: int) -> int:
    """The Redis transport's priority (0 first) for a user priority (9 first)."""
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority must be {PRIORITY_MIN}-{PRIORITY_MAX}, got {priority}")
    return PRIORITY_MAX - priority


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold one queue's messages, highest priority first."""
    keys = []
    for step in BROKER_PRIORITY_STEPS:
        suffix = f"{KEY_SEPARATOR}{step}" if step else ""
        keys.append(f"{KEY_PREFIX}{queue}{suffix}")
    return keys
