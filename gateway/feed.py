"""A job's SSE feed: its current state, then every later event, ending after the terminal one.

The per-job event log is the source of truth; pub/sub only says "something new, now". A client
that reconnects with ``Last-Event-ID`` gets exactly the events after that id from the log. A
quiet feed sends a comment every ``ping_s`` (proxies close idle connections) and re-reads the log
every ``resync_s`` (the job may have expired, or a message gone missing). While the job waits
in its queue, ``event: queue`` frames tell its place and ETA: unlogged, with no ``id:``, never
replayed, and invisible to an EventSource's ``onmessage``. While it renders, a job that asked
for previews gets ``event: preview`` frames the same way: the latest one when the feed opens or
resumes, then each live one (``common.previews``). ``FeedLimit`` caps how many feeds one process
holds open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from common.jobs import JobStore
from common.logging import get_logger
from common.previews import PreviewStore
from common.queue_position import QueuePosition
from common.redis_errors import REDIS_TRANSIENT
from common.schemas import JobRecord, JobStatus
from gateway.errors import ApiError
from gateway.fanout import (
    RESYNC,
    EventFanout,
    FeedQueue,
    LiveEvent,
    PreviewFrame,
    Revoked,
    preview_frame,
    sse_frame,
)

log = get_logger(__name__)

PING = b": ping\r\n\r\n"
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx and its kin: pass each frame on at once.
    "X-Accel-Buffering": "no",
}
# Feeds close as jobs finish, so a slot is likely free again soon.
FEED_RETRY_AFTER_S = 5
# A waiting job's place is looked up at most this often per feed (only changes are sent), and
# less often far back in the queue, where a second here or there tells nobody anything.
QUEUE_FRAME_INTERVAL_S = 1.0
FAR_BACK_INTERVAL_S = 5.0
FAR_BACK = 100

QueueProbe = Callable[[], Awaitable[QueuePosition | None]]


class Quiet:
    """``next_or_quiet`` found nothing within its timeout."""


QUIET = Quiet()


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
    queue: QueueProbe | None = None,
    previews: PreviewStore | None = None,
    record: JobRecord | None = None,
) -> AsyncIterator[bytes]:
    """``tenant``: whose key opened the feed; the feed ends if that key is revoked. ``queue``:
    the job's place while it waits, for ``event: queue`` frames; ``previews``: where the job's
    latest preview is, for ``event: preview`` frames; ``record``: the job as the caller just
    read it, for the first frame of a feed that does not resume (else it is read here)."""
    try:
        async for frame in _frames(
            job_id, last_event_id, jobs, fanout, tenant, ping_s, resync_s, queue, previews, record
        ):
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
    queue: QueueProbe | None,
    previews: PreviewStore | None,
    record: JobRecord | None,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    status: JobStatus | None = None  # as far as this feed has told it
    # Subscribe before reading the log so nothing published in between is missed. A record
    # read before subscribing is as good: the catch-up below reads the log after it.
    with fanout.subscribe(job_id, tenant, previews=previews is not None) as live:
        last_seq = 0 if last_event_id is None else last_event_id
        if last_event_id is None:
            if record is None:
                record = await jobs.get(job_id)
            if record is None:
                return
            snapshot = record.snapshot()
            yield sse_frame(snapshot)
            if snapshot.terminal:
                return
            last_seq, status = snapshot.seq, snapshot.status
            if snapshot.status is not JobStatus.PENDING:
                queue = None

        catch_up = True
        next_ping = next_resync = next_queue = 0.0
        last_queue_frame = b""
        while True:
            now = loop.time()
            if catch_up:
                for event in await jobs.events_after(job_id, last_seq):
                    yield sse_frame(event)
                    last_seq, status = event.seq, event.status
                    if event.terminal:
                        return
                    if event.status is not JobStatus.PENDING:
                        queue = None  # it started: no place to tell any more
                catch_up = False
                next_ping, next_resync = now + ping_s, now + resync_s
                if previews is not None:
                    # Opened or resumed mid-render: the latest preview at once, and only on
                    # this first catch-up; later ones come live. (The worker deletes it when
                    # the render ends, so a finished render shows none.)
                    latest = None
                    if status is not JobStatus.PENDING:
                        latest = await previews.latest(job_id)
                    if latest is not None:
                        yield preview_frame(latest)
                    previews = None
            wake = min(next_ping, next_resync, next_queue if queue is not None else next_ping)
            item = await next_or_quiet(live, wake - now)
            if isinstance(item, Quiet):
                now = loop.time()
                if now >= next_resync:
                    if await jobs.get(job_id) is None:
                        return  # expired while we watched
                    catch_up = True
                elif queue is not None and now >= next_queue:
                    queued = await queue()
                    if queued is None:
                        queue = None  # a worker has it, or it ended: the events say which
                        continue
                    frame = queue_frame(queued)
                    if frame != last_queue_frame:
                        yield frame
                        last_queue_frame = frame
                        next_ping = loop.time() + ping_s
                    far = queued.ahead >= FAR_BACK
                    next_queue = now + (FAR_BACK_INTERVAL_S if far else QUEUE_FRAME_INTERVAL_S)
                else:
                    yield PING
                    next_ping = loop.time() + ping_s
                continue
            if isinstance(item, Revoked):
                return
            if isinstance(item, PreviewFrame):
                yield item.frame
                next_ping = loop.time() + ping_s
                continue
            if item is RESYNC or item.seq > last_seq + 1:
                catch_up = True  # a gap: the log has whatever pub/sub did not bring
            elif item.seq == last_seq + 1:
                yield item.frame
                last_seq = item.seq
                if item.terminal:
                    return
                if item.status is not JobStatus.PENDING:
                    queue = None
                next_ping = loop.time() + ping_s


def queue_frame(queued: QueuePosition) -> bytes:
    """A named, id-less frame: a client that listens for ``queue`` sees it; ``onmessage``
    and a resume by ``Last-Event-ID`` never do."""
    data = json.dumps({"queue_position": queued.ahead, "eta_s": queued.eta_s})
    return f"event: queue\r\ndata: {data}\r\n\r\n".encode()


async def next_or_quiet(
    live: FeedQueue, timeout_s: float
) -> LiveEvent | Revoked | PreviewFrame | None | Quiet:
    """The next queued item, or ``QUIET`` after ``timeout_s``; no task made per event."""
    try:
        return live.get_nowait()
    except asyncio.QueueEmpty:
        pass
    try:
        async with asyncio.timeout(max(timeout_s, 0)):
            return await live.get()
    except TimeoutError:
        return QUIET
