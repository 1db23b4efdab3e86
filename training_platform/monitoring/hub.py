"""The API process's live hub: one Redis subscription, fanned out to its WebSocket clients.

One pattern subscription per API process receives every job's live messages; each client
has a bounded queue, and a client whose queue is full is dropped (it reconnects and resumes
from the database), so a slow client never blocks the others or grows memory. Status
changes are read from the database once a second per watched job, not per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from training_platform.monitoring.live import CHANNEL_PREFIX

if TYPE_CHECKING:
    from training_platform.monitoring.service import Changes

log = logging.getLogger(__name__)
QUEUE_LIMIT = 2000  # messages a client may lag behind before it is dropped
OVERVIEW = 0  # the subscription key of overview clients (no job has id 0)
STATUS_INTERVAL_S = 1.0
RAW = "_raw"  # the JSON text a message from Redis arrived as (never sent as a field)


def encoded(message: dict[str, Any]) -> str:
    """The message as JSON text: as it arrived if it did, else encoded now without RAW."""
    text = message.get(RAW)
    if isinstance(text, str):
        return text
    return json.dumps({k: v for k, v in message.items() if k != RAW}, separators=(",", ":"))


@dataclass(eq=False)
class Subscription:
    """One client's view of one job."""

    job_id: int
    queue: asyncio.Queue[dict[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_LIMIT)
    )
    dropped: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, message: dict[str, Any]) -> None:
        """Queue a message, or mark the client dropped when it lags too far."""
        if self.dropped.is_set():
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped.set()


class LiveHub:
    """Fans live messages out to subscriptions; polls the status of watched jobs."""

    def __init__(
        self,
        redis_url: str,
        read_state: Callable[[int], dict[str, Any] | None],
        read_changes: Callable[[Any], Changes] | None = None,
    ) -> None:
        self._url = redis_url
        self._read_state = read_state  # blocking: run in a thread
        self._read_changes = read_changes  # what changed since a mark (and the new mark)
        self._subscriptions: dict[int, set[Subscription]] = {}
        self._pollers: dict[int, asyncio.Task[None]] = {}
        self._overview_since: Any = None  # where the overview poller's first read starts
        self._overview_reading = False  # it has started from there
        self._reader: asyncio.Task[None] | None = None
        self._client: aioredis.Redis | None = None
        self.delivered = 0

    @property
    def clients(self) -> int:
        """WebSocket clients connected to this process."""
        return sum(len(subs) for subs in self._subscriptions.values())

    async def start(self) -> None:
        """Subscribe to every job's channel before any client can connect."""
        self._client = aioredis.Redis.from_url(self._url)
        pubsub = None
        try:
            pubsub = await self._subscribe()
        except Exception as error:  # Redis not there yet: the reader keeps trying
            log.warning("live hub cannot subscribe yet: %s", error)
        self._reader = asyncio.create_task(self._read(pubsub), name="live-hub-reader")

    async def _subscribe(self) -> Any:
        assert self._client is not None
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
        return pubsub

    async def stop(self) -> None:
        """Cancel the reader and pollers, close Redis."""
        tasks = [t for t in (self._reader, *self._pollers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.aclose()

    def subscribe(self, job_id: int) -> Subscription:
        """A new client of a job (or of the overview). Once it has read its snapshot, a job
        client calls `watch_status` and an overview client `watch_overview`."""
        subscription = Subscription(job_id)
        self._subscriptions.setdefault(job_id, set()).add(subscription)
        return subscription

    def watch_status(self, job_id: int, seen: dict[str, Any] | None) -> None:
        """Poll a job's status while anyone watches it, reporting every change from `seen`:
        the state read with the client's snapshot. (The poller used to take its own first
        read as where it starts, so a job that ended between a client's snapshot and that
        read never sent the client its final status.) A poller already running goes on from
        its last read, which a change after this client's snapshot also differs from."""
        if job_id in self._pollers or job_id not in self._subscriptions or job_id == OVERVIEW:
            return
        poll = self._poll_status(job_id, seen)
        self._pollers[job_id] = asyncio.create_task(poll, name=f"live-status-{job_id}")

    def watch_overview(self, since: Any) -> None:
        """Poll job changes for overview clients, from `since`: a mark read before the
        client's snapshot, so that a change between that snapshot and the poller's first read
        is reported (the first read used to take its own mark and pass over such a change).
        Until the first read starts, the oldest mark of the clients so far is where it starts.
        A poller already reading reports whatever changes after its last read: its clients
        subscribed before their snapshots, so they miss nothing either."""
        if OVERVIEW not in self._subscriptions or self._overview_reading:
            return
        if self._overview_since is None:
            self._overview_since = since
        elif since is not None:
            self._overview_since = self._overview_since.older(since)
        if OVERVIEW not in self._pollers:
            task = asyncio.create_task(self._poll_overview(), name="live-status-overview")
            self._pollers[OVERVIEW] = task

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a client; the last one stops the job's status poller."""
        subs = self._subscriptions.get(subscription.job_id)
        if subs is None:
            return
        subs.discard(subscription)
        if not subs:
            del self._subscriptions[subscription.job_id]
            poller = self._pollers.pop(subscription.job_id, None)
            if poller is not None:
                poller.cancel()
            if subscription.job_id == OVERVIEW:
                self._overview_since, self._overview_reading = None, False

    def _fan_out(self, job_id: int, message: dict[str, Any]) -> None:
        for subscription in list(self._subscriptions.get(job_id, ())):
            subscription.offer(message)
            self.delivered += 1

    async def _read(self, pubsub: Any) -> None:
        # Reconnects on its own: a Redis restart must not end live views for good.
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._subscribe()
                async for raw in pubsub.listen():
                    if raw.get("type") != "pmessage":
                        continue
                    name = raw["channel"].decode()
                    try:
                        job_id = int(name[len(CHANNEL_PREFIX) :])
                        text = raw["data"].decode()
                        message = json.loads(text)
                    except ValueError:
                        continue
                    # Kept as received: a client it suits as it is gets these very bytes,
                    # rather than every client encoding the same message again.
                    message[RAW] = text
                    if job_id in self._subscriptions:
                        self._fan_out(job_id, message)
                    if message.get("type") == "alert" and OVERVIEW in self._subscriptions:
                        self._fan_out(OVERVIEW, message)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis gone: clients resume from the database
                log.warning("live hub lost Redis (%s); retrying in 1 s", error)
                pubsub = None
                # Messages published meanwhile are gone: have every client resume from the
                # database (they reconnect with their last step) rather than keep a gap.
                for subscriptions in self._subscriptions.values():
                    for subscription in subscriptions:
                        subscription.dropped.set()
                await asyncio.sleep(1.0)

    async def _poll_overview(self) -> None:
        if self._read_changes is None:
            return
        mark: Any = self._overview_since
        self._overview_since, self._overview_reading = None, True
        counts: dict[str, int] | None = None
        progress: dict[int, dict[str, Any]] = {}
        while True:
            try:
                changes = await asyncio.to_thread(self._read_changes, mark)
            except Exception as error:  # the database restarting: keep trying
                log.warning("live overview not read: %s", error)
            else:
                if mark is not None:  # the first read only sets the mark: clients got a snapshot
                    self._report(changes, counts, progress)
                mark, counts, progress = changes.mark, changes.counts, changes.progress
            await asyncio.sleep(STATUS_INTERVAL_S)

    def _report(
        self, changes: Changes, counts: dict[str, int] | None, progress: dict[int, dict[str, Any]]
    ) -> None:
        """Overview messages for what changed since the last read: each job's new state, each
        pipeline that moved, the step of each running job that moved, the counts."""
        for state in changes.jobs:
            self._fan_out(OVERVIEW, {"v": 1, "type": "status", "job_id": state["id"], "job": state})
        for state in changes.pipelines:
            self._fan_out(OVERVIEW, {"v": 1, "type": "pipeline", "job_id": 0, "pipeline": state})
        for job_id, now in changes.progress.items():
            if progress.get(job_id) != now:
                self._fan_out(OVERVIEW, {"v": 1, "type": "progress", "job_id": job_id, "job": now})
        if changes.counts != counts:
            self._fan_out(
                OVERVIEW, {"v": 1, "type": "counts", "job_id": 0, "counts": changes.counts}
            )

    async def _poll_status(self, job_id: int, last: dict[str, Any] | None) -> None:
        while True:
            try:
                state = await asyncio.to_thread(self._read_state, job_id)
            except Exception as error:  # the database restarting: keep trying
                log.warning("live status of job %s not read: %s", job_id, error)
                state = None
            if state is not None and state != last:
                if last is not None:
                    self._fan_out(
                        job_id, {"v": 1, "type": "status", "job_id": job_id, "job": state}
                    )
                last = state
            await asyncio.sleep(STATUS_INTERVAL_S)
