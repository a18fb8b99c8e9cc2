"""The gateway's side of the result cache (``common.result_cache``): which submits may be
answered from it, and the lookup under every render fingerprint the route's live workers publish.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from common.keys import Keys
from common.logging import get_logger
from common.result_cache import CachedResult, ResultCache, entry_digest, request_digest
from common.schemas import RenderParams, Task
from gateway.metrics import CACHE_HITS, CACHE_MISSES
from gateway.workers import live_workers

log = get_logger(__name__)


@dataclass(frozen=True)
class CacheHit:
    digest: str
    result: CachedResult


class CacheLookup:
    """``local_dir``: with local storage, the directory results are stored in; an entry whose
    file is gone is dropped (S3 entries expire before their objects instead)."""

    def __init__(
        self, redis: Redis, keys: Keys, *, shared: bool = False, local_dir: Path | None = None
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._cache = ResultCache(redis, keys)
        self._shared = shared
        self._local_dir = local_dir

    def request_digest(
        self, tenant: str, model: str, task: Task, params: RenderParams, image: bytes | None
    ) -> str:
        return request_digest(
            tenant=None if self._shared else tenant,
            model=model,
            task=task,
            params=params,
            image=image,
        )

    async def find(self, model: str, request: str) -> CacheHit | None:
        """The cached result of this request on ``model``, rendered as a live worker renders it
        now; ``None`` (a miss) when there is none."""
        workers = await live_workers(self._redis, self._keys)
        fingerprints = sorted({w.fingerprints[model] for w in workers if model in w.fingerprints})
        if not fingerprints:
            CACHE_MISSES.labels(model, "no_fingerprint").inc()
            return None
        found = await self._cache.find([entry_digest(request, fp) for fp in fingerprints])
        if found is None:
            CACHE_MISSES.labels(model, "absent").inc()
            return None
        digest, result = found
        if self._local_dir is not None and not await asyncio.to_thread(self._stored, result):
            log.info("cache.gone", source_job_id=result.job_id)
            await self._cache.forget(digest)
            CACHE_MISSES.labels(model, "gone").inc()
            return None
        CACHE_HITS.labels(model).inc()
        return CacheHit(digest, result)

    def _stored(self, result: CachedResult) -> bool:
        assert self._local_dir is not None
        return all((self._local_dir / key).is_file() for key in result.keys)
