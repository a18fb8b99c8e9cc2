"""A job's SSE feed: its current state, then every later event, ending after the terminal one.

The per-job event log is the source of truth; pub/sub only says "something new, now". A client
that reconnects with ``Last-Event-ID`` gets exactly the events after that id from the log. A
quiet feed sends a comment every ``ping_s`` (proxies close idle connections) and re-reads the log
every ``resync_s`` (the job may have expired, or a message gone missing). ``FeedLimit`` caps how
many feeds one process holds open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from common.jobs import JobStore
from common.logging import get_logger
from common.redis_errors import REDIS_TRANSIENT
from gateway.errors import ApiError
from gateway.fanout import RESYNC, EventFanout, FeedQueue, LiveEvent, Revoked, sse_frame

log = get_logger(__name__)

PING = b": ping\r\n\r\n"
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx and its kin: pass each frame on at once.
    "X-Accel-Buffering": "no",
}
# Feeds close as jobs finish, so a slot is likely free again soon.
FEED_RETRY_AFTER_S = 5


class _Quiet:
    """``_next`` found nothing within its timeout."""


_QUIET = _Quiet()


class EventStream(StreamingResponse):
    """``text/event-stream`` from an iterator of ready SSE frames: no per-event work here.
    ``on_close`` runs once the response is over, however it ended."""

    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(frames, headers=SSE_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class FeedLimit:
    """The feeds this process holds open, at most ``max_feeds``. A slot is taken when the route
    answers, before any frame is sent, so a burst of requests cannot overshoot the cap."""

    def __init__(self, max_feeds: int) -> None:
        self.max_feeds = max_feeds
        self.open = 0

    def stream(self, frames: AsyncIterator[bytes]) -> EventStream:
        """The response for one feed, holding a slot until it ends; a 503 when none is free."""
        if self.open >= self.max_feeds:
            raise ApiError(
                503,
                "too_many_feeds",
                f"This server already holds {self.max_feeds} open feeds. "
                "Retry after the Retry-After header's seconds.",
                headers={"Retry-After": str(FEED_RETRY_AFTER_S)},
            )
        self.open += 1
        return EventStream(frames, on_close=self._release)

    def _release(self) -> None:
        self.open -= 1


async def job_feed(
    job_id: str,
    last_event_id: int | None,
    jobs: JobStore,
    fanout: EventFanout,
    *,
    tenant: str,
    ping_s: float,
    resync_s: float,
) -> AsyncIterator[bytes]:
    """``tenant``: whose key opened the feed; the feed ends if that key is revoked."""
    try:
        async for frame in _frames(job_id, last_event_id, jobs, fanout, tenant, ping_s, resync_s):
            yield frame
    except REDIS_TRANSIENT as exc:
        # The client reconnects with Last-Event-ID and misses nothing.
        log.warning("feed.redis_unavailable", job_id=job_id, error=str(exc))


async def _frames(
    job_id: str,
    last_event_id: int | None,
    jobs: JobStore,
    fanout: EventFanout,
    tenant: str,
    ping_s: float,
    resync_s: float,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    # Subscribe before reading Redis so nothing published in between is missed.
    with fanout.subscribe(job_id, tenant) as live:
        last_seq = 0 if last_event_id is None else last_event_id
        if last_event_id is None:
            record = await jobs.get(job_id)
            if record is None:
                return
            snapshot = record.snapshot()
            yield sse_frame(snapshot)
            if snapshot.terminal:
                return
            last_seq = snapshot.seq

        catch_up = True
        next_ping = next_resync = 0.0
        while True:
            now = loop.time()
            if catch_up:
                for event in await jobs.events_after(job_id, last_seq):
                    yield sse_frame(event)
                    last_seq = event.seq
                    if event.terminal:
                        return
                catch_up = False
                next_ping, next_resync = now + ping_s, now + resync_s
            item = await _next(live, min(next_ping, next_resync) - now)
            if isinstance(item, _Quiet):
                if loop.time() >= next_resync:
                    if await jobs.get(job_id) is None:
                        return  # expired while we watched
                    catch_up = True
                else:
                    yield PING
                    next_ping = loop.time() + ping_s
                continue
            if isinstance(item, Revoked):
                return
            if item is RESYNC or item.seq > last_seq + 1:
                catch_up = True  # a gap: the log has whatever pub/sub did not bring
            elif item.seq == last_seq + 1:
                yield item.frame
                last_seq = item.seq
                if item.terminal:
                    return
                next_ping = loop.time() + ping_s


async def _next(live: FeedQueue, timeout_s: float) -> LiveEvent | Revoked | None | _Quiet:
    """The next queued item, or ``_QUIET`` after ``timeout_s``; no task made per event."""
    try:
        return live.get_nowait()
    except asyncio.QueueEmpty:
        pass
    try:
        async with asyncio.timeout(max(timeout_s, 0)):
            return await live.get()
    except TimeoutError:
        return _QUIET
