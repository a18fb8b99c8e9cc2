"""One Redis pub/sub connection per process, fanning each job's live events out to its SSE feeds.

Each event is parsed and encoded as an SSE frame once, however many feeds watch its job. Pub/sub
loses messages across a disconnect, so after a reconnect (or when a slow feed's queue overflows)
every affected feed gets a ``RESYNC`` marker and re-reads the job's event log. The same
connection hears of revoked keys: the process forgets the key it remembered
(``common.tenants``) and the feeds opened with one get ``REVOKED`` and end; and it hears of
rendering jobs' previews (``common.previews``), for the feeds that take them: a preview is
best effort, dropped rather than queued for a feed that cannot keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from redis.asyncio import Redis

from common.keys import Keys
from common.logging import get_logger
from common.redis_errors import REDIS_TRANSIENT, backoff_s
from common.schemas import JobEvent, JobStatus

log = get_logger(__name__)

RESYNC = None  # queued instead of an event: "you may have missed some, read the log"
FEED_QUEUE_SIZE = 256


class Revoked:
    """Queued to a feed whose key was revoked: it ends (a reconnect then gets 401)."""


REVOKED = Revoked()


@dataclass(frozen=True)
class PreviewFrame:
    """A job's live preview, as its ready ``event: preview`` frame."""

    frame: bytes


def preview_frame(data: str) -> bytes:
    """A named, id-less frame: an EventSource's ``onmessage`` never sees it, and a resume by
    ``Last-Event-ID`` is not moved by it."""
    return f"event: preview\r\ndata: {data}\r\n\r\n".encode()


@dataclass(frozen=True)
class LiveEvent:
    """A published event, with its SSE frame ready to send."""

    seq: int
    terminal: bool
    frame: bytes
    status: JobStatus

    @classmethod
    def of(cls, event: JobEvent) -> LiveEvent:
        return cls(event.seq, event.terminal, sse_frame(event), event.status)


def sse_frame(event: JobEvent) -> bytes:
    return f"id: {event.seq}\r\ndata: {event.model_dump_json()}\r\n\r\n".encode()


FeedQueue = asyncio.Queue[LiveEvent | Revoked | PreviewFrame | None]


class EventFanout:
    """``on_revoked``: called with a tenant's name when its key is revoked (on any replica),
    before its feeds end: the process's remembered keys (``TenantStore.forget``)."""

    def __init__(
        self, redis: Redis, keys: Keys, on_revoked: Callable[[str], None] | None = None
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._on_revoked = on_revoked
        self._feeds: dict[str, set[FeedQueue]] = defaultdict(set)
        # Which tenant opened each feed, for revocations (rare: a scan of all feeds is fine).
        self._tenants: dict[FeedQueue, str] = {}
        # The job feeds that asked for previews, by job.
        self._preview_feeds: dict[str, set[FeedQueue]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-fanout")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def feed_count(self) -> int:
        """Open feeds (a batch's counts once, though it hears many jobs)."""
        return len(self._tenants)

    @contextlib.contextmanager
    def subscribe(self, job_id: str, tenant: str, *, previews: bool = False) -> Iterator[FeedQueue]:
        """``previews``: the queue hears the job's previews too (``PreviewFrame``)."""
        with self.subscribe_many([job_id], tenant) as queue:
            if not previews:
                yield queue
                return
            self._preview_feeds[job_id].add(queue)
            try:
                yield queue
            finally:
                self._preview_feeds[job_id].discard(queue)
                if not self._preview_feeds[job_id]:
                    del self._preview_feeds[job_id]

    @contextlib.contextmanager
    def subscribe_many(self, job_ids: list[str], tenant: str) -> Iterator[FeedQueue]:
        """One queue hearing every one of these jobs (a batch's feed)."""
        queue: FeedQueue = asyncio.Queue(FEED_QUEUE_SIZE)
        for job_id in job_ids:
            self._feeds[job_id].add(queue)
        self._tenants[queue] = tenant
        try:
            yield queue
        finally:
            del self._tenants[queue]
            for job_id in job_ids:
                self._feeds[job_id].discard(queue)
                if not self._feeds[job_id]:
                    del self._feeds[job_id]

    def _revoke(self, tenant: str) -> None:
        if self._on_revoked is not None:
            self._on_revoked(tenant)
        closed = 0
        for queue, owner in self._tenants.items():
            if owner == tenant:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(REVOKED)
                closed += 1
        if closed:
            log.info("fanout.feeds_revoked", tenant=tenant, feeds=closed)

    def _deliver(self, job_id: str, event: LiveEvent | None) -> None:
        for queue in self._feeds.get(job_id, ()):
            if queue.full():
                # A feed that cannot keep up drops its backlog and re-reads the log instead.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(RESYNC)
            else:
                queue.put_nowait(event)

    def _deliver_preview(self, job_id: str, data: str) -> None:
        frame = PreviewFrame(preview_frame(data))
        for queue in self._preview_feeds.get(job_id, ()):
            if not queue.full():  # else dropped: the next preview supersedes it anyway
                queue.put_nowait(frame)

    async def _run(self) -> None:
        failures = 0
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._keys.progress_pattern, self._keys.preview_pattern)
                await pubsub.subscribe(self._keys.revocations)
                if failures:
                    for job_id in list(self._feeds):
                        self._deliver(job_id, RESYNC)
                failures = 0
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message["type"] == "message":  # the revocations channel
                        self._revoke(message["data"])
                        continue
                    if message["type"] != "pmessage":
                        continue
                    if message["pattern"] == self._keys.preview_pattern:
                        job_id = self._keys.job_id_from_preview_channel(message["channel"])
                        if job_id in self._preview_feeds:
                            self._deliver_preview(job_id, message["data"])
                        continue
                    job_id = self._keys.job_id_from_channel(message["channel"])
                    if job_id in self._feeds:
                        event = JobEvent.model_validate_json(message["data"])
                        self._deliver(job_id, LiveEvent.of(event))
            except REDIS_TRANSIENT as exc:
                self.subscribed.clear()
                delay_s = backoff_s(failures)
                failures += 1
                log.warning("fanout.redis_unavailable", error=str(exc), retry_in_s=delay_s)
                await asyncio.sleep(delay_s)
            finally:
                with contextlib.suppress(*REDIS_TRANSIENT):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: no hints
