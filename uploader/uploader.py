"""The uploader: an ``uploaders`` group member moving rendered bytes from Redis to storage.

It acks only after storage and the job record both hold the result, so a crash at any point
re-delivers the entry; keys derive from the job id, so a repeated upload overwrites.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import structlog
from redis.asyncio import Redis

from common.consumer import (
    RECONNECT_BACKOFF_S,
    Delivery,
    StreamConsumer,
    StreamPolicy,
    sleep_unless,
)
from common.jobs import JobStore
from common.keys import UPLOADERS_GROUP, Keys
from common.logging import get_logger
from common.schemas import JobStatus, RenderedJob
from uploader.settings import UploaderSettings
from uploader.storage import LocalStorage, S3Storage, Storage, StorageError, result_key

log = get_logger(__name__)

UPLOAD_ATTEMPTS = 5
UPLOAD_BACKOFF_BASE_S = 0.5
UPLOAD_BACKOFF_CAP_S = 10.0
COMPLETED_MESSAGE = "Generation completed successfully"


async def open_storage(settings: UploaderSettings, stop: asyncio.Event) -> Storage | None:
    """The configured storage; ``None`` if told to stop while waiting for it."""
    if settings.storage == "local":
        return LocalStorage(settings.output_dir, settings.public_base_url)
    storage = await S3Storage.open(
        bucket=settings.s3_bucket_name,
        region=settings.aws_region,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=settings.aws_secret_access_key,
        public_base_url=settings.s3_public_base_url,
        presign=settings.s3_presign,
        presign_expires_s=settings.s3_presign_expires_s,
    )
    if settings.s3_create_bucket:
        # Storage may still be starting (or down): wait for it rather than crash-loop.
        for attempt in itertools.count():
            try:
                await storage.ensure_bucket()
                break
            except StorageError as exc:
                delay_s = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                log.warning("storage.unavailable", error=str(exc), retry_in_s=delay_s)
                await sleep_unless(stop, delay_s)
                if stop.is_set():
                    await storage.aclose()
                    return None
    return storage


class Uploader:
    def __init__(
        self,
        *,
        redis: Redis,
        blobs: Redis,
        keys: Keys,
        jobs: JobStore,
        storage: Storage,
        consumer_name: str,
        block_ms: int,
        claim_idle_ms: int,
    ) -> None:
        self._blobs = blobs
        self._jobs = jobs
        self._storage = storage
        self.consumer = StreamConsumer(
            redis=redis,
            streams=[keys.rendered],
            group=UPLOADERS_GROUP,
            consumer=consumer_name,
            handler=self.handle,
            dead_stream=keys.dead,
            block_ms=block_ms,
            # Storage outages are retried inside a delivery; many deliveries mean a crash loop.
            policies={keys.rendered: StreamPolicy(claim_idle_ms=claim_idle_ms, max_deliveries=10)},
            on_dead=self._on_dead,
        )

    async def run(self, stop: asyncio.Event) -> None:
        log.info("uploader.ready", storage=type(self._storage).__name__)
        async with self.consumer.claims_kept():
            await self.consumer.run(stop)

    async def handle(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            rendered = RenderedJob.model_validate_json(delivery.fields["rendered"])
            with structlog.contextvars.bound_contextvars(job_id=rendered.job_id):
                await self._handle(rendered, delivery)

    async def _handle(self, rendered: RenderedJob, delivery: Delivery) -> None:
        urls: list[str] = []
        for index, blob in enumerate(rendered.outputs):
            data = await self._blobs.get(blob.key)
            if data is None:
                await self._jobs.emit(
                    rendered.job_id,
                    status=JobStatus.FAILED,
                    message="Generation failed",
                    error="The rendered output expired before it was stored.",
                )
                await self._finish(rendered, delivery)
                return
            key = result_key(rendered.job_id, rendered.created_at, index, blob.extension)
            url = await self._put(key, data, blob.content_type)
            if url is None:
                return  # left pending: redelivered after claim_idle_ms, bytes still in Redis
            urls.append(url)
        await self._jobs.emit(
            rendered.job_id,
            status=JobStatus.COMPLETED,
            progress=100,
            message=COMPLETED_MESSAGE,
            result_urls=urls,
        )
        log.info("job.completed", urls=urls)
        await self._finish(rendered, delivery)

    async def _put(self, key: str, data: bytes, content_type: str) -> str | None:
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                return await self._storage.put(key, data, content_type)
            except StorageError as exc:
                delay_s = min(UPLOAD_BACKOFF_CAP_S, UPLOAD_BACKOFF_BASE_S * 2**attempt)
                delay_s *= random.uniform(0.5, 1.0)  # jitter: replicas do not retry in step
                log.warning(
                    "upload.retry",
                    key=key,
                    attempt=attempt,
                    error=str(exc),
                    retry_in_s=round(delay_s, 2),
                )
                await asyncio.sleep(delay_s)
        log.error("upload.gave_up", key=key, attempts=UPLOAD_ATTEMPTS)
        return None

    async def _on_dead(self, delivery: Delivery) -> None:
        rendered = RenderedJob.model_validate_json(delivery.fields["rendered"])
        await self._jobs.emit(
            rendered.job_id,
            status=JobStatus.FAILED,
            message="Generation failed",
            error=f"Could not store the result after {delivery.attempt - 1} attempts",
        )

    async def _finish(self, rendered: RenderedJob, delivery: Delivery) -> None:
        keys = [blob.key for blob in rendered.outputs]
        if rendered.input_blob:
            keys.append(rendered.input_blob)
        async with self._blobs.pipeline(transaction=True) as pipe:
            self.consumer.ack_in(pipe, delivery)
            pipe.delete(*keys)
            await pipe.execute()
