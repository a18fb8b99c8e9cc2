"""A job's SSE feed: its current state, then every later event, ending after the terminal one.

The per-job event log is the source of truth; pub/sub only says "something new, now". A client
that reconnects with ``Last-Event-ID`` gets exactly the events after that id from the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sse_starlette import ServerSentEvent

from common.jobs import JobStore
from common.schemas import JobEvent
from gateway.fanout import RESYNC, EventFanout


def to_sse(event: JobEvent) -> ServerSentEvent:
    return ServerSentEvent(data=event.model_dump_json(), id=str(event.seq))


async def job_feed(
    job_id: str, last_event_id: int | None, jobs: JobStore, fanout: EventFanout, *, resync_s: float
) -> AsyncIterator[ServerSentEvent]:
    # Subscribe before reading Redis so nothing published in between is missed.
    with fanout.subscribe(job_id) as live:
        last_seq = 0 if last_event_id is None else last_event_id
        if last_event_id is None:
            record = await jobs.get(job_id)
            if record is None:
                return
            snapshot = record.snapshot()
            yield to_sse(snapshot)
            if snapshot.terminal:
                return
            last_seq = snapshot.seq

        catch_up = True
        while True:
            if catch_up:
                for event in await jobs.events_after(job_id, last_seq):
                    yield to_sse(event)
                    last_seq = event.seq
                    if event.terminal:
                        return
                catch_up = False
            try:
                live_event = await asyncio.wait_for(live.get(), timeout=resync_s)
            except TimeoutError:
                live_event = RESYNC
            if live_event is RESYNC or live_event.seq > last_seq + 1:
                # A gap or a quiet spell: the log has whatever pub/sub did not bring.
                if await jobs.get(job_id) is None:
                    return  # expired while we watched
                catch_up = True
            elif live_event.seq == last_seq + 1:
                yield to_sse(live_event)
                last_seq = live_event.seq
                if live_event.terminal:
                    return
