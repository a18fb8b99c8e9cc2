"""Holding a request open until its jobs end (the OpenAI Images API answers with the images).

The jobs are followed through the process's one pub/sub connection (``EventFanout``), as an SSE
feed follows its job: a terminal event, a resync marker or a quiet ``resync_s`` makes the waiter
re-read the records, which are the truth. The client going away cancels every job that has not
ended, so a closed connection leaves no render behind.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request

from common.jobs import JobStore
from common.logging import get_logger
from common.schemas import JobRecord, JobStatus
from gateway.fanout import RESYNC, EventFanout, FeedQueue, PreviewFrame, Revoked

log = get_logger(__name__)

DISCONNECT_MESSAGE = "Canceled: the client disconnected before the result"


class ClientGone(Exception):
    """The client disconnected while its jobs ran; they were canceled."""


class KeyRevoked(Exception):
    """The request's key was revoked while its jobs ran; they were canceled."""


async def _until_disconnected(request: Request) -> None:
    """Returns when the client disconnects. The body has been read, so the next message the
    server hands over is ``http.disconnect``."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_unfinished(jobs: JobStore, job_ids: list[str], message: str) -> int:
    """Cancel each job not already ended (an ended one is left as it is); how many were."""
    canceled = 0
    for job_id in job_ids:
        if await jobs.emit(job_id, status=JobStatus.CANCELED, message=message) is not None:
            canceled += 1
    return canceled


async def wait_for_jobs(
    request: Request,
    jobs: JobStore,
    fanout: EventFanout,
    job_ids: list[str],
    *,
    tenant: str,
    resync_s: float,
) -> list[JobRecord | None]:
    """Every job's final record, in order (``None``: it expired unseen), once all have ended
    or one has failed or been canceled (the others are then canceled: the answer is an error
    anyway). ``ClientGone`` / ``KeyRevoked`` after canceling what was left."""
    disconnected = asyncio.create_task(_until_disconnected(request), name="client-disconnect")
    try:
        with fanout.subscribe_many(job_ids, tenant) as live:
            while True:
                records = [await jobs.get(job_id) for job_id in job_ids]
                if all(r is None or r.status.terminal for r in records):
                    return records
                if any(r is None or r.status in _FAILED for r in records):
                    await cancel_unfinished(jobs, job_ids, "Canceled: another image failed")
                    return [await jobs.get(job_id) for job_id in job_ids]
                if await _next_change(live, disconnected, resync_s):
                    continue
                await cancel_unfinished(jobs, job_ids, DISCONNECT_MESSAGE)
                raise ClientGone
    except KeyRevoked:
        await cancel_unfinished(jobs, job_ids, "Canceled: the API key was revoked")
        raise
    finally:
        disconnected.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await disconnected


_FAILED = (JobStatus.FAILED, JobStatus.CANCELED)


async def _next_change(
    live: FeedQueue,
    disconnected: asyncio.Task[None],
    resync_s: float,
) -> bool:
    """Waits until the records are worth reading again: True; False if the client left first.
    Progress events are skipped: only an end, a resync marker or a quiet ``resync_s`` count."""
    loop = asyncio.get_running_loop()
    until = loop.time() + resync_s
    while True:
        getting = asyncio.ensure_future(live.get())
        done, _ = await asyncio.wait(
            {getting, disconnected},
            timeout=max(0.0, until - loop.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if getting not in done:
            getting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getting
        if disconnected in done:
            return False
        if getting not in done:
            return True  # quiet for resync_s: look anyway
        item = getting.result()
        if isinstance(item, Revoked):
            raise KeyRevoked
        if isinstance(item, PreviewFrame):
            continue  # never sent here (no previews asked for); typed for completeness
        if item is RESYNC or item.terminal:
            return True
