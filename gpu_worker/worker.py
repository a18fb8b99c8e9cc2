"""The GPU worker: a ``workers`` group member that renders jobs and hands the bytes to the uploader.

Output bytes go to a blob key, and the hand-off to ``rendered`` and the ack of the job entry happen
in one transaction: a job is never acked before its output is safely handed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from redis.asyncio import Redis

from common.consumer import Delivery, StreamConsumer, StreamPolicy, sleep_unless
from common.jobs import JobStore
from common.keys import WORKERS_GROUP, Keys
from common.logging import get_logger
from common.redis import REDIS_UNAVAILABLE
from common.schemas import JobSpec, JobStatus, OutputBlob, RenderedJob, WorkerHeartbeat
from gpu_worker.encoding import Encoded, decode_image, encode
from gpu_worker.families import family
from gpu_worker.progress import (
    CLAIM_LOST,
    DEADLINE_EXCEEDED,
    RENDER_END_PCT,
    RENDER_START_PCT,
    ProgressReporter,
    RenderInterrupted,
)
from gpu_worker.registry import ModelRegistry

log = get_logger(__name__)

# Failures a retry cannot fix: bad input that slipped through, weights that do not load.
PERMANENT_ERRORS = (ValueError, TypeError, OSError)
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15


class Worker:
    def __init__(
        self,
        *,
        redis: Redis,
        blobs: Redis,
        keys: Keys,
        jobs: JobStore,
        registry: ModelRegistry,
        consumer_name: str,
        blob_ttl_s: int,
        block_ms: int,
        claim_idle_ms: int,
    ) -> None:
        self._redis = redis
        self._blobs = blobs
        self._keys = keys
        self._jobs = jobs
        self._registry = registry
        self._blob_ttl_s = blob_ttl_s
        self.consumer = StreamConsumer(
            redis=redis,
            streams=[keys.job_stream(name) for name in registry.route_names],
            group=WORKERS_GROUP,
            consumer=consumer_name,
            handler=self.handle,
            dead_stream=keys.dead,
            block_ms=block_ms,
            policies={
                keys.job_stream(route.name): StreamPolicy(
                    claim_idle_ms=route.claim_idle_ms or claim_idle_ms,
                    max_deliveries=route.max_attempts,
                )
                for route in registry.routes.values()
            },
            on_dead=self._on_dead,
        )

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "worker.ready", routes=self._registry.route_names, device=str(self._registry.device)
        )
        heartbeat = asyncio.create_task(self._heartbeat(stop), name="worker-heartbeat")
        try:
            await self.consumer.run(stop)
        finally:
            stop.set()
            await heartbeat

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Say every few seconds which routes are resident here (``GET /api/models``)."""
        key = self._keys.worker(self.consumer.consumer)
        while not stop.is_set():
            beat = WorkerHeartbeat(
                consumer=self.consumer.consumer,
                device=str(self._registry.device),
                routes=self._registry.route_names,
                loaded=self._registry.loaded_route_names,
                ts=time.time(),
            )
            # On an outage the consumer loop reports it, and the key expires on its own.
            with contextlib.suppress(*REDIS_UNAVAILABLE):
                await self._redis.set(key, beat.model_dump_json(), ex=HEARTBEAT_TTL_S)
            await sleep_unless(stop, HEARTBEAT_INTERVAL_S)
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            await self._redis.delete(key)

    async def handle(self, delivery: Delivery) -> None:
        spec = JobSpec.model_validate_json(delivery.fields["job"])
        with structlog.contextvars.bound_contextvars(job_id=spec.job_id, model=spec.model):
            await self._handle(spec, delivery)

    async def _handle(self, spec: JobSpec, delivery: Delivery) -> None:
        record = await self._jobs.get(spec.job_id)
        if record is None or record.status.terminal:
            log.info("job.skipped", reason="expired" if record is None else record.status.value)
            await self.consumer.ack(delivery)
            return
        if spec.deadline_at is not None and time.time() > spec.deadline_at:
            await self._fail(spec, delivery, DEADLINE_EXCEEDED)
            return
        started = await self._jobs.emit(
            spec.job_id,
            status=JobStatus.PROCESSING,
            progress=RENDER_START_PCT,
            # A first job on a route waits for its weights; say so on the job's feed.
            message="Generating" if self._registry.is_loaded(spec.model) else "Loading model",
            fields={"attempts": delivery.attempt},
        )
        if started is None:
            await self.consumer.ack(delivery)
            return
        log.info("job.started", task=spec.task.value)
        began = time.perf_counter()
        reporter = ProgressReporter(self._jobs, spec.job_id, deadline_at=spec.deadline_at)
        rendered = asyncio.Event()
        keeper = asyncio.create_task(self._keep_claim(delivery, reporter, rendered))
        try:
            outputs = await self._render(spec, reporter)
        except RenderInterrupted as exc:
            await self._interrupted(spec, delivery, exc.reason)
            return
        except PERMANENT_ERRORS as exc:  # retrying cannot help: fail now
            log.exception("job.render_failed", retry=False)
            await self._fail(spec, delivery, f"Model inference error: {exc}")
            return
        except Exception as exc:  # an inference error must not kill the worker
            await self._retry_later(spec, delivery, exc)
            return
        finally:
            rendered.set()  # the keeper stops between calls: none is cancelled half-way
            await keeper
        render_ms = round((time.perf_counter() - began) * 1000)
        if not await self._hand_off(spec, delivery, outputs):
            log.warning("job.claim_lost", stage="hand_off")
            return
        await self._jobs.emit(
            spec.job_id,
            progress=RENDER_END_PCT,
            message="Generation complete, uploading to storage...",
        )
        log.info("job.rendered", duration_ms=render_ms, outputs=len(outputs))

    async def _keep_claim(
        self, delivery: Delivery, reporter: ProgressReporter, done: asyncio.Event
    ) -> None:
        """While rendering, keep the entry's idle time low so no one takes it over; if someone
        did anyway (this worker stalled), stop rendering: the result is theirs to publish."""
        interval_s = self.consumer.policy(delivery.stream).claim_idle_ms / 3000
        while True:
            await sleep_unless(done, interval_s)
            if done.is_set():
                return
            try:
                if not await self.consumer.keep_claim(delivery):
                    reporter.stop(CLAIM_LOST)
                    return
            except REDIS_UNAVAILABLE:
                continue

    async def _interrupted(self, spec: JobSpec, delivery: Delivery, reason: str) -> None:
        if reason == CLAIM_LOST:
            log.warning("job.claim_lost", stage="render")
        elif reason == DEADLINE_EXCEEDED:
            await self._fail(spec, delivery, DEADLINE_EXCEEDED)
        else:
            log.info("job.canceled")
            await self.consumer.ack(delivery)

    async def _fail(self, spec: JobSpec, delivery: Delivery, error: str) -> None:
        await self._jobs.emit(
            spec.job_id, status=JobStatus.FAILED, message="Generation failed", error=error
        )
        log.info("job.failed", error=error)
        await self.consumer.ack(delivery)

    async def _retry_later(self, spec: JobSpec, delivery: Delivery, exc: Exception) -> None:
        """Leave the entry pending: after the stream's claim idle time a worker (perhaps this
        one) takes it again, until its deliveries run out and it goes to the dead stream."""
        policy = self.consumer.policy(delivery.stream)
        log.exception("job.render_failed", retry=True, max_deliveries=policy.max_deliveries)
        if delivery.attempt >= policy.max_deliveries:
            await self._fail(
                spec, delivery, f"Model inference error after {delivery.attempt} attempts: {exc}"
            )
            return
        await self._jobs.emit(
            spec.job_id,
            message=f"Render failed (attempt {delivery.attempt} of {policy.max_deliveries}); "
            f"retrying in {policy.claim_idle_ms // 1000}s",
            fields={"last_error": str(exc)},
        )

    async def _on_dead(self, delivery: Delivery) -> None:
        """An entry that ran out of deliveries: its workers kept dying or stalling."""
        spec = JobSpec.model_validate_json(delivery.fields["job"])
        await self._jobs.emit(
            spec.job_id,
            status=JobStatus.FAILED,
            message="Generation failed",
            error=f"Gave up after {delivery.attempt - 1} attempts: the worker stopped responding",
        )

    async def _render(self, spec: JobSpec, progress: ProgressReporter) -> list[Encoded]:
        pipelines = await asyncio.to_thread(self._registry.pipelines, spec.model)
        render = family(self._registry.routes[spec.model].family).render
        image = None
        if spec.input_blob is not None:
            data = await self._blobs.get(spec.input_blob)
            if data is None:
                raise ValueError("the input image expired before the job started")
            image = await asyncio.to_thread(decode_image, data)
        async with progress:
            artifacts = await asyncio.to_thread(render, pipelines, spec, image, progress.on_step)
        return [await asyncio.to_thread(encode, artifact) for artifact in artifacts]

    async def _hand_off(self, spec: JobSpec, delivery: Delivery, outputs: list[Encoded]) -> bool:
        """Output bytes to blobs, then, atomically and only if the job is still this worker's,
        the ``rendered`` entry and the ack. Blob keys derive from the job id, so a worker that
        lost its claim at most rewrites the same bytes."""
        blobs = [
            OutputBlob(
                key=self._keys.blob(spec.job_id, f"output:{i}"),
                content_type=output.content_type,
                extension=output.extension,
            )
            for i, output in enumerate(outputs)
        ]
        rendered = RenderedJob(
            job_id=spec.job_id,
            created_at=spec.created_at,
            outputs=blobs,
            input_blob=spec.input_blob,
        )
        async with self._blobs.pipeline(transaction=True) as pipe:
            for blob, output in zip(blobs, outputs, strict=True):
                pipe.set(blob.key, output.data, ex=self._blob_ttl_s)
            await pipe.execute()
        return await self.consumer.forward(
            delivery, self._keys.rendered, "rendered", rendered.model_dump_json()
        )
