"""Carries step progress from the render thread to the event loop without ever blocking the GPU.

The diffusers callback only records the latest step (thread-safe, constant time); a task on the
loop publishes it. Steps that arrive faster than Redis takes them are coalesced: the newest wins.
"""

from __future__ import annotations

import asyncio
import contextlib

from common.jobs import JobStore
from common.schemas import JobStatus

# Render progress spans this share of the job; storage and completion take the rest.
RENDER_START_PCT = 5
RENDER_END_PCT = 90


class ProgressReporter:
    def __init__(self, jobs: JobStore, job_id: str, message: str = "Generating") -> None:
        self._jobs = jobs
        self._job_id = job_id
        self._message = message
        self._loop = asyncio.get_running_loop()
        self._latest: tuple[int, int] | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def on_step(self, done: int, total: int) -> None:
        """Called from the render thread."""
        self._latest = (done, total)
        self._loop.call_soon_threadsafe(self._changed.set)

    async def __aenter__(self) -> ProgressReporter:
        self._task = asyncio.create_task(self._publish())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._flush()

    async def _publish(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self._flush()

    async def _flush(self) -> None:
        latest, self._latest = self._latest, None
        if latest is None:
            return
        done, total = latest
        span = RENDER_END_PCT - RENDER_START_PCT
        progress = RENDER_START_PCT + span * done // max(total, 1)
        await self._jobs.emit(
            self._job_id,
            status=JobStatus.PROCESSING,
            progress=progress,
            message=f"{self._message}: step {done}/{total}",
        )
