"""The dispatch benchmark's baseline: a bare Celery app whose one task spawns `python -c pass`.

Started by benchmarks/dispatch.py as `celery -A bare_spawn worker` on the platform's Redis:
no database, no scheduling, no plan; the time from sending the task to the child process
existing is what any Celery-based launcher pays at least.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import redis
from celery import Celery

QUEUE = "bench-bare-spawn"
app = Celery("bare-spawn", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.bare_spawn")
def spawn(key: str) -> None:
    """Start `python -c pass`; record when it exists (Popen returned), then reap it."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    spawned = time.time()
    redis.Redis.from_url(app.conf.broker_url).rpush(key, str(spawned))
    process.wait()
