"""Redis may lose every message: the supervisor finds waiting jobs whose message (prepare or
start) is gone from the real broker and sends it again; messages still there are left alone."""

from __future__ import annotations

import redis
from sqlmodel import Session

from training_platform.jobs import supervisor
from training_platform.jobs.models import Job
from training_platform.jobs.tasks import CeleryDispatcher
from training_platform.runners.memory import MemoryRunner
from training_platform.worker.broker import RedisBrokerView


def test_a_flushed_broker_gets_the_start_messages_back(api, engine, settings, redis_url) -> None:  # type: ignore[no-untyped-def]
    body = {"name": "lost", "algorithm": "sft", "model": "tiny-qwen2", "dataset": "tiny-sft"}
    ids = [api.post("/api/v1/jobs", json={**body, "priority": p}).json()["id"] for p in (2, 8)]
    broker = RedisBrokerView(redis_url)
    with Session(engine) as session:
        first = [supervisor.message_id(session.get(Job, i)) for i in ids]
    assert set(first) <= broker.pending_task_ids()

    later = settings.model_copy(update={"dispatch_grace_s": 0.0001})
    resend = supervisor.resender(engine, CeleryDispatcher())
    report = supervisor.tick(
        engine, later, {"memory": MemoryRunner()}, broker=broker, dispatch=resend
    )
    assert report.redispatched == []  # the messages are still there

    redis.Redis.from_url(redis_url).flushdb()  # Redis restarted without persistence
    assert broker.pending_task_ids() == set()
    report = supervisor.tick(
        engine, later, {"memory": MemoryRunner()}, broker=broker, dispatch=resend
    )
    assert report.redispatched == ids
    with Session(engine) as session:
        jobs = [session.get(Job, i) for i in ids]
    assert [(j.status, j.dispatch_count) for j in jobs] == [("pending", 2), ("pending", 2)]
    assert broker.pending_task_ids() == {supervisor.message_id(j) for j in jobs}
    # The jobs are pending: their prepare messages went back to the preprocessing queue,
    # priority 8 in its bucket.
    assert broker.depths(("preprocessing",))["preprocessing"][1] == 1
