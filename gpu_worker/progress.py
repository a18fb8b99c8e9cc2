"""Carries step progress from the render thread to the event loop without ever blocking the GPU,
and carries "stop" back: a canceled job, a passed deadline or a lost claim ends the render at the
next denoising step.

The diffusers callback only records the latest step and reads the stop reason (thread-safe,
constant time); one task on the loop publishes the progress of a pipeline call's jobs together.
Steps that arrive faster than Redis takes them are coalesced: the newest wins. When publishing
finds a job already terminal (canceled), its render is told to stop. Events go out at most every
``PROGRESS_MIN_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import time

import torch

from common.consumer import sleep_unless
from common.jobs import DEADLINE_EXCEEDED, JobChange, JobStore
from common.redis_errors import REDIS_TRANSIENT
from common.schemas import JobStatus
from gpu_worker.previews import JobPreviews, LatentPreview

# At most one progress event per job this often: a client sees smooth progress, and Redis is not
# asked for an event log entry and a PUBLISH on every one of a fast GPU's steps.
PROGRESS_MIN_INTERVAL_S = 0.1
# Render progress spans this share of the job; storage and completion take the rest.
RENDER_START_PCT = 5
RENDER_END_PCT = 90
# The event after a job's output is handed to the uploader (its stage's end, for the benchmarks).
HANDED_OFF_MESSAGE = "Generation complete, uploading to storage..."

CANCELED = "canceled"
CLAIM_LOST = "claim lost"
SHUTTING_DOWN = "shutting down"
RENDER_STALLED = "render stalled"
RENDER_TOO_LONG = "render past its time limit"


class RenderInterrupted(Exception):
    """Raised inside the pipeline's step callback to abandon a render; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProgressReporter:
    """One job's events while it renders: "processing" first, then its steps. Its batch's
    ``BatchProgress`` publishes them.

    The first event is published beside the render, not before it, so the device never waits
    for it; it carries ``fields`` onto the record. A job found canceled by then stops at its
    next step.
    """

    def __init__(
        self,
        job_id: str,
        *,
        deadline_at: float | None = None,
        message: str = "Generating",
        fields: dict[str, str | int | float] | None = None,
        previews: JobPreviews | None = None,
    ) -> None:
        self.previews = previews
        self._job_id = job_id
        self._deadline_at = deadline_at
        self._message = message
        self._fields = fields
        self._latest: tuple[int, int] | None = None
        self.stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """Ask the render to end at its next step (from any thread)."""
        self.stop_reason = self.stop_reason or reason

    def step(self, done: int, total: int) -> bool:
        """Called from the render thread after every denoising step; ``False`` once the job
        should stop rendering."""
        if self._deadline_at is not None and time.time() > self._deadline_at:
            self.stop(DEADLINE_EXCEEDED)
        if self.stop_reason is not None:
            return False
        self._latest = (done, total)
        return True

    def first_event(self) -> JobChange:
        return JobChange(
            self._job_id,
            status=JobStatus.PROCESSING,
            progress=RENDER_START_PCT,
            message=self._message,
            fields=self._fields,
        )

    def latest_step(self) -> JobChange | None:
        """The event of the latest step, if not yet out and the job still renders."""
        latest, self._latest = self._latest, None
        if latest is None or self.stop_reason is not None:
            return None
        done, total = latest
        span = RENDER_END_PCT - RENDER_START_PCT
        return JobChange(
            self._job_id,
            status=JobStatus.PROCESSING,
            progress=RENDER_START_PCT + span * done // max(total, 1),
            message=f"{self._message}: step {done}/{total}",
        )

    def published(self, applied: bool) -> None:
        if not applied:  # the job is terminal already: canceled while it waited or rendered
            self.stop(CANCELED)


class BatchProgress:
    """The step callback of one pipeline call: every job in the batch hears each step. The call
    is abandoned only when every job in it wants to stop; a job that stops alone has its share
    of the output discarded, so one cancel does not cost the others their render.

    One task on the loop publishes the batch's events: "processing" for every job at ``start``,
    then the newest step at most every ``PROGRESS_MIN_INTERVAL_S``, each round one round trip
    for the whole batch (``JobStore.emit_all``). Steps that arrive faster are coalesced: the
    newest wins. ``close`` publishes the last step, if not yet out, and may be awaited after
    the next batch has begun.
    """

    def __init__(self, jobs: JobStore, reporters: list[ProgressReporter]) -> None:
        self._jobs = jobs
        self._reporters = reporters
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Begin publishing: "processing" at once, then the steps as they come."""
        self._task = asyncio.create_task(self._publish())

    async def close(self) -> None:
        """Wait until every job's last event is out (once, however often called)."""
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close())
        await self._closed

    async def _close(self) -> None:
        # The publisher is asked to finish, never cancelled: a Redis call cancelled half-way can
        # leave its connection wedged.
        assert self._task is not None
        self._closing.set()
        self._changed.set()
        await self._task
        for reporter in self._reporters:
            if reporter.previews is not None:
                await reporter.previews.close()

    def on_step(self, done: int, total: int) -> None:
        live = [reporter.step(done, total) for reporter in self._reporters]
        if not any(live):
            raise RenderInterrupted(self._reporters[0].stop_reason or CANCELED)
        self._loop.call_soon_threadsafe(self._changed.set)

    async def _publish(self) -> None:
        await self._emit([(r, r.first_event()) for r in self._reporters])
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self._emit(
                [(r, change) for r in self._reporters if (change := r.latest_step()) is not None]
            )
            if self._closing.is_set():
                return
            await sleep_unless(self._closing, PROGRESS_MIN_INTERVAL_S)

    async def _emit(self, changes: list[tuple[ProgressReporter, JobChange]]) -> None:
        if not changes:
            return
        try:
            applied = await self._jobs.emit_all([change for _, change in changes])
        except REDIS_TRANSIENT:
            return  # progress is best effort; the render goes on and the hand-off will retry
        for (reporter, _), ok in zip(changes, applied, strict=True):
            reporter.published(ok)

    @property
    def wants_previews(self) -> bool:
        return any(reporter.previews is not None for reporter in self._reporters)

    def on_latents(
        self, done: int, total: int, latents: torch.Tensor, preview: LatentPreview
    ) -> None:
        """The step's latents, for the jobs that asked for previews: job ``i`` of the batch is
        row ``i``. Only looks and copies (``JobPreviews.offer``)."""
        for index, reporter in enumerate(self._reporters):
            if reporter.previews is not None and reporter.stop_reason is None:
                reporter.previews.offer(done, total, latents, index, preview)
