"""The finish stage: how a job leaves this worker once its render returns.

Its outputs are encoded (PNG, MP4) off the loop, its GPU time is charged, and the output bytes go
to blob keys while the hand-off to ``rendered`` and the ack of the job entry happen in one
transaction, only while the entry is still this worker's: a job is never acked before its output
is safely handed on, and a worker that lost its claim publishes nothing. A job that cannot be
handed on ends here too: failed, given back to the group, or left pending for a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable

from common.consumer import Forward, StreamConsumer
from common.jobs import DEADLINE_EXCEEDED, JobChange, JobStore
from common.keys import Keys
from common.logging import get_logger
from common.redis_errors import REDIS_TRANSIENT, describe, retry_transient
from common.result_cache import entry_digest
from common.schemas import JobStatus, OutputBlob, RenderedJob
from common.usage import UsageStore
from gpu_worker.encoding import Encoded, encode
from gpu_worker.families import Artifact
from gpu_worker.job import Job
from gpu_worker.metrics import JOBS
from gpu_worker.progress import (
    CLAIM_LOST,
    HANDED_OFF_MESSAGE,
    RENDER_END_PCT,
    RENDER_STALLED,
    RENDER_TOO_LONG,
    SHUTTING_DOWN,
    BatchProgress,
)
from gpu_worker.registry import ModelRegistry

log = get_logger(__name__)

# A hand-off Redis refuses (OOM, READONLY, gone) is tried again for this long, the rendered bytes
# kept in hand; then the entry is released to the group, so the batch after it is never held up.
HAND_OFF_RETRY_S = 30.0


class HandOff:
    """A worker's job endings: each rendered batch handed on (``finish``), and the other ways a
    job it holds ends (failed, given back, left for a retry)."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        usage: UsageStore,
        consumer: StreamConsumer,
        keys: Keys,
        registry: ModelRegistry,
        blob_ttl_s: int,
    ) -> None:
        self._jobs = jobs
        self._usage = usage
        self._consumer = consumer
        self._keys = keys
        self._registry = registry
        self._blob_ttl_s = blob_ttl_s

    async def finish(
        self, progress: BatchProgress, rendered: list[tuple[Job, list[Artifact]]]
    ) -> None:
        """Off the render thread, while the next batch renders: the last progress events, then
        encode, hand off and ack, the jobs of a batch together (one round trip for all). Never
        raises: a job it cannot finish goes back to the group, and the next batch's finish does
        not inherit the failure."""
        try:
            await progress.close()
        except Exception:  # progress is best effort; the outputs are what matter
            log.exception("batch.progress_failed")
        done = [(job, artifacts) for job, artifacts in rendered if job.stop_reason is None]
        await asyncio.gather(
            self._finish_rendered(done),
            *(
                self._guarded(job, functools.partial(self.interrupted, job, reason))
                for job, _ in rendered
                if (reason := job.stop_reason) is not None  # canceled, or out of time
            ),
        )

    async def _guarded(self, job: Job, step: Callable[[], Awaitable[None]]) -> None:
        """A job's end that must not raise: what fails goes back to the group."""
        with job.log:
            try:
                await step()
            except Exception as exc:
                await self._not_finished(job, exc)

    async def _not_finished(self, job: Job, exc: Exception) -> None:
        if isinstance(exc, REDIS_TRANSIENT):  # for another worker, or this one, once Redis is back
            log.warning("job.not_finished", error=describe(exc))
            await self.release(job)
        else:  # a bug: delivered again after its idle time, and counted
            log.error("job.not_finished", exc_info=exc)
            self._consumer.leave_pending(job.delivery)

    async def _finish_rendered(self, rendered: list[tuple[Job, list[Artifact]]]) -> None:
        if not rendered:
            return
        encoded = await asyncio.gather(
            *(asyncio.to_thread(_encode_all, artifacts) for _, artifacts in rendered)
        )
        ready: list[tuple[Job, list[Encoded]]] = []
        for (job, _), outputs in zip(rendered, encoded, strict=True):
            if isinstance(outputs, Exception):
                await self._guarded(job, functools.partial(self._encode_failed, job, outputs))
            else:
                ready.append((job, outputs))
        if not ready:
            return
        try:
            handed_off = await retry_transient(
                lambda: self._hand_off(ready),
                for_s=HAND_OFF_RETRY_S,
                still_wanted=lambda: any(self._consumer.holds(job.delivery) for job, _ in ready),
                event="job.hand_off_retry",
            )
        except Exception as exc:
            for job, _ in ready:
                with job.log:
                    await self._not_finished(job, exc)
            return
        finished: list[JobChange] = []
        for (job, outputs), ok in zip(ready, handed_off, strict=True):
            with job.log:
                if not ok:
                    log.warning("job.claim_lost", stage="hand_off")
                    continue
                JOBS.labels(job.spec.model, "rendered").inc()
                log.info(
                    "job.rendered",
                    duration_ms=round((time.perf_counter() - job.started_at) * 1000),
                    outputs=len(outputs),
                    batch=len(rendered),
                )
            finished.append(
                JobChange(
                    job.spec.job_id,
                    # "processing" again: the render's first event is best effort
                    status=JobStatus.PROCESSING,
                    progress=RENDER_END_PCT,
                    message=HANDED_OFF_MESSAGE,
                )
            )
        try:
            await self._jobs.emit_all(finished)
        except REDIS_TRANSIENT as exc:  # handed off already: the uploader completes the jobs
            log.warning("batch.handed_off_event_failed", error=describe(exc))
        except Exception:  # a bug, but the next batch's finish must not inherit it
            log.exception("batch.handed_off_event_failed")

    async def _encode_failed(self, job: Job, exc: Exception) -> None:
        log.error("job.encode_failed", exc_info=exc)
        await self.fail(job, f"Could not encode the output: {exc}")

    async def _hand_off(self, ready: list[tuple[Job, list[Encoded]]]) -> list[bool]:
        """Atomically for each job and only if it is still this worker's: the output bytes to
        blobs, the ``rendered`` entry and the ack; the batch in one round trip. A worker that
        lost its claim writes nothing. The renders' GPU time is charged first (once, however
        often this is retried), so it is on the record before the job can complete."""
        held = [self._consumer.holds(job.delivery) for job, _ in ready]
        mine = [item for item, holds in zip(ready, held, strict=True) if holds]
        if not mine:
            return held
        await self._usage.charge_gpu_all(
            [(job.spec.job_id, job.gpu_s, job.render) for job, _ in mine]
        )
        forwarded = iter(
            await self._consumer.forward_all(
                [self._rendered(job, outputs) for job, outputs in mine],
                blob_ttl_s=self._blob_ttl_s,
            )
        )
        return [holds and next(forwarded) for holds in held]

    def _rendered(self, job: Job, outputs: list[Encoded]) -> Forward:
        """The job's ``rendered`` entry and its output blobs."""
        spec = job.spec
        blobs = [
            OutputBlob(
                key=self._keys.blob(spec.job_id, f"output:{i}"),
                content_type=output.content_type,
                extension=output.extension,
            )
            for i, output in enumerate(outputs)
        ]
        # The result is cached under the request joined with how this worker rendered it.
        fingerprint = self._registry.fingerprints.get(spec.model)
        rendered = RenderedJob(
            job_id=spec.job_id,
            created_at=spec.created_at,
            outputs=blobs,
            input_blob=spec.input_blob,
            cache_digest=(
                entry_digest(spec.cache_request, fingerprint)
                if spec.cache_request and fingerprint
                else None
            ),
        )
        return Forward(
            job.delivery,
            self._keys.rendered,
            "rendered",
            rendered.model_dump_json(),
            blobs={blob.key: output.data for blob, output in zip(blobs, outputs, strict=True)},
        )

    # -- endings other than success -------------------------------------------------------

    async def interrupted(self, job: Job, reason: str) -> None:
        with job.log:
            if reason == CLAIM_LOST:
                log.warning("job.claim_lost", stage="render")
            elif reason == RENDER_STALLED:  # the watchdog gave it to another worker already
                log.warning("job.render_returned_after_stall")
            elif reason == DEADLINE_EXCEEDED:
                await self._charge_stopped(job)
                await self.fail(job, DEADLINE_EXCEEDED)
            elif reason == SHUTTING_DOWN:
                await self.release(job)
            elif reason == RENDER_TOO_LONG:
                await self._too_long(job)
            else:
                log.info("job.canceled")
                JOBS.labels(job.spec.model, "canceled").inc()
                await self._charge_stopped(job)
                await self._consumer.ack(job.delivery)

    async def _too_long(self, job: Job) -> None:
        """Past its route's ``max_render_s``: this attempt failed, like a stall. Another
        worker tries while attempts remain; the last one fails the job."""
        limit_s = self._registry.routes[job.spec.model].max_render_s
        error = f"The render ran past the route's limit of {limit_s:g} s"
        delivery = job.delivery
        max_deliveries = self._consumer.policy(delivery.stream).max_deliveries
        log.warning("job.render_too_long", limit_s=limit_s, attempt=delivery.attempt)
        if delivery.attempt >= max_deliveries:
            await self._charge_stopped(job)
            await self.fail(job, f"{error} ({delivery.attempt} attempts)")
            return
        await self.release(job, count_attempt=True)
        with contextlib.suppress(*REDIS_TRANSIENT):
            await self._jobs.emit(
                job.spec.job_id,
                message=f"{error}; another worker takes the job over",
                fields={"last_error": error},
            )

    async def _charge_stopped(self, job: Job) -> None:
        """A render its job's end stopped (canceled, out of time) is paid for the steps it
        rendered; the job has usually ended already, so the time goes to its usage directly.
        Best effort: the job's end must not wait on it."""
        try:
            await self._usage.charge_gpu(job.spec.job_id, job.gpu_s, job.render)
        except REDIS_TRANSIENT as exc:
            log.warning("usage.charge_failed", gpu_s=round(job.gpu_s, 3), error=describe(exc))

    async def fail(self, job: Job, error: str) -> None:
        await self._jobs.emit(
            job.spec.job_id, status=JobStatus.FAILED, message="Generation failed", error=error
        )
        log.info("job.failed", error=error)
        JOBS.labels(job.spec.model, "failed").inc()
        await self._consumer.ack(job.delivery)

    async def retry_later(self, job: Job, exc: Exception) -> None:
        """Leave the entry pending: after the stream's claim idle time a worker (perhaps this
        one) takes it again, until its deliveries run out and it goes to the dead stream."""
        delivery = job.delivery
        policy = self._consumer.policy(delivery.stream)
        log.error(
            "job.render_failed", retry=True, max_deliveries=policy.max_deliveries, exc_info=exc
        )
        if delivery.attempt >= policy.max_deliveries:
            await self.fail(job, f"Model inference error after {delivery.attempt} attempts: {exc}")
            return
        self._consumer.leave_pending(delivery)
        await self._jobs.emit(
            job.spec.job_id,
            message=f"Render failed (attempt {delivery.attempt} of {policy.max_deliveries}); "
            f"retrying in {policy.claim_idle_ms // 1000}s",
            fields={"last_error": str(exc)},
        )

    async def release(self, job: Job, *, count_attempt: bool = False) -> None:
        """Give a job this worker will not finish back to the group, for another worker now."""
        with job.log:
            try:
                await self._consumer.release(job.delivery, count_attempt=count_attempt)
                log.info("job.released", attempt_counted=count_attempt)
            except REDIS_TRANSIENT:
                self._consumer.leave_pending(job.delivery)  # taken over after the idle time


def _encode_all(artifacts: list[Artifact]) -> list[Encoded] | Exception:
    """On a thread: a job's outputs encoded, or why they could not be."""
    try:
        return [encode(artifact) for artifact in artifacts]
    except Exception as exc:
        return exc
