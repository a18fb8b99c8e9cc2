"""A batch's SSE feed: snapshots of the whole batch, each time one of its items changes.

A batch has no event log of its own. Its state is its items' records, and its event id is the
sum of their event sequence numbers, which grows with every change to any item and never goes
back (a job's ``seq`` only grows, and a batch's items expire together). So the feed needs no new
writes: it hears its items' live events through the process's one pub/sub connection
(``EventFanout.subscribe_many``), re-reads the items and sends a snapshot when the id has grown;
a reconnect with ``Last-Event-ID`` gets the current snapshot if anything changed since, or a 204
once the batch has ended. The snapshots in between are superseded by the next one, which is what
a client wants from a batch of a hundred renders. The feed ends after the snapshot in which every
item has ended.

A burst of item events (every denoising step of every item of a micro-batch) makes one read and
one snapshot per ``MIN_SNAPSHOT_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from pydantic import BaseModel

from common.batches import BatchRecord, BatchState, BatchStore
from common.logging import get_logger
from common.redis_errors import REDIS_TRANSIENT
from gateway.fanout import EventFanout, FeedQueue, Revoked
from gateway.feed import PING, Quiet, next_or_quiet

log = get_logger(__name__)

MIN_SNAPSHOT_INTERVAL_S = 0.2


def batch_frame(seq: int, body: BaseModel) -> bytes:
    return f"id: {seq}\r\ndata: {body.model_dump_json()}\r\n\r\n".encode()


async def batch_feed(
    batch: BatchRecord,
    last_event_id: int | None,
    store: BatchStore,
    fanout: EventFanout,
    view: Callable[[BatchState], BaseModel],
    *,
    tenant: str,
    ping_s: float,
    resync_s: float,
) -> AsyncIterator[bytes]:
    """``view``: the batch as the feed's seed API shows it; ``tenant``: whose key opened the feed
    (it ends if that key is revoked)."""
    try:
        async for frame in _frames(
            batch, last_event_id, store, fanout, view, tenant, ping_s, resync_s
        ):
            yield frame
    except REDIS_TRANSIENT as exc:
        # The client reconnects with Last-Event-ID and gets the state it missed.
        log.warning("batch_feed.redis_unavailable", batch_id=batch.batch_id, error=str(exc))


async def _frames(
    batch: BatchRecord,
    last_event_id: int | None,
    store: BatchStore,
    fanout: EventFanout,
    view: Callable[[BatchState], BaseModel],
    tenant: str,
    ping_s: float,
    resync_s: float,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    last_seq = -1 if last_event_id is None else last_event_id
    # Subscribe before reading Redis so no change in between goes unheard.
    with fanout.subscribe_many(batch.job_ids, tenant) as live:
        while True:
            read_at = loop.time()
            state = await store.state(batch)
            if state is None:
                return  # expired while we watched
            if state.seq > last_seq:
                yield batch_frame(state.seq, view(state))
                last_seq = state.seq
            if state.status.terminal:
                return
            next_ping, next_resync = read_at + ping_s, read_at + resync_s
            while True:
                item = await next_or_quiet(live, min(next_ping, next_resync) - loop.time())
                if isinstance(item, Revoked):
                    return
                if not isinstance(item, Quiet) or loop.time() >= next_resync:
                    break  # an item changed (or a resync is due, or pub/sub lost some): re-read
                yield PING
                next_ping = loop.time() + ping_s
            rest_s = read_at + MIN_SNAPSHOT_INTERVAL_S - loop.time()
            if rest_s > 0:
                await asyncio.sleep(rest_s)
            if _drain(live):
                return


def _drain(live: FeedQueue) -> bool:
    """Empty the queue: one read answers every event in it. ``True`` if the key was revoked."""
    while True:
        try:
            item = live.get_nowait()
        except asyncio.QueueEmpty:
            return False
        if isinstance(item, Revoked):
            return True
