"""The uploader: an ``uploaders`` group member moving rendered bytes from Redis to storage.

Each delivery uploads in a task of its own, up to ``upload_concurrency`` at once, so one slow PUT
does not hold up the jobs behind it. It acks only after storage and the job record both hold the
result, so a crash at any point re-delivers the entry; keys derive from the job id, so a repeated
upload overwrites. A permanent storage error (AccessDenied, NoSuchBucket…) fails the job at once;
a transient one is retried with backoff. A job that ended meanwhile (canceled, or failed by its
deadline) is not stored, or its objects are removed again.

A completed job that asked for it is recorded in the result cache (``common.result_cache``). A
cache hit comes through here too, with the stored keys of the earlier result and no bytes: the
uploader signs fresh URLs for them (it alone holds the storage credentials) and completes it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis

from common.consumer import Delivery, StreamConsumer, StreamPolicy, sleep_unless
from common.jobs import JobStore
from common.keys import UPLOADERS_GROUP, Keys
from common.logging import get_logger
from common.redis_errors import REDIS_TRANSIENT, backoff_s, describe, retry_transient
from common.result_cache import SERVED_FROM_CACHE, CachedResult, ResultCache
from common.schemas import JobStatus, RenderedJob
from uploader.settings import UploaderSettings
from uploader.storage import LocalStorage, S3Storage, Storage, StorageError, result_key
from uploader.storage_health import StorageHealth

log = get_logger(__name__)

UPLOAD_ATTEMPTS = 5
UPLOAD_BACKOFF_BASE_S = 0.5
UPLOAD_BACKOFF_CAP_S = 10.0
COMPLETED_MESSAGE = "Generation completed successfully"
# An upload Redis refuses (OOM, READONLY, gone) is tried again for this long before its entry
# waits for the claim idle time.
REDIS_RETRY_S = 30.0


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
                delay_s = backoff_s(attempt)
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
        upload_concurrency: int = 8,
        drain_grace_s: float = 60.0,
        result_cache_ttl_s: int | None = None,
        storage_health: StorageHealth | None = None,
    ) -> None:
        self._blobs = blobs
        self._keys = keys
        self._jobs = jobs
        self._storage = storage
        # Whether storage takes writes: the uploader's readiness.
        self.storage_health = storage_health or StorageHealth(storage, bucket=None)
        self._cache = ResultCache(redis, keys)
        # How long a cached result is served: no longer than its objects live (None: as long).
        self._cache_ttl_s = result_cache_ttl_s
        self._drain_grace_s = drain_grace_s
        self._slots = asyncio.Semaphore(upload_concurrency)
        self._stop = asyncio.Event()
        self._uploads: dict[asyncio.Task[None], Delivery] = {}
        self.consumer = StreamConsumer(
            redis=redis,
            streams=[keys.rendered],
            group=UPLOADERS_GROUP,
            consumer=consumer_name,
            handler=self.handle,
            dead_stream=keys.dead,
            dead_counts=keys.dead_counts,
            block_ms=block_ms,
            # Storage outages are retried inside a delivery; many deliveries mean a crash loop.
            policies={keys.rendered: StreamPolicy(claim_idle_ms=claim_idle_ms, max_deliveries=10)},
            on_dead=self._on_dead,
        )

    async def run(self, stop: asyncio.Event) -> None:
        log.info("uploader.ready", storage=type(self._storage).__name__)
        self._stop = stop
        probe = asyncio.create_task(self.storage_health.probe_while_refused(stop), name="probe")
        async with self.consumer.claims_kept():
            try:
                await self.consumer.run(stop)
            finally:
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)
                await self._drain()

    async def handle(self, deliveries: list[Delivery]) -> None:
        """The consumer's handler: start each delivery's upload in a task of its own, and return
        once another upload could start, so the next entry is read only when it can begin."""
        for delivery in deliveries:
            try:
                rendered = RenderedJob.model_validate_json(delivery.fields["rendered"])
            except (KeyError, ValidationError):
                log.exception("job.unreadable", fields=delivery.fields)
                await self.consumer.bury(delivery)
                continue
            await self._slots.acquire()
            self.consumer.hold(delivery)
            task = asyncio.create_task(self._upload(rendered, delivery), name="upload")
            self._uploads[task] = delivery
            task.add_done_callback(self._uploads.pop)
        await self._slot_free_or_stopping()

    async def _slot_free_or_stopping(self) -> None:
        """Wait until another upload could start, so the next entry is read only then; or until
        told to stop, so uploads that hang do not hold up the drain."""
        slot = asyncio.ensure_future(self._slots.acquire())
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({slot, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if slot.done():
            self._slots.release()  # only looked: the next delivery takes it
        else:
            slot.cancel()

    async def _upload(self, rendered: RenderedJob, delivery: Delivery) -> None:
        with structlog.contextvars.bound_contextvars(job_id=rendered.job_id):
            try:
                # Redis refusing for a moment (OOM, a failover) must not cost the upload: the
                # steps repeat safely (keys derive from the job id).
                await retry_transient(
                    lambda: self._handle(rendered, delivery),
                    for_s=REDIS_RETRY_S,
                    still_wanted=lambda: self.consumer.holds(delivery),
                    event="upload.redis_retry",
                )
            except REDIS_TRANSIENT as exc:
                # Left pending: after claim_idle_ms it is delivered again.
                log.warning("upload.redis_unavailable", error=describe(exc))
                self.consumer.leave_pending(delivery)
            except Exception:
                # A bug: say so loudly. The entry is retried until it goes to the dead stream and
                # the job fails; it must not stay held (its claim kept fresh) forever.
                log.exception("upload.crashed")
                self.consumer.leave_pending(delivery)
            finally:
                self._slots.release()

    async def _handle(self, rendered: RenderedJob, delivery: Delivery) -> None:
        if rendered.cached_keys:
            await self._serve_cached(rendered, delivery)
            return
        keys = [
            result_key(rendered.job_id, rendered.created_at, index, blob.extension)
            for index, blob in enumerate(rendered.outputs)
        ]
        # The job's status and its bytes in one round trip.
        async with self._blobs.pipeline(transaction=False) as pipe:
            pipe.hget(self._keys.job(rendered.job_id), "status")
            for blob in rendered.outputs:
                pipe.get(blob.key)
            raw_status, *blobs = await pipe.execute()
        status = None if raw_status is None else JobStatus(raw_status.decode())
        if status is None or status.terminal:
            # Canceled or failed since the hand-off: nobody will fetch the result. An earlier
            # try that crashed before its ack may have stored some of it.
            log.info("job.skipped", reason="expired" if status is None else status.value)
            await self._discard(rendered.job_id, keys)
            await self._finish(rendered, delivery)
            return
        began = time.perf_counter()
        urls: list[str] = []
        output_bytes = 0
        for key, blob, data in zip(keys, rendered.outputs, blobs, strict=True):
            if data is None:
                await self._output_missing(rendered, delivery, stored=keys[: len(urls)])
                return
            try:
                url = await self._put(key, data, blob.content_type)
            except StorageError as exc:  # permanent: retrying cannot help
                error = f"Could not store the result: {exc.summary}"
                await self._fail(rendered, delivery, error, stored=keys[: len(urls)])
                return
            if url is None:
                self.consumer.leave_pending(delivery)  # redelivered later; bytes still in Redis
                return
            urls.append(url)
            output_bytes += len(data)
        # Storage holds the result: the record says so, and the entry is acked and its bytes
        # removed in the same atomic step. A crash before it redelivers the entry (the upload
        # overwrites); after it, nothing is left to redeliver.
        completed = await self.consumer.ack_by(
            delivery,
            lambda: self._jobs.complete(
                rendered.job_id,
                message=COMPLETED_MESSAGE,
                result_urls=urls,
                # On the record with "completed", so the tenant's usage counts them.
                fields={"output_bytes": output_bytes},
                ack=(delivery.stream, UPLOADERS_GROUP, delivery.msg_id),
                blobs=self._blob_keys(rendered),
            ),
        )
        if not completed:  # canceled, or out of time, while uploading
            await self._discard(rendered.job_id, keys)
            await self._finish(rendered, delivery)
            return
        # Keys, not URLs: a presigned URL is a credential and stays out of the logs.
        duration_ms = round((time.perf_counter() - began) * 1000)
        log.info("job.completed", keys=keys, output_bytes=output_bytes, duration_ms=duration_ms)
        if rendered.cache_digest is not None:
            result = CachedResult(job_id=rendered.job_id, keys=keys)
            await self._remember(rendered.cache_digest, result)

    async def _remember(self, digest: str, result: CachedResult) -> None:
        """Best effort: a result not cached is rendered again next time, nothing worse."""
        try:
            await self._cache.record(digest, result, ttl_s=self._cache_ttl_s)
        except REDIS_TRANSIENT as exc:
            log.warning("cache.record_failed", error=describe(exc))

    async def _serve_cached(self, rendered: RenderedJob, delivery: Delivery) -> None:
        """A cache hit: complete the job with fresh URLs of the earlier job's objects. They are
        that job's, so nothing is ever deleted here, whatever became of this one."""
        record = await self._jobs.get(rendered.job_id)
        if record is None or record.status.terminal:
            log.info("job.skipped", reason="expired" if record is None else record.status.value)
            await self._finish(rendered, delivery)
            return
        began = time.perf_counter()
        try:
            urls = [await self._storage.url(key) for key in rendered.cached_keys]
        except StorageError as exc:
            await self._jobs.emit(
                rendered.job_id,
                status=JobStatus.FAILED,
                message="Generation failed",
                error=f"Could not sign the cached result's URL: {exc.summary}",
            )
            log.error("job.failed", error=str(exc), cached=True)
        else:
            completed = await self._jobs.emit(
                rendered.job_id,
                status=JobStatus.COMPLETED,
                progress=100,
                message=SERVED_FROM_CACHE,
                result_urls=urls,
            )
            if completed is not None:
                duration_ms = round((time.perf_counter() - began) * 1000)
                log.info(
                    "job.completed", keys=rendered.cached_keys, cached=True, duration_ms=duration_ms
                )
        await self._finish(rendered, delivery)

    async def _put(self, key: str, data: bytes, content_type: str) -> str | None:
        """The URL of the stored object; ``None`` if transient errors outlasted every attempt.
        A permanent error is raised at once."""
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                url = await self._storage.put(key, data, content_type)
            except StorageError as exc:
                if not exc.retryable:
                    log.error("upload.failed", key=key, error=str(exc))
                    self.storage_health.refusing(exc)
                    raise
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
            else:
                self.storage_health.accepting()
                return url
        log.error("upload.gave_up", key=key, attempts=UPLOAD_ATTEMPTS)
        return None

    async def _fail(
        self, rendered: RenderedJob, delivery: Delivery, error: str, *, stored: list[str]
    ) -> None:
        await self._jobs.emit(
            rendered.job_id, status=JobStatus.FAILED, message="Generation failed", error=error
        )
        log.error("job.failed", error=error)
        await self._discard(rendered.job_id, stored)
        await self._finish(rendered, delivery)

    async def _output_missing(
        self, rendered: RenderedJob, delivery: Delivery, *, stored: list[str]
    ) -> None:
        """A blob is gone. While the entry is still this member's, the bytes outlived their TTL:
        the job fails. If the entry went with them, a Redis crash or failover took the hand-off
        back after this member read it: the job's own entry is pending again and its render is
        redone, so this delivery is dropped and the job left as it is."""
        if await self.consumer.keep_claim(delivery):
            error = "The rendered output expired before it was stored."
            await self._fail(rendered, delivery, error, stored=stored)
            return
        log.warning("upload.hand_off_taken_back", msg_id=delivery.msg_id)
        self.consumer.leave_pending(delivery)

    async def _discard(self, job_id: str, keys: list[str]) -> None:
        """Remove the objects of a job that ended without them; best effort. Never those of a
        completed job: another delivery of it got there first, under the same keys."""
        record = await self._jobs.get(job_id)
        if not keys or (record is not None and record.status is JobStatus.COMPLETED):
            return
        log.info("job.discarded", keys=keys)
        for key in keys:
            try:
                await self._storage.delete(key)
            except StorageError as exc:
                log.warning("upload.delete_failed", key=key, error=str(exc))

    async def _drain(self) -> None:
        """After stop: the uploads in flight get the drain grace to finish; what is left then
        goes back to the group for another member."""
        in_flight = dict(self._uploads)
        if not in_flight:
            return
        log.info("uploader.draining", uploads=len(in_flight), grace_s=self._drain_grace_s)
        _, late = await asyncio.wait(in_flight, timeout=self._drain_grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for task in late:
            delivery = in_flight[task]
            try:
                await self.consumer.release(delivery)
                log.info("upload.released", msg_id=delivery.msg_id)
            except REDIS_TRANSIENT:
                self.consumer.leave_pending(delivery)  # taken over after the claim idle time

    async def _on_dead(self, delivery: Delivery) -> None:
        try:
            rendered = RenderedJob.model_validate_json(delivery.fields["rendered"])
        except (KeyError, ValidationError):
            return  # unreadable: there is no job record to mark
        await self._jobs.emit(
            rendered.job_id,
            status=JobStatus.FAILED,
            message="Generation failed",
            error=f"Could not store the result after {delivery.attempt - 1} attempts",
        )

    @staticmethod
    def _blob_keys(rendered: RenderedJob) -> list[str]:
        keys = [blob.key for blob in rendered.outputs]
        if rendered.input_blob:
            keys.append(rendered.input_blob)
        return keys

    async def _finish(self, rendered: RenderedJob, delivery: Delivery) -> None:
        keys = self._blob_keys(rendered)
        async with self._blobs.pipeline(transaction=True) as pipe:
            self.consumer.ack_in(pipe, delivery)
            if keys:  # a cache hit brought no bytes
                pipe.delete(*keys)
            await pipe.execute()
