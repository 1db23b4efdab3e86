"""Publishing what ingestion stores to Redis pub/sub, for live views in every API process.

The database stays the source of truth: a message lost here (Redis down, a slow client
dropped) is made good by the client's resume, which reads the database. Publishing never
fails an ingestion.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import redis

log = logging.getLogger(__name__)
# The version of the live messages (monitoring/schemas.py describes them).
SCHEMA_VERSION = 1
CHANNEL_PREFIX = "tp:live:job:"
# Hash job id -> seconds from the newest metric line's timestamp to its storage (Prometheus).
LAG_KEY = "tp:live:ingestion_lag"


def channel(job_id: int) -> str:
    """The pub/sub channel of one job's live messages."""
    return f"{CHANNEL_PREFIX}{job_id}"


class Publisher:
    """Sends live messages; swallows Redis errors (the database has everything)."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def _send(self, job_id: int, message: dict[str, Any]) -> None:
        try:
            self._client.publish(channel(job_id), json.dumps(message, separators=(",", ":")))
        except redis.RedisError as error:
            log.warning("live message for job %s not published: %s", job_id, error)

    def metrics(
        self, job_id: int, attempt: int, points: Sequence[tuple[int, str, float | None]]
    ) -> None:
        """Points just stored (step, key, value)."""
        if points:
            self._send(job_id, self._metrics_message(job_id, attempt, points))

    @staticmethod
    def _metrics_message(
        job_id: int, attempt: int, points: Sequence[tuple[int, str, float | None]]
    ) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "type": "metrics",
            "job_id": job_id,
            "attempt": attempt,
            "points": [{"step": s, "key": k, "value": v} for s, k, v in points],
            "last_step": max(s for s, _, _ in points),
        }

    @staticmethod
    def _log_message(job_id: int, attempt: int, offset: int, data: bytes) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "type": "log",
            "job_id": job_id,
            "attempt": attempt,
            "offset": offset,
            "text": data.decode("utf-8", errors="replace"),
        }

    def log(self, job_id: int, attempt: int, offset: int, data: bytes) -> None:
        """Log bytes just stored, from their offset in the attempt's log."""
        if data:
            self._send(job_id, self._log_message(job_id, attempt, offset, data))

    def round(
        self,
        job_id: int,
        attempt: int,
        log_offset: int,
        log_data: bytes,
        points: Sequence[tuple[int, str, float | None]],
        lag: float | None,
    ) -> None:
        """What one ingestion round stored (log bytes, points, lag), in one trip to Redis."""
        messages = []
        if log_data:
            messages.append(self._log_message(job_id, attempt, log_offset, log_data))
        if points:
            messages.append(self._metrics_message(job_id, attempt, points))
        if not messages and lag is None:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for message in messages:
                pipe.publish(channel(job_id), json.dumps(message, separators=(",", ":")))
            if lag is not None:
                pipe.hset(LAG_KEY, str(job_id), f"{max(lag, 0.0):.3f}")
            pipe.execute()
        except redis.RedisError as error:
            log.warning("live messages for job %s not published: %s", job_id, error)

    def lag(self, job_id: int, seconds: float) -> None:
        """How far behind the trainer the last ingestion of the job was."""
        try:
            self._client.hset(LAG_KEY, str(job_id), f"{max(seconds, 0.0):.3f}")
        except redis.RedisError as error:
            log.warning("ingestion lag of job %s not recorded: %s", job_id, error)

    def gpu(self, job_id: int, samples: list[dict[str, Any]]) -> None:
        """GPU samples just taken of the job's devices."""
        self._send(
            job_id, {"v": SCHEMA_VERSION, "type": "gpu", "job_id": job_id, "samples": samples}
        )

    def alert(self, job_id: int, alert: dict[str, Any]) -> None:
        """An alert raised for the job."""
        self._send(job_id, {"v": SCHEMA_VERSION, "type": "alert", "job_id": job_id, "alert": alert})


@lru_cache(maxsize=4)
def publisher(url: str) -> Publisher:
    """The process's publisher for a Redis URL."""
    return Publisher(url)
