"""Queue order against a real Celery worker and Redis: priority first, then arrival.

Priorities silently collapsed in past Celery releases; this pins what the platform relies on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from training_platform.system.tasks import PING_LIST, ping
from training_platform.worker.queues import DEFAULT, broker_priority


def _worker(redis_url: str, home: Path, queue: str, **settings: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, TP_REDIS_URL=redis_url, TP_HOME=str(home), **settings)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "training_platform.worker.app",
            "worker",
            "-Q",
            queue,
            "-c",
            "1",
            "--prefetch-multiplier",
            "1",
            "-n",
            f"order-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _wait_for(client: redis.Redis, key: str, count: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.llen(key) >= count:
            break
        time.sleep(0.1)
    return [item.decode().split()[0] for item in client.lrange(key, 0, -1)]


def test_mixed_priorities_run_highest_first_then_in_arrival_order(  # type: ignore[no-untyped-def]
    redis_url: str, tmp_path: Path
) -> None:
    channel = uuid.uuid4().hex
    # (label, user priority); 9 is the most urgent.
    sends = [
        ("a5", 5),
        ("b1", 1),
        ("c9", 9),
        ("d5", 5),
        ("e0", 0),
        ("f9", 9),
        ("g7", 7),
        ("h1", 1),
        ("i3", 3),
        ("j5", 5),
        ("k8", 8),
        ("l0", 0),
    ]
    for label, priority in sends:
        ping.apply_async(args=[channel, label], queue=DEFAULT, priority=broker_priority(priority))
    worker = _worker(redis_url, tmp_path / "home", DEFAULT)
    try:
        order = _wait_for(redis.Redis.from_url(redis_url), PING_LIST + channel, len(sends))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    expected = [label for label, _ in sorted(sends, key=lambda s: -s[1])]  # stable: FIFO ties
    assert order == expected


def test_user_priority_direction_is_written_once() -> None:
    assert broker_priority(9) == 0 and broker_priority(0) == 9
    with pytest.raises(ValueError, match="0-9"):
        broker_priority(10)


def test_worker_processes_are_replaced_after_their_quota_of_tasks(  # type: ignore[no-untyped-def]
    redis_url: str, tmp_path: Path
) -> None:
    # What a task leaves behind in a pool process (libraries, caches) goes with the process.
    channel = uuid.uuid4().hex
    for index in range(6):
        ping.apply_async(args=[channel, str(index)], queue=DEFAULT)
    worker = _worker(redis_url, tmp_path / "home", DEFAULT, TP_WORKER_MAX_TASKS_PER_CHILD="2")
    try:
        client = redis.Redis.from_url(redis_url)
        _wait_for(client, PING_LIST + channel, 6)
        pids = [item.decode().split()[2] for item in client.lrange(PING_LIST + channel, 0, -1)]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert len(pids) == 6
    assert [len(set(pids[i : i + 2])) for i in range(0, 6, 2)] == [1, 1, 1]
    assert len(set(pids)) == 3  # a new process every second task
