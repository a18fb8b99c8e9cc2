"""``darkroom uploader``: move rendered outputs to storage until told to stop."""

from __future__ import annotations

from common.health import health_server
from common.jobs import JobStore
from common.keys import Keys
from common.lifecycle import stop_event_on_signals
from common.redis import connect
from uploader.settings import UploaderSettings
from uploader.uploader import Uploader, open_storage


async def run(settings: UploaderSettings) -> None:
    stop = stop_event_on_signals()
    keys = Keys(settings.key_prefix)
    redis, blobs = connect(settings), connect(settings, decode=False)
    storage = await open_storage(settings)
    uploader = Uploader(
        redis=redis,
        blobs=blobs,
        keys=keys,
        storage=storage,
        jobs=JobStore(redis, keys, task_ttl_s=settings.task_ttl_s),
        consumer_name=settings.consumer_name,
        block_ms=settings.block_ms,
        claim_idle_ms=settings.claim_idle_ms,
    )
    try:
        async with health_server(settings.health_port, uploader.readiness):
            await uploader.run(stop)
    finally:
        await storage.aclose()
        await redis.aclose()
        await blobs.aclose()
