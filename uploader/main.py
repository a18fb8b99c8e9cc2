"""``darkroom uploader``: move rendered outputs to storage until told to stop."""

from __future__ import annotations

from common.health import health_server, redis_writable
from common.jobs import JobStore
from common.keys import Keys
from common.lifecycle import stop_event_on_signals
from common.redis import connect
from uploader.settings import UploaderSettings
from uploader.storage_health import StorageHealth
from uploader.uploader import Uploader, open_storage


async def run(settings: UploaderSettings) -> None:
    stop = stop_event_on_signals()
    keys = Keys(settings.key_prefix)
    redis, blobs = connect(settings), connect(settings, decode=False)
    uploader: Uploader | None = None

    async def readiness() -> tuple[bool, str]:
        if uploader is None:
            return False, "waiting for storage"
        ready, reason = uploader.storage_health.readiness()
        if not ready:
            return ready, reason
        return await redis_writable(redis, keys.probe(settings.consumer_name))

    def details() -> dict[str, object]:
        return uploader.storage_health.details() if uploader is not None else {}

    # Probes answer from the start: a storage outage at start-up is "not ready", not "dead".
    try:
        async with health_server(settings.health_port, readiness, details=details):
            storage = await open_storage(settings, stop)
            if storage is None:
                return
            uploader = Uploader(
                redis=redis,
                blobs=blobs,
                keys=keys,
                storage=storage,
                jobs=JobStore(
                    redis,
                    keys,
                    task_ttl_s=settings.task_ttl_s,
                    usage_retention_days=settings.usage_retention_days,
                ),
                consumer_name=settings.consumer_name,
                block_ms=settings.block_ms,
                claim_idle_ms=settings.claim_idle_ms,
                upload_concurrency=settings.upload_concurrency,
                drain_grace_s=settings.drain_grace_s,
                result_cache_ttl_s=settings.result_cache_ttl,
                storage_health=StorageHealth(
                    storage, settings.s3_bucket_name if settings.storage == "s3" else None
                ),
            )
            try:
                await uploader.run(stop)
            finally:
                await storage.aclose()
    finally:
        await redis.aclose()
        await blobs.aclose()
