"""Prometheus metrics of the platform itself, read at scrape time from the database and Redis.

Jobs by state, jobs waiting per queue and priority (from the database: Redis priority queues
are invisible to Flower), broker messages per queue and priority bucket, active device
leases, ingestion lag per running job, WebSocket clients, and API request latency.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import redis
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from training_platform.monitoring.live import LAG_KEY
from training_platform.worker.broker import RedisBrokerView
from training_platform.worker.queues import ALL_QUEUES, PRIORITY_MAX

log = logging.getLogger(__name__)
WAITING_STATUSES = ("pending", "queued", "resuming")


class PlatformCollector(Collector):
    """Computes the platform's gauges when Prometheus scrapes."""

    def __init__(self, engine: Engine, redis_url: str, clients: Callable[[], int]) -> None:
        self._engine = engine
        self._redis_url = redis_url
        self._clients = clients

    def collect(self) -> Iterator[Metric]:
        """Every gauge, fresh."""
        # Imported on the first scrape: the API's start does without the jobs' models.
        from training_platform.jobs.models import Job
        from training_platform.jobs.state import JobStatus
        from training_platform.scheduling.models import DeviceLease

        jobs = GaugeMetricFamily("tp_jobs", "Jobs by status.", labels=["status"])
        waiting = GaugeMetricFamily(
            "tp_jobs_waiting",
            "Jobs waiting (pending, queued, resuming) per queue and priority (9 first).",
            labels=["queue", "priority"],
        )
        leases = GaugeMetricFamily(
            "tp_device_leases_active", "Devices held by jobs.", labels=["host", "kind"]
        )
        with Session(self._engine) as session:
            counts = dict(
                session.exec(select(Job.status, func.count()).group_by(col(Job.status))).all()
            )
            for status in JobStatus:
                jobs.add_metric([status.value], float(counts.get(status.value, 0)))
            for queue, priority, count in session.exec(
                select(Job.queue, Job.priority, func.count())
                .where(col(Job.status).in_(WAITING_STATUSES))
                .group_by(col(Job.queue), col(Job.priority))
            ).all():
                waiting.add_metric([queue, str(priority)], float(count))
            for host, kind, count in session.exec(
                select(DeviceLease.host, DeviceLease.kind, func.count())
                .where(col(DeviceLease.released_at).is_(None))
                .group_by(col(DeviceLease.host), col(DeviceLease.kind))
            ).all():
                leases.add_metric([host, kind], float(count))
            running = {
                job_id
                for job_id in session.exec(
                    select(Job.id).where(Job.status == JobStatus.RUNNING.value)
                ).all()
            }
        yield from (jobs, waiting, leases)
        yield from self._redis_metrics(running)
        clients = GaugeMetricFamily(
            "tp_websocket_clients", "Live WebSocket clients of this API process."
        )
        clients.add_metric([], float(self._clients()))
        yield clients

    def _redis_metrics(self, running: set[int | None]) -> Iterator[Metric]:
        broker = GaugeMetricFamily(
            "tp_broker_messages",
            "Messages waiting in Redis per queue and user priority (9 first).",
            labels=["queue", "priority"],
        )
        lag = GaugeMetricFamily(
            "tp_ingestion_lag_seconds",
            "Per running job: from a metric line's timestamp to its storage, last ingestion.",
            labels=["job"],
        )
        try:
            view = RedisBrokerView(self._redis_url)
            for queue, buckets in view.depths(ALL_QUEUES).items():
                for bucket, count in enumerate(buckets):
                    broker.add_metric([queue, str(PRIORITY_MAX - bucket)], float(count))
            client = redis.Redis.from_url(self._redis_url, socket_timeout=2)
            for raw_job, seconds in client.hgetall(LAG_KEY).items():
                job = raw_job.decode() if isinstance(raw_job, bytes) else str(raw_job)
                if int(job) in running:
                    lag.add_metric([job], float(seconds))
        except (redis.RedisError, ValueError) as error:
            log.warning("metrics from Redis skipped: %s", error)
        yield from (broker, lag)


def registry_for(
    engine: Engine, redis_url: str, clients: Callable[[], int]
) -> tuple[CollectorRegistry, Histogram]:
    """A registry with the platform collector and the request-latency histogram."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(engine, redis_url, clients))
    latency = Histogram(
        "tp_http_request_duration_seconds",
        "API request latency by method, route template and status.",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    )
    return registry, latency


def timer() -> float:
    """A monotonic clock for request timing."""
    return time.perf_counter()
